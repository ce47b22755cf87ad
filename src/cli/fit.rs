//! `flowzoo fit`: a flow fitted to an unnormalised density (a TorchScript module's `log_prob`)
//! by maximising the ELBO, or `--resume` of such a run.
use anyhow::{bail, Context, Result};
use flowzoo::config::Config;
use flowzoo::io::RunDir;
use flowzoo::vi::fit::{fit, FitOptions};
use flowzoo::vi::ScriptTarget;
use std::path::PathBuf;

/// The config used without --config (configs/fit_default.toml, built in).
const DEFAULT_CONFIG: &str = include_str!("../../configs/fit_default.toml");

/// Fit a flow to an unnormalised log-density log p̃(x) by maximising the ELBO (reverse KL).
#[derive(clap::Args)]
pub struct FitArgs {
    /// TorchScript module (torch.jit.save) with a method log_prob(x: Tensor[B, D]) -> Tensor[B].
    #[arg(long)]
    target: PathBuf,
    /// Dimension D of the target's points.
    #[arg(long)]
    dim: i64,
    /// TOML config of the flow and the training (default: configs/fit_default.toml, built in).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run directory (default: runs/fit-<target file name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// auto | cpu | cuda | cuda:N (overrides train.device, whose default is auto).
    #[arg(long)]
    device: Option<String>,
    /// Continue the run in --out from its last checkpoint (same target, same --dim).
    #[arg(long)]
    resume: bool,
    /// Override any config key, e.g. --set train.vi_samples=512 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(a: FitArgs) -> Result<()> {
    let stem = a.target.file_stem().and_then(|s| s.to_str()).unwrap_or("target").to_string();
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(format!("fit-{stem}")));
    let cfg = if a.resume {
        let run = RunDir::open(&out).context("--resume continues the run in --out")?;
        let mut cfg = run.load_config()?;
        if let Some(c) = &a.config {
            let given = flowzoo::vi::fit::fit_config(&Config::load(c)?, a.dim)?;
            if given.model != cfg.model {
                bail!("--resume: {} describes another flow than {}; resume with the run's own config (drop --config) or start a new run", c.display(), run.config_path().display());
            }
            cfg.train = given.train;
        }
        cfg
    } else {
        match &a.config {
            Some(c) => Config::load(c)?,
            None => Config::from_toml_str(DEFAULT_CONFIG, "configs/fit_default.toml (built in)")?,
        }
    };
    let mut cfg = cfg.with_overrides(&a.set)?;
    if let Some(d) = &a.device {
        cfg.train.device = d.parse().context("--device")?;
    }
    let cfg = flowzoo::vi::fit::fit_config(&cfg, a.dim)?;
    let device = flowzoo::runtime::device(cfg.train.device)?;
    let target = ScriptTarget::load(&a.target, device)?;
    let opts = FitOptions { out: out.clone(), resume: a.resume, device, verbose: !a.quiet, target_file: Some(a.target.clone()) };
    let s = fit(&cfg, a.dim, &target, &opts)?;
    println!(
        "fitted {} steps ({:.2} steps/s, {} parameters, {} skipped): ELBO {:.4} nats, best {:.4} at step {}",
        s.steps, s.steps_per_s, s.parameters, s.skipped_steps, s.final_elbo, s.best_elbo, s.best_step
    );
    if let Some(r) = s.report.summary() {
        println!("{r}");
    }
    println!("run directory: {}", out.display());
    Ok(())
}
