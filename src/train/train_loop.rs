//! The training loop: data in, steps, evaluations, samples, checkpoints, metrics, plots.
//! Every random draw is seeded from `(seed, stream, step or epoch)` (`crate::rng::derive_seed`),
//! and the optimizer state is ours and saved, so a resumed run continues exactly where the
//! uninterrupted one would be.
use super::data::{load_train_data, Batches, TabularContext, TrainData};
use super::metrics::{LogWindow, MetricsLog};
use super::parallel::{rank_device, DataParallel};
use super::{streams, StepOutcome, Trainer};
use crate::config::Config;
use crate::dist::DistEnv;
use crate::io::png::save_grid;
use crate::io::RunDir;
use crate::models::DataInfo;
use crate::rng::{derive_seed, seeded_permutation};
use crate::session::Session;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

pub struct TrainOptions {
    pub out: PathBuf,
    pub resume: bool,
    pub device: Device,
    /// Print progress (bar on a terminal, lines otherwise).
    pub verbose: bool,
}

pub struct TrainSummary {
    pub steps: i64,
    /// Images: test bits/dim. Tabular: validation negative log-likelihood (nats).
    pub final_eval: f64,
    pub best_eval: f64,
    pub best_step: i64,
    pub steps_per_s: f64,
    pub parameters: i64,
    pub skipped_steps: i64,
    /// "bits/dim" or "nats (validation NLL)".
    pub unit: &'static str,
    /// Training stopped early (no better validation score for `patience` evaluations).
    pub stopped_early: bool,
    /// This process's rank and the number of processes (0 and 1 without a distributed launch).
    pub rank: usize,
    pub world_size: usize,
}

/// Trains the model of `cfg` on its data, writing the run directory `opts.out`.
///
/// Launched by torchrun (its variables `MASTER_ADDR`, `MASTER_PORT`, `RANK`, `WORLD_SIZE` are
/// set), this process is one rank of a data-parallel run (`super::parallel`): batch
/// `train.batch_size` per rank, a CUDA device means `cuda:LOCAL_RANK`, and only rank 0 prints
/// progress and writes the run directory.
pub fn train(cfg: &Config, opts: &TrainOptions) -> Result<TrainSummary> {
    cfg.validate()?;
    // The one switch between objectives: a reverse-KL run has a target density, not data, and
    // is trained by `crate::vi::fit` (which shares the step and checkpoints of `Trainer`).
    if cfg.train.objective == crate::config::Objective::ReverseKl {
        bail!("train.objective = \"reverse_kl\" fits a target density, not data: use `flowzoo fit --target FILE.pt --dim D` (or flowzoo::vi::fit)");
    }
    // The run records where its data was found (its config.toml then means the same data).
    let cfg = &cfg.with_resolved_data_path()?;
    let t_cfg = cfg.train.clone();
    crate::runtime::set_threads(t_cfg.threads)?;
    crate::runtime::apply_precision(t_cfg.precision)?;
    let launch = DistEnv::from_env()?;
    let device = match &launch {
        Some(env) => rank_device(env, opts.device)?,
        None => opts.device,
    };
    let parallel = match &launch {
        Some(env) => Some(DataParallel::connect(env, cfg, device)?),
        None => None,
    };
    let (rank, world) = parallel.as_ref().map_or((0, 1), |p| (p.rank(), p.world()));
    // Only rank 0 prints and writes; the others train in silence (errors still say where).
    let writer = rank == 0;
    let verbose = opts.verbose && writer;
    let (mut data, columns, stats) = load_train_data(cfg, verbose)?;
    let mut fingerprint = if parallel.is_some() { Some(data.fingerprint()?) } else { None };
    if device.is_cuda() {
        // The decoded training set lives on the GPU (uint8 images are small), so a step never
        // waits on a host-to-device copy.
        match &mut data {
            TrainData::Images { train, .. } => train.images = train.images.f_to_device(device)?,
            TrainData::Tabular { train, .. } => *train = train.f_to_kind(Kind::Float)?.f_to_device(device)?,
        }
    }
    let tabular = matches!(data, TrainData::Tabular { .. });
    let unit = if tabular { "nats (validation NLL)" } else { "bits/dim" };
    let run = match (opts.resume, writer) {
        (true, _) => RunDir::open(&opts.out).with_context(|| resume_hint(rank))?,
        (false, true) => RunDir::create(&opts.out)?,
        // Never written to: every write below is rank 0's.
        (false, false) => RunDir { path: opts.out.clone() },
    };
    let classes = data.classes();
    let sess = Session::new_for(cfg, DataInfo { classes: classes.clone(), columns }, device)?;
    let n_params = sess.parameter_count();
    let mut tr = Trainer::new(sess, classes.clone())?;
    // W ranks with batch B together take the steps of one process with batch W·B.
    let global_batch = t_cfg.batch_size * world as i64;
    let mut batches = Batches { seed: t_cfg.seed, batch: global_batch, n: data.len(), epoch: -1, perm: vec![] };
    if opts.resume {
        tr.load_checkpoint(&run).with_context(|| resume_hint(rank))?;
        // Only a class-conditional model depends on the class list; tabular ones on the columns.
        if (cfg.model.conditional || !cfg.data.label_column.is_empty()) && tr.state.classes != classes {
            bail!("--resume: the data's classes {classes:?} differ from the run's {:?}", tr.state.classes);
        }
        if tr.state.columns != tr.sess.columns {
            bail!("--resume: the data's columns {:?} differ from the run's {:?}", tr.sess.columns, tr.state.columns);
        }
        if verbose {
            eprintln!("resuming {} at step {}", run.path.display(), tr.state.step);
        }
        if let (Some(p), Some(f)) = (&parallel, fingerprint.take()) {
            p.check_consistent(cfg, &tr, f)?;
        }
    } else {
        if let (Some(p), Some(f)) = (&parallel, fingerprint.take()) {
            p.check_consistent(cfg, &tr, f)?;
        }
        if let Some((mean, std)) = &stats {
            tr.sess.set_standardization(mean, std)?;
        }
        if let TrainData::Tabular { context: Some(TabularContext { stats: Some((mean, std)), .. }), .. } = &data {
            tr.sess.set_context_standardization(mean, std)?;
        }
        // Data-dependent initialisation (ActNorm) on one seeded batch of up to 512 rows (or
        // the whole batch of all ranks): every rank of a distributed run draws the same one.
        let n = data.len().min(global_batch.max(512));
        let idx = Tensor::f_from_slice(&seeded_permutation(data.len() as usize, derive_seed(t_cfg.seed, streams::INIT_BATCH, 0) as u64)[..n as usize])?;
        tch::manual_seed(derive_seed(t_cfg.seed, streams::INIT_NOISE, 0));
        let (x, labels) = data.batch(&idx, device)?;
        let cond = tr.sess.cond_for(Some(&labels), labels.size()[0], "training")?;
        tr.data_init(&x, cond.as_ref())?;
    }
    if let Some(p) = &parallel {
        p.broadcast_from_rank0(&tr, opts.resume)?;
    }
    if !opts.resume {
        tr.reset_ema();
    }
    tr.parallel = parallel;
    if writer {
        run.save_config(cfg)?;
    }
    if verbose {
        eprintln!("{} | {} parameters | device {:?}", tr.sess.model.describe(), n_params, device);
        if let Some(p) = &tr.parallel {
            eprintln!("{}", p.describe(t_cfg.batch_size));
        }
    }

    let columns = if tabular { MetricsLog::TABULAR_COLUMNS } else { MetricsLog::IMAGE_COLUMNS };
    let mut metrics = if writer { MetricsLog::read(&run.metrics_path(), columns, tr.state.step)? } else { MetricsLog::new(columns) };
    // Each rank of a distributed run scores its share with its own noise seed (rank 0's is
    // a single process's); the sums are all-reduced.
    let eval_seed = derive_seed(t_cfg.seed, streams::EVAL, rank as i64);
    // Lower is better: test bits/dim (images) or validation NLL in nats (tabular); with the
    // function evaluations per scored batch of a model that solves ODEs (tabular data).
    let evaluate = |tr: &Trainer| -> Result<(f64, Option<f64>)> {
        let n = match &data {
            TrainData::Images { test, .. } => test.len(),
            TrainData::Tabular { val, .. } => val.size()[0],
        };
        let (start, len) = tr.parallel.as_ref().map_or((0, n), |p| p.eval_share(n));
        if let Some(p) = &tr.parallel {
            p.sync_buffers(&tr.sess)?;
        }
        let sink = crate::flows::Sink::new();
        let (sum, count, batches) = match &data {
            _ if len == 0 => (0.0, 0.0, 0.0),
            TrainData::Images { test, .. } => tr.with_eval_weights(|s| {
                let (px, labels) = (test.images.f_narrow(0, start, len)?, test.labels.f_narrow(0, start, len)?);
                Ok((s.score_pixels(&px, &labels, t_cfg.eval_draws, 256, eval_seed)?.bpd.iter().sum::<f64>(), len as f64, 0.0))
            })?,
            TrainData::Tabular { val, noise, context, .. } => tr.with_eval_weights(|s| {
                let c = context.as_ref().map(|c| c.val.f_narrow(0, start, len)).transpose()?;
                let (lp, batches) = s.score_rows_counted(&val.f_narrow(0, start, len)?, c.as_ref(), *noise, t_cfg.eval_draws, 1024, eval_seed, &sink)?;
                Ok((-lp.iter().sum::<f64>(), len as f64, batches as f64))
            })?,
        };
        let nfe = sink.counters().get("nfe_forward").copied().unwrap_or(0.0);
        let (sum, count, nfe, batches) = match &tr.parallel {
            Some(p) => match p.sum_over_ranks(&[sum, count, nfe, batches])?[..] {
                [s, c, f, b] => (s, c, f, b),
                _ => bail!("internal error: the evaluation sums came back with another length"),
            },
            None => (sum, count, nfe, batches),
        };
        let mean = if count == 0.0 { f64::NAN } else { sum / count };
        Ok((mean, (nfe > 0.0 && batches > 0.0).then(|| nfe / batches)))
    };
    // A conditional 2-D model is drawn at a few contexts of its training rows.
    let plot_contexts = match &data {
        TrainData::Tabular { context: Some(c), .. } if tr.sess.model.dim() == 2 => Some(super::plot_conditional::plot_contexts(&tr.sess, &c.train)?),
        _ => None,
    };
    let write_samples = |tr: &Trainer, name: &str| -> Result<()> {
        if tabular {
            if tr.sess.model.dim() == 2 {
                let png = run.samples_dir().join(name);
                let (t, seed) = (t_cfg.sample_temperature, derive_seed(t_cfg.seed, streams::SAMPLES, 0));
                tr.with_eval_weights(|s| match &plot_contexts {
                    Some(cs) => super::plot_conditional::plot_2d_contexts(s, &png, cs, 1000, t, seed),
                    None => super::plot::plot_2d_model(s, &png, 2000, t, seed),
                })?;
            }
            return Ok(());
        }
        let px = tr.with_eval_weights(|s| s.sample_pixels(t_cfg.n_samples, t_cfg.sample_temperature, derive_seed(t_cfg.seed, streams::SAMPLES, 0), None))?;
        save_grid(&px, &run.samples_dir().join(name))
    };

    let start_step = tr.state.step;
    let bar = if verbose { ProgressBar::new(t_cfg.max_steps as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}, {per_sec}]")
            .expect("static template"),
    );
    bar.set_position(start_step as u64);
    let is_tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let t0 = Instant::now();
    let mut window = LogWindow::default();
    let mut eval_nfe = None;
    let mut last_log = (Instant::now(), tr.state.step);
    let mut last_eval = f64::NAN;
    let mut stopped_early = false;
    let short = if tabular { "nats" } else { "bpd" };
    // The unit of the training loss: the flow-matching loss is a squared velocity error.
    let loss_unit = if t_cfg.objective == crate::config::Objective::FlowMatching { "(flow-matching loss)" } else { short };
    while tr.state.step < t_cfg.max_steps {
        let step = tr.state.step;
        let idx = batches.at(step)?;
        tch::manual_seed(derive_seed(t_cfg.seed, streams::STEP_NOISE, step));
        let (x, labels) = data.batch(&idx, device)?;
        // Distributed: this rank's rows of the batch of all ranks (same rows, same noise).
        let (x, labels) = match &tr.parallel {
            Some(p) => p.shard_batch(&x, &labels, step, t_cfg.seed)?,
            None => (x, labels),
        };
        let cond = tr.sess.cond_for(Some(&labels), labels.size()[0], "training")?;
        match tr.train_step(&x, cond.as_ref())? {
            StepOutcome::Updated { loss, grad_norm } => window.add(loss, grad_norm, &tr.last_report),
            StepOutcome::Skipped { loss, grad_norm } => {
                log(&bar, writer, format!("step {}: non-finite loss {loss} / gradient norm {grad_norm}: update skipped", step + 1));
            }
        }
        let done = tr.state.step;
        let mut last = done == t_cfg.max_steps;
        let eval_now = last || (t_cfg.eval_every > 0 && done % t_cfg.eval_every == 0);
        let mut eval_field = String::new();
        if eval_now {
            (last_eval, eval_nfe) = evaluate(&tr)?;
            eval_field = format!("{last_eval:.6}");
            if last_eval.is_finite() && tr.state.best_test_bpd.is_none_or(|b| last_eval < b) {
                if tr.sess.non_finite_variables().is_empty() {
                    if writer {
                        tr.with_eval_weights(|s| s.save_weights(&run.best_path(), done))?;
                    }
                    tr.state.best_test_bpd = Some(last_eval);
                    tr.state.best_step = Some(done);
                }
            }
            if t_cfg.patience > 0 && t_cfg.eval_every > 0 {
                if let Some(best_step) = tr.state.best_step {
                    if (done - best_step) / t_cfg.eval_every >= t_cfg.patience && !last {
                        stopped_early = true;
                        last = true;
                        log(&bar, writer, format!("early stop at step {done}: no better validation score for {} evaluations (best at step {best_step})", t_cfg.patience));
                    }
                }
            }
            if !is_tty && verbose {
                eprintln!(
                    "step {done}/{}: train {:.4} {loss_unit}, {} {last_eval:.4} {short} (best {:.4} at step {}){}",
                    t_cfg.max_steps,
                    window.mean_loss(),
                    if tabular { "validation" } else { "test" },
                    tr.state.best_test_bpd.unwrap_or(f64::NAN),
                    tr.state.best_step.unwrap_or(0),
                    window.nfe_message()
                );
            }
        }
        if eval_now || done % t_cfg.log_every == 0 {
            let dt = last_log.0.elapsed().as_secs_f64();
            let sps = (done - last_log.1) as f64 / dt.max(1e-9);
            let train_loss = window.mean_loss();
            let comm = tr.parallel.as_mut().and_then(|p| p.take_comm_ms());
            // Under flow matching the objective is no likelihood: the NLL column stays empty.
            let objective = if t_cfg.objective == crate::config::Objective::FlowMatching { String::new() } else { format!("{:.6}", window.mean_objective()) };
            let mut row = vec![
                done.to_string(),
                format!("{:.6e}", tr.lr_at(step)),
                objective,
                format!("{:.4}", window.mean_grad_norm()),
                eval_field.clone(),
                format!("{sps:.3}"),
                format!("{:.2}", tr.state.train_seconds + t0.elapsed().as_secs_f64()),
                tr.state.skipped_steps.to_string(),
                comm.map_or(String::new(), |c| format!("{:.3}", c.0)),
                comm.map_or(String::new(), |c| format!("{:.3}", c.1)),
            ];
            row.extend(window.step_fields(if eval_field.is_empty() { None } else { eval_nfe }));
            metrics.push(row)?;
            let comm_msg = comm.map_or(String::new(), |(all, wait)| format!(" | all-reduce {all:.1} ms (waited {wait:.1})"));
            bar.set_message(format!("loss {train_loss:.3} {loss_unit} | eval {last_eval:.3} | {sps:.1} steps/s{}{comm_msg}", window.nfe_message()));
            window = LogWindow::default();
            last_log = (Instant::now(), done);
        }
        if writer && (last || (t_cfg.sample_every > 0 && done % t_cfg.sample_every == 0)) {
            write_samples(&tr, &format!("step_{done:07}.png"))?;
        }
        if writer && (last || (t_cfg.checkpoint_every > 0 && done % t_cfg.checkpoint_every == 0)) {
            let elapsed = t0.elapsed().as_secs_f64();
            tr.state.train_seconds += elapsed;
            let saved = tr.save_checkpoint(&run);
            tr.state.train_seconds -= elapsed;
            saved?;
            metrics.write(&run.metrics_path())?;
            let (a, b) = (metrics.curve(columns[2]), metrics.curve(columns[4]));
            let title = if tabular { "negative log-likelihood (nats)" } else { "bits/dim" };
            let eval_label = if tabular { "validation" } else { "test" };
            if let Err(e) = super::plot::plot_curves(&run.path.join("curves.png"), title, eval_label, &a, &b) {
                log(&bar, writer, format!("warning: could not draw curves.png: {e}"));
            }
        }
        bar.set_position(done as u64);
        if stopped_early {
            break;
        }
    }
    bar.finish_and_clear();
    let elapsed = t0.elapsed().as_secs_f64();
    tr.state.train_seconds += elapsed;
    if writer {
        write_samples(&tr, "final.png")?;
        run.save_state(&tr.state)?;
        metrics.write(&run.metrics_path())?;
        super::score_stats::save_score_stats(&run, &data, opts.device, opts.verbose);
    }
    let steps = tr.state.step - start_step;
    let summary = TrainSummary {
        steps: tr.state.step,
        final_eval: if last_eval.is_nan() { evaluate(&tr)?.0 } else { last_eval },
        best_eval: tr.state.best_test_bpd.unwrap_or(f64::NAN),
        best_step: tr.state.best_step.unwrap_or(0),
        steps_per_s: steps as f64 / elapsed.max(1e-9),
        parameters: n_params,
        skipped_steps: tr.state.skipped_steps,
        unit,
        stopped_early,
        rank,
        world_size: world,
    };
    // Every rank returns once rank 0 has written the whole run directory.
    if let Some(p) = &tr.parallel {
        p.barrier().context("the final barrier (rank 0 writes the run directory meanwhile)")?;
    }
    Ok(summary)
}

/// What `--resume` needs of every rank, named when a rank cannot read the checkpoint.
fn resume_hint(rank: usize) -> String {
    if rank == 0 {
        "--resume".into()
    } else {
        format!("--resume on rank {rank}: every rank loads the checkpoint, so the run directory must be readable at the same path on every machine (a shared filesystem, or a copy)")
    }
}

/// A line above the progress bar on a terminal, on stderr otherwise (rank 0's only: `say`).
fn log(bar: &ProgressBar, say: bool, msg: String) {
    if !say {
        return;
    }
    if bar.is_hidden() {
        eprintln!("{msg}");
    } else {
        bar.println(msg);
    }
}
