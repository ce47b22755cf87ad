//! `flowzoo train`: a new run from a config, or `--resume` of an existing one.
use anyhow::{bail, Context, Result};
use flowzoo::config::{Config, DataKind};
use flowzoo::io::RunDir;
use flowzoo::train::{train, TrainOptions};
use std::path::PathBuf;

/// Train a model on a folder of images or a table (CSV, .npy, .npz).
///
/// Launched by torchrun (`torchrun --nproc-per-node 2 --no-python flowzoo train ...`), each
/// process is one rank of a data-parallel run: batch train.batch_size per process, gradients
/// averaged every step, only rank 0 prints and writes the run directory.
#[derive(clap::Args)]
pub struct TrainArgs {
    /// TOML config (not needed with --resume: the run's own config.toml is used).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data folder or file (overrides data.path; relative to the current directory).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Run directory (default: runs/<config name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// auto | cpu | cuda | cuda:N (overrides train.device, whose default is auto).
    #[arg(long)]
    device: Option<String>,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// Override any config key, e.g. --set train.lr=1e-4 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(a: TrainArgs) -> Result<()> {
    let (cfg, out) = if a.resume {
        let out = a.out.context("--resume needs --out RUN_DIR (the run to continue)")?;
        let run = RunDir::open(&out).with_context(|| match flowzoo::dist::DistEnv::from_env() {
            Ok(Some(env)) if env.rank > 0 => format!(
                "--resume on rank {}: every rank reads the run directory, so it must be at the same path on every machine (a shared filesystem, or a copy)",
                env.rank
            ),
            _ => "--resume".to_string(),
        })?;
        let mut cfg = run.load_config()?;
        if let Some(c) = &a.config {
            let given = Config::load(c)?;
            // The run records where its data was found; compare with where the given file's is.
            let given_data = given.with_resolved_data_path().map(|g| g.data).unwrap_or_else(|_| given.data.clone());
            if given.model != cfg.model || given_data != cfg.data {
                bail!("--resume: {} describes another model or data than {}; resume with the run's own config (drop --config) or start a new run", c.display(), run.config_path().display());
            }
            cfg.train = given.train;
        }
        (cfg, out)
    } else {
        let c = a.config.context("train needs --config FILE (e.g. configs/glow_digits.toml)")?;
        let cfg = Config::load(&c)?;
        let stem = c.file_stem().and_then(|s| s.to_str()).unwrap_or("run").to_string();
        (cfg, a.out.unwrap_or_else(|| PathBuf::from("runs").join(stem)))
    };
    let mut cfg = cfg.with_overrides(&a.set)?;
    if let Some(d) = &a.data {
        cfg.set_data_path(d);
    }
    if let Some(d) = &a.device {
        cfg.train.device = d.parse().context("--device")?;
    }
    cfg.validate()?;
    let device = flowzoo::runtime::device(cfg.train.device)?;
    let s = train(&cfg, &TrainOptions { out: out.clone(), resume: a.resume, device, verbose: !a.quiet })?;
    if s.rank != 0 {
        // A distributed run's other ranks: rank 0 reports for all.
        return Ok(());
    }
    let what = if cfg.data.kind == DataKind::Tabular { "validation" } else { "test" };
    let procs = if s.world_size > 1 { format!(" on {} processes", s.world_size) } else { String::new() };
    println!(
        "trained {} steps{procs} ({:.2} steps/s, {} parameters, {} skipped{}): {what} {:.4} {}, best {:.4} at step {}",
        s.steps,
        s.steps_per_s,
        s.parameters,
        s.skipped_steps,
        if s.stopped_early { ", stopped early" } else { "" },
        s.final_eval,
        s.unit,
        s.best_eval,
        s.best_step
    );
    println!("run directory: {}", out.display());
    Ok(())
}
