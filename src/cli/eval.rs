//! `flowzoo eval`: scores of a run's model, as one line or one JSON object on stdout.
use super::{Which, DEVICE_HELP};
use anyhow::Result;
use flowzoo::io::RunDir;
use flowzoo::jobs::eval::{evaluate, EvalOptions};
use flowzoo::session::Session;
use std::path::PathBuf;

/// Bits/dim and log-likelihood of test images, or log-likelihood of test rows (or of given
/// tensors / CSV rows).
#[derive(clap::Args)]
pub struct EvalArgs {
    /// The run directory to evaluate.
    #[arg(long)]
    model: PathBuf,
    /// Images (a folder: its test/ when it has train/ and test/, else all of it; an IDX
    /// folder: its test part; an IDX file; one image), or a tabular file with the run's columns.
    #[arg(long)]
    data: Option<PathBuf>,
    /// FILE.safetensors:KEY, a [N, C, H, W] tensor already in model space, or [N, D] rows
    /// for a tabular model (no noise added).
    #[arg(long)]
    tensors: Option<String>,
    /// Tabular models: rows of a CSV file (the run's columns), evaluated as given.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Dequantisation draws averaged per image (or per row, with data.uniform_noise).
    #[arg(long, default_value_t = 1)]
    draws: i64,
    /// Seed of the dequantisation noise.
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Images (or rows) per forward pass.
    #[arg(long, default_value_t = 256)]
    batch: i64,
    /// Which weights: the best checkpoint or the last.
    #[arg(long, value_enum, default_value = "best")]
    checkpoint: Which,
    #[arg(long, default_value = "auto", help = DEVICE_HELP)]
    device: String,
    /// fp32 | tf32 | bf16 (the coupling networks' convs; log-dets and priors stay float32).
    #[arg(long, default_value = "fp32")]
    precision: String,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let precision = a.precision.parse()?;
    flowzoo::runtime::apply_precision(precision)?;
    let device = flowzoo::runtime::parse_device(&a.device)?;
    let mut sess = Session::open(&RunDir::open(&a.model)?, a.checkpoint.into(), device)?;
    sess.compute_kind = flowzoo::runtime::compute_kind(precision);
    let opts = EvalOptions {
        data: a.data.as_deref(),
        tensors: a.tensors.as_deref(),
        csv: a.csv.as_deref(),
        draws: a.draws,
        seed: a.seed,
        batch: a.batch,
    };
    let report = evaluate(&sess, &opts)?;
    if a.json {
        println!("{}", report.to_json());
    } else {
        println!("{}", report.summary());
    }
    Ok(())
}
