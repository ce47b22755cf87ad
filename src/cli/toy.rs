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
    /// Add a context column `rotation` (uniform in [0, 1)) and turn each point by rotation·π
    /// about the origin (header x,y,rotation): data for p(x, y | rotation).
    #[arg(long)]
    rotate: bool,
}

pub fn run(a: ToyArgs) -> Result<()> {
    use flowzoo::data::toys;
    let pts = toys::generate(&a.name, a.n, a.seed)?;
    let csv = if a.rotate { toys::rotated_to_csv(&toys::rotate(&pts, a.seed)) } else { toys::to_csv(&pts) };
    flowzoo::io::atomic::atomic_write_bytes(&a.output, csv.as_bytes())?;
    let how = if a.rotate { ", each turned by rotation·π" } else { "" };
    println!("wrote {} points of {} (seed {}{how}) to {}", a.n, a.name, a.seed, a.output.display());
    Ok(())
}
