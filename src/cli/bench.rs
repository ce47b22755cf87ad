//! `flowzoo bench`: timing of training steps, log_prob and sampling, as one JSON object.
use super::DEVICE_HELP;
use anyhow::{Context, Result};
use flowzoo::bench::{BenchOptions, Metric};
use flowzoo::config::Config;
use std::path::PathBuf;

/// Time training steps, log_prob and sampling on random images (one JSON object on
/// stdout; bench/run.sh puts it beside the PyTorch reference).
#[derive(clap::Args)]
pub struct BenchArgs {
    /// The model's TOML config (its data section gives the image shape; no data is read).
    #[arg(long)]
    config: PathBuf,
    /// Override any config key, e.g. --set model.width=128 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// libtorch intra-op threads (0: libtorch's default).
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// Timed repeats; the medians are reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Timed calls per repeat.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Untimed calls before each repeat.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value = "auto", help = DEVICE_HELP)]
    device: String,
    /// fp32 | tf32 | bf16 (bf16: the coupling networks' convs; see `flowzoo::config::Precision`).
    #[arg(long, default_value = "fp32")]
    precision: String,
    /// Temperature of the timed sampling.
    #[arg(long, default_value_t = 0.7)]
    temperature: f64,
    /// Seed of the random images and weights.
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Comma-separated: train, log_prob, sample.
    #[arg(long, default_value = "train,log_prob,sample")]
    metrics: String,
    /// Also compare the device's log_prob with CPU float64 on the same weights.
    #[arg(long)]
    check: bool,
    /// Also time the phases of a training step (stderr and `profile` in the JSON).
    #[arg(long)]
    profile: bool,
}

pub fn run(a: BenchArgs) -> Result<()> {
    let cfg = Config::load(&a.config)?.with_overrides(&a.set)?;
    cfg.validate()?;
    let opts = BenchOptions {
        threads: a.threads,
        repeats: a.repeats,
        steps: a.steps,
        warmup: a.warmup,
        device: flowzoo::runtime::parse_device(&a.device)?,
        precision: a.precision.parse().context("--precision")?,
        temperature: a.temperature,
        seed: a.seed,
        metrics: Metric::parse_list(&a.metrics)?,
        check: a.check,
        profile: a.profile,
    };
    println!("{}", flowzoo::bench::run(&cfg, &opts)?);
    Ok(())
}
