//! `flowzoo toy`: a seeded 2-D toy data set as CSV.
use anyhow::Result;
use std::path::PathBuf;

/// Write a seeded 2-D toy data set as CSV (moons, circles, 8gaussians, checkerboard,
/// pinwheel, 2spirals).
#[derive(clap::Args)]
pub struct ToyArgs {
    /// moons | circles | 8gaussians | checkerboard | pinwheel | 2spirals.
    name: String,
    /// Number of points.
    #[arg(short, long, default_value_t = 10000)]
    n: usize,
    /// Seed (the bundled files in data/toys use 0).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The CSV file to write (header x,y).
    #[arg(short, long)]
    output: PathBuf,
}

pub fn run(a: ToyArgs) -> Result<()> {
    let pts = flowzoo::data::toys::generate(&a.name, a.n, a.seed)?;
    flowzoo::io::atomic::atomic_write_bytes(&a.output, flowzoo::data::toys::to_csv(&pts).as_bytes())?;
    println!("wrote {} points of {} (seed {}) to {}", a.n, a.name, a.seed, a.output.display());
    Ok(())
}
