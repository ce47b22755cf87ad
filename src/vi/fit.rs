//! `flowzoo fit`: train a flow q on vectors to an unnormalised target density by maximising
//! the ELBO (reverse KL), with the run directory, checkpoints, exact resume, metrics, curves and
//! NaN handling of `flowzoo train` (the same [`Trainer`]: its step, Adam, EMA, checkpoints).
//!
//! Every random draw is seeded from `(train.seed, stream, step)`: the draws of step `s` from
//! the step-noise stream, each evaluation's from the evaluation stream (the same draws every
//! time, so evaluations compare), so a resumed run continues exactly where it stopped.
use super::elbo::{elbo_step, format_point, NonFiniteReport};
use super::estimate::importance_estimates;
use super::target::{probe_target, Target};
use crate::config::{Config, DataKind, ModelKind, NormChoice, Objective};
use crate::io::atomic::atomic_write_bytes;
use crate::io::RunDir;
use crate::models::DataInfo;
use crate::rng::derive_seed;
use crate::session::Session;
use crate::train::{plot, streams, MetricsLog, StepOutcome, Trainer};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind};

pub struct FitOptions {
    pub out: PathBuf,
    pub resume: bool,
    pub device: Device,
    /// Print progress (bar on a terminal, lines otherwise).
    pub verbose: bool,
    /// The target's file, when it has one: its SHA-256 is recorded in the run (`target.json`)
    /// and a resume with a different file is refused (the resume would not be exact).
    pub target_file: Option<PathBuf>,
}

pub struct FitSummary {
    pub steps: i64,
    /// The last evaluation's ELBO estimate (nats).
    pub final_elbo: f64,
    pub best_elbo: f64,
    pub best_step: i64,
    pub steps_per_s: f64,
    pub parameters: i64,
    pub skipped_steps: i64,
    /// Where the target was not finite.
    pub report: NonFiniteReport,
}

/// The columns of a fit run's `metrics.csv` (ELBOs in nats, higher is better).
pub const FIT_COLUMNS: &[&str] = &["step", "lr", "train_elbo", "grad_norm", "eval_elbo", "steps_per_s", "elapsed_s", "skipped_steps", "target_nonfinite"];

/// The column names of a `dim`-dimensional fit (`x0`, `x1`, ...): what `sample` writes.
pub fn fit_columns(dim: i64) -> Vec<String> {
    (0..dim).map(|i| format!("x{i}")).collect()
}

/// Refuses a model that cannot be fitted by reverse KL here, naming the key: it must sample in
/// one pass (the ELBO needs a reparameterised draw and its log q every step) and have no
/// data-driven layers.
pub fn check_fit_model(cfg: &Config) -> Result<()> {
    match cfg.model.kind {
        // Coupling flows invert in one pass.
        ModelKind::Realnvp | ModelKind::Nice | ModelKind::Iaf => {}
        ModelKind::Nsf if cfg.model.structure == crate::config::StructureChoice::Coupling => {}
        ModelKind::Nsf => bail!("model.kind = \"nsf\" with model.structure = \"autoregressive\" samples in D passes: fit needs a flow that samples in one pass (set model.structure = \"coupling\", or use \"iaf\", \"realnvp\" or \"nice\")"),
        ModelKind::Maf => bail!("model.kind = \"maf\" samples in D passes: fit needs a flow that samples in one pass (\"iaf\" is a MAF inverted for that; or \"realnvp\", \"nice\", \"nsf\" with structure = \"coupling\")"),
        ModelKind::Glow => bail!("model.kind = \"glow\" is an image model: fit needs a flow on vectors that samples in one pass (\"iaf\", \"realnvp\", \"nice\", or \"nsf\" with structure = \"coupling\")"),
        ModelKind::Ffjord => bail!("model.kind = \"ffjord\" samples by solving an ODE and its log q needs the trace along it: fit needs a flow that samples in one pass (\"iaf\", \"realnvp\", \"nice\", or \"nsf\" with structure = \"coupling\")"),
        ModelKind::Vae => bail!("model.kind = \"vae\" is an image model with its own ELBO: fit needs a flow on vectors that samples in one pass (\"iaf\", \"realnvp\", \"nice\", or \"nsf\" with structure = \"coupling\")"),
    }
    if cfg.model.norm == NormChoice::Batchnorm {
        bail!("model.norm = \"batchnorm\": its statistics come from data batches, and fit has no data (its draws only run the inverse); use \"actnorm\" (a learned per-feature affine map) or \"none\"");
    }
    Ok(())
}

/// `cfg` made into a fit config for dimension `dim`: reverse-KL objective, vectors without
/// standardisation and without a data file. Checks the model (see [`check_fit_model`]).
pub fn fit_config(cfg: &Config, dim: i64) -> Result<Config> {
    if dim < 1 {
        bail!("--dim {dim}: the target's dimension must be >= 1");
    }
    let mut c = cfg.clone();
    c.train.objective = Objective::ReverseKl;
    c.data.kind = DataKind::Tabular;
    c.data.path = String::new();
    c.data.standardize = false;
    c.data.uniform_noise = 0.0;
    c.file_dir = None;
    check_fit_model(&c)?;
    c.validate()?;
    Ok(c)
}

/// `target.json`: which file the run was fitted to.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct TargetRecord {
    path: String,
    sha256: String,
}

fn sha256_of(path: &Path) -> Result<String> {
    use sha2::Digest;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(format!("{:x}", sha2::Sha256::digest(&bytes)))
}

/// The ELBO estimate of `sess`'s flow from `n` draws seeded with `seed` (no gradients), in
/// chunks of `chunk` draws.
pub fn estimate_elbo(sess: &Session, target: &dyn Target, n: i64, chunk: i64, seed: i64) -> Result<super::IsEstimate> {
    Ok(importance_estimates(&super::log_weights(sess, target, n, chunk, seed)?))
}

/// Fits the flow of `cfg` on `R^dim` to `target`, writing the run directory `opts.out`. The
/// config is made a fit config first ([`fit_config`]: that is what the run records).
pub fn fit(cfg: &Config, dim: i64, target: &dyn Target, opts: &FitOptions) -> Result<FitSummary> {
    let cfg = &fit_config(cfg, dim)?;
    let t_cfg = cfg.train.clone();
    crate::runtime::set_threads(t_cfg.threads)?;
    crate::runtime::apply_precision(t_cfg.precision)?;
    // The run's dimension first, then the target (before anything is written).
    if opts.resume {
        let state = RunDir::open(&opts.out)?.load_state()?;
        if state.columns.len() as i64 != dim {
            bail!("--resume: --dim {dim}, but {} fits a {}-dimensional target", opts.out.display(), state.columns.len());
        }
    }
    probe_target(target, dim, Kind::Float, opts.device)?;
    let run = if opts.resume { RunDir::open(&opts.out)? } else { RunDir::create(&opts.out)? };
    let record_path = run.path.join("target.json");
    let record = match &opts.target_file {
        Some(f) => Some(TargetRecord { path: f.display().to_string(), sha256: sha256_of(f)? }),
        None => None,
    };
    let sess = Session::new_for(cfg, DataInfo { classes: vec![], columns: fit_columns(dim) }, opts.device)?;
    let (kind, device) = (sess.kind(), sess.device());
    let n_params = sess.parameter_count();
    let mut tr = Trainer::new(sess, vec![])?;
    let report_path = run.path.join("target_report.json");
    let mut report = NonFiniteReport::default();
    if opts.resume {
        tr.load_checkpoint(&run)?;
        if let (Some(now), Ok(text)) = (&record, std::fs::read_to_string(&record_path)) {
            let then: TargetRecord = serde_json::from_str(&text).with_context(|| format!("{} is not a valid target record", record_path.display()))?;
            if then.sha256 != now.sha256 {
                bail!(
                    "--resume: the target {} (SHA-256 {}) is not the file the run was fitted to ({}, SHA-256 {}): a resume continues the same fit; start a new run for another target",
                    now.path, now.sha256, then.path, then.sha256
                );
            }
        }
        if let Ok(text) = std::fs::read_to_string(&report_path) {
            report = serde_json::from_str(&text).with_context(|| format!("{} is not a valid report", report_path.display()))?;
        }
        if opts.verbose {
            eprintln!("resuming {} at step {}", run.path.display(), tr.state.step);
        }
    } else if let Some(r) = &record {
        atomic_write_bytes(&record_path, serde_json::to_string_pretty(r)?.as_bytes())?;
    }
    run.save_config(cfg)?;
    if opts.verbose {
        eprintln!("{} | {n_params} parameters | device {device:?} | {}", tr.sess.model.describe(), target.name());
    }

    let mut metrics = MetricsLog::read(&run.metrics_path(), FIT_COLUMNS, tr.state.step)?;
    let eval_seed = derive_seed(t_cfg.seed, streams::EVAL, 0);
    let chunk = t_cfg.vi_samples.max(1024);
    let evaluate = |tr: &Trainer| -> Result<f64> { tr.with_eval_weights(|s| Ok(estimate_elbo(s, target, t_cfg.vi_eval_samples, chunk, eval_seed)?.elbo)) };
    let write_samples = |tr: &Trainer, name: &str| -> Result<()> {
        if dim != 2 {
            return Ok(());
        }
        let png = run.samples_dir().join(name);
        tr.with_eval_weights(|s| super::plot::plot_2d_fit(s, target, &png, 2000, derive_seed(t_cfg.seed, streams::SAMPLES, 0)))
    };
    let save_report = |r: &NonFiniteReport| atomic_write_bytes(&report_path, serde_json::to_string_pretty(r)?.as_bytes());

    let start_step = tr.state.step;
    let bar = if opts.verbose { ProgressBar::new(t_cfg.max_steps as u64) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}, {per_sec}]").expect("static template"));
    bar.set_position(start_step as u64);
    let is_tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let t0 = Instant::now();
    // (sum of ELBOs, sum of gradient norms, updates, dropped draws) since the last metrics row.
    let mut window = (0.0f64, 0.0f64, 0i64, 0i64);
    let mut last_log = (Instant::now(), tr.state.step);
    let mut last_eval = f64::NAN;
    let mut warned_at: Option<i64> = None;
    while tr.state.step < t_cfg.max_steps {
        let step = tr.state.step;
        tch::manual_seed(derive_seed(t_cfg.seed, streams::STEP_NOISE, step));
        let s = elbo_step(tr.sess.model.as_ref(), target, t_cfg.vi_samples, &tr.sess.ctx_train(None), (kind, device))?;
        report.record(step + 1, &s);
        window.3 += s.dropped.total();
        if s.dropped.total() > 0 && warned_at.is_none_or(|w| step + 1 - w >= t_cfg.log_every.max(100)) {
            warned_at = Some(step + 1);
            let ex = s.example.as_ref().map(|(x, v)| format!(", e.g. {v} at x = {}", format_point(x))).unwrap_or_default();
            log(&bar, format!("step {}: the target was not finite at {} of {} draws ({}){ex}: left out of the step", step + 1, s.dropped.total(), s.n, s.dropped.describe()));
        }
        let outcome = tr.step_on_loss(&s.loss).map_err(|e| match report.summary() {
            Some(r) => anyhow::anyhow!("{e:#}; {r}"),
            None => e,
        })?;
        match outcome {
            StepOutcome::Updated { loss, grad_norm } => {
                window.0 -= loss;
                window.1 += grad_norm;
                window.2 += 1;
            }
            StepOutcome::Skipped { loss, grad_norm } => {
                log(&bar, format!("step {}: non-finite ELBO {} / gradient norm {grad_norm}: update skipped", step + 1, -loss));
            }
        }
        let done = tr.state.step;
        let last = done == t_cfg.max_steps;
        let eval_now = last || (t_cfg.eval_every > 0 && done % t_cfg.eval_every == 0);
        let mut eval_field = String::new();
        if eval_now {
            last_eval = evaluate(&tr)?;
            eval_field = format!("{last_eval:.6}");
            // The best checkpoint has the highest ELBO (state.json keeps "lower is better": −ELBO).
            if last_eval.is_finite() && tr.state.best_test_bpd.is_none_or(|b| -last_eval < b) && tr.sess.non_finite_variables().is_empty() {
                tr.with_eval_weights(|s| s.save_weights(&run.best_path(), done))?;
                tr.state.best_test_bpd = Some(-last_eval);
                tr.state.best_step = Some(done);
            }
            if !is_tty && opts.verbose {
                eprintln!("step {done}/{}: train ELBO {:.4}, eval ELBO {last_eval:.4} nats", t_cfg.max_steps, window.0 / window.2.max(1) as f64);
            }
        }
        if eval_now || done % t_cfg.log_every == 0 {
            let sps = (done - last_log.1) as f64 / last_log.0.elapsed().as_secs_f64().max(1e-9);
            let train_elbo = window.0 / window.2.max(1) as f64;
            metrics.push(vec![
                done.to_string(),
                format!("{:.6e}", tr.lr_at(step)),
                format!("{train_elbo:.6}"),
                format!("{:.4}", window.1 / window.2.max(1) as f64),
                eval_field,
                format!("{sps:.3}"),
                format!("{:.2}", tr.state.train_seconds + t0.elapsed().as_secs_f64()),
                tr.state.skipped_steps.to_string(),
                window.3.to_string(),
            ])?;
            bar.set_message(format!("ELBO {train_elbo:.3} | eval {last_eval:.3} | {sps:.1} steps/s"));
            window = (0.0, 0.0, 0, 0);
            last_log = (Instant::now(), done);
        }
        if last || (t_cfg.sample_every > 0 && done % t_cfg.sample_every == 0) {
            write_samples(&tr, &format!("step_{done:07}.png"))?;
        }
        if last || (t_cfg.checkpoint_every > 0 && done % t_cfg.checkpoint_every == 0) {
            let elapsed = t0.elapsed().as_secs_f64();
            tr.state.train_seconds += elapsed;
            let saved = tr.save_checkpoint(&run);
            tr.state.train_seconds -= elapsed;
            saved?;
            save_report(&report)?;
            metrics.write(&run.metrics_path())?;
            let (a, b) = (metrics.curve("train_elbo"), metrics.curve("eval_elbo"));
            if let Err(e) = plot::plot_curves(&run.path.join("curves.png"), "ELBO (nats)", "evaluation", &a, &b) {
                log(&bar, format!("warning: could not draw curves.png: {e}"));
            }
        }
        bar.set_position(done as u64);
    }
    bar.finish_and_clear();
    let elapsed = t0.elapsed().as_secs_f64();
    tr.state.train_seconds += elapsed;
    write_samples(&tr, "final.png")?;
    run.save_state(&tr.state)?;
    save_report(&report)?;
    metrics.write(&run.metrics_path())?;
    if let (Some(r), true) = (report.summary(), opts.verbose) {
        eprintln!("{r}");
    }
    Ok(FitSummary {
        steps: tr.state.step,
        final_elbo: if last_eval.is_nan() { evaluate(&tr)? } else { last_eval },
        best_elbo: tr.state.best_test_bpd.map_or(f64::NAN, |b| -b),
        best_step: tr.state.best_step.unwrap_or(0),
        steps_per_s: (tr.state.step - start_step) as f64 / elapsed.max(1e-9),
        parameters: n_params,
        skipped_steps: tr.state.skipped_steps,
        report,
    })
}

/// A line above the progress bar on a terminal, on stderr otherwise.
fn log(bar: &ProgressBar, msg: String) {
    if bar.is_hidden() {
        eprintln!("{msg}");
    } else {
        bar.println(msg);
    }
}
