//! The training loop. Every random draw is seeded from `(seed, step)` or `(seed, epoch)`, and
//! the optimizer state is ours and saved, so a resumed run continues exactly where the
//! uninterrupted one would be.
use super::{Adam, Session};
use crate::config::{Config, DataKind};
use crate::data::tabular::{load_table, split_table, standardization};
use crate::data::{dequantize, images::seeded_permutation, load_split, to_model_space, ImageSet};
use crate::models::DataInfo;
use crate::flows::Ctx;
use crate::io::png::save_grid;
use crate::io::tensors::named_variables;
use crate::io::{read_safetensors, write_safetensors, RunDir, RunState};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Result of one optimisation step.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    Updated { loss: f64, grad_norm: f64 },
    /// The loss or the gradient norm was NaN/Inf: no update was made.
    Skipped { loss: f64, grad_norm: f64 },
}

pub struct Trainer {
    pub sess: Session,
    pub opt: Adam,
    /// EMA copies of the trainable parameters (same order as the optimizer's).
    pub ema: Option<Vec<Tensor>>,
    pub state: RunState,
    /// Consecutive non-finite steps so far.
    pub nonfinite_run: i64,
}

fn mix(seed: u64, a: u64, b: i64) -> i64 {
    let mut z = seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (b as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 31)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z >> 1) as i64
}

impl Trainer {
    pub fn new(sess: Session, classes: Vec<String>) -> Result<Trainer> {
        let mut params: Vec<(String, Tensor)> = named_variables(&sess.vs).into_iter().filter(|(_, t)| t.requires_grad()).collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let ema = (sess.cfg.train.ema > 0.0)
            .then(|| params.iter().map(|(_, p)| p.detach().copy()).collect::<Vec<_>>());
        let opt = Adam::new(params)?;
        let columns = sess.columns.clone();
        let state = RunState { classes, columns, flowzoo_version: env!("CARGO_PKG_VERSION").into(), ..RunState::default() };
        Ok(Trainer { sess, opt, ema, state, nonfinite_run: 0 })
    }

    /// Restarts the EMA from the current weights (after the data-dependent initialisation).
    pub fn reset_ema(&mut self) {
        if let Some(ema) = &mut self.ema {
            *ema = self.opt.params().iter().map(|(_, p)| p.detach().copy()).collect();
        }
    }

    fn lr_at(&self, step: i64) -> f64 {
        let t = &self.sess.cfg.train;
        if t.warmup_steps > 0 {
            t.lr * ((step + 1) as f64 / t.warmup_steps as f64).min(1.0)
        } else {
            t.lr
        }
    }

    /// ActNorm's data-dependent initialisation from `x` (model space).
    pub fn data_init(&self, x: &Tensor, cond: Option<&Tensor>) -> Result<()> {
        let _g = tch::no_grad_guard();
        let ctx = Ctx { data_init: true, train: true, cond, ..Ctx::default() };
        self.sess.model.log_prob(x, &ctx)?;
        Ok(())
    }

    /// One step on a batch already in model space (dequantised). NaN/Inf in the loss or the
    /// gradients skips the update and counts it; `max_nonfinite` in a row is an error.
    pub fn train_step(&mut self, x: &Tensor, cond: Option<&Tensor>) -> Result<StepOutcome> {
        let step = self.state.step;
        let lr = self.lr_at(step);
        self.opt.zero_grad();
        let lp = self.sess.model.log_prob(x, &self.sess.ctx_train(cond))?;
        let loss = if self.sess.is_tabular() {
            // mean negative log-likelihood, nats
            lp.f_mean(Kind::Float)?.f_neg()?
        } else {
            // mean bits/dim
            let dims = self.sess.model.dim() as f64;
            let n_bits = self.sess.cfg.data.n_bits as f64;
            lp.f_mean(Kind::Float)?.f_neg()?.f_div_scalar(dims * std::f64::consts::LN_2)?.f_add_scalar(n_bits)?
        };
        loss.f_backward()?;
        let norm = self.opt.grad_norm()?;
        let host = Vec::<f64>::try_from(Tensor::f_stack(&[loss.f_detach()?.f_to_kind(Kind::Double)?, norm.f_to_kind(Kind::Double)?], 0)?.f_to_device(Device::Cpu)?)?;
        let (loss_v, norm_v) = (host[0], host[1]);
        self.state.step += 1;
        if !loss_v.is_finite() || !norm_v.is_finite() {
            self.opt.zero_grad();
            self.state.skipped_steps += 1;
            self.nonfinite_run += 1;
            let max = self.sess.cfg.train.max_nonfinite;
            if self.nonfinite_run >= max {
                bail!(
                    "training stopped at step {}: {max} consecutive steps with a non-finite loss or gradient (last: loss {loss_v}, gradient norm {norm_v}); the last good checkpoint is left as it was",
                    self.state.step
                );
            }
            return Ok(StepOutcome::Skipped { loss: loss_v, grad_norm: norm_v });
        }
        self.nonfinite_run = 0;
        let clip = self.sess.cfg.train.grad_clip;
        let scale = if clip > 0.0 && norm_v > clip { clip / norm_v } else { 1.0 };
        self.opt.step(lr, scale)?;
        if let Some(ema) = &mut self.ema {
            let _g = tch::no_grad_guard();
            let d = self.sess.cfg.train.ema;
            for (e, (_, p)) in ema.iter_mut().zip(self.opt.params()) {
                e.f_mul_scalar_(d)?;
                e.f_add_(&p.f_mul_scalar(1.0 - d)?)?;
            }
        }
        Ok(StepOutcome::Updated { loss: loss_v, grad_norm: norm_v })
    }

    /// Runs `f` with the EMA weights swapped in (when EMA is on).
    pub fn with_eval_weights<T>(&self, f: impl FnOnce(&Session) -> Result<T>) -> Result<T> {
        let Some(ema) = &self.ema else { return f(&self.sess) };
        let _g = tch::no_grad_guard();
        let saved: Vec<Tensor> = self.opt.params().iter().map(|(_, p)| p.detach().copy()).collect();
        for (e, (_, p)) in ema.iter().zip(self.opt.params()) {
            p.shallow_clone().f_copy_(e)?;
        }
        let out = f(&self.sess);
        for (s, (_, p)) in saved.iter().zip(self.opt.params()) {
            p.shallow_clone().f_copy_(s)?;
        }
        out
    }

    /// Writes weights, optimizer state and state.json, each atomically; refuses a model with
    /// NaN/Inf weights so a good checkpoint is never replaced by a broken one.
    pub fn save_checkpoint(&self, run: &RunDir) -> Result<()> {
        let bad = self.sess.non_finite_variables();
        if !bad.is_empty() {
            bail!("not saving the checkpoint at step {}: non-finite values in {}", self.state.step, bad.join(", "));
        }
        let step = self.state.step;
        let mut meta = BTreeMap::new();
        meta.insert("step".to_string(), step.to_string());
        self.sess.save_weights(&run.weights_path(), step)?;
        let mut opt = self.opt.state_tensors();
        if let Some(ema) = &self.ema {
            for (e, (name, _)) in ema.iter().zip(self.opt.params()) {
                opt.push((format!("ema.{name}"), e.shallow_clone()));
            }
        }
        meta.insert("adam_step".to_string(), self.opt.step.to_string());
        write_safetensors(&run.optimizer_path(), &opt, &meta)?;
        run.save_state(&self.state)
    }

    /// Restores a checkpoint written by [`save_checkpoint`](Self::save_checkpoint).
    pub fn load_checkpoint(&mut self, run: &RunDir) -> Result<()> {
        let state = run.load_state()?;
        let (w, wmeta) = read_safetensors(&run.weights_path())?;
        let (o, ometa) = read_safetensors(&run.optimizer_path())?;
        let step_of = |m: &BTreeMap<String, String>| m.get("step").and_then(|s| s.parse::<i64>().ok());
        if step_of(&wmeta) != Some(state.step) || step_of(&ometa) != Some(state.step) {
            bail!(
                "{}: weights (step {:?}), optimizer (step {:?}) and state.json (step {}) do not match; the run was interrupted mid-checkpoint",
                run.path.display(),
                step_of(&wmeta),
                step_of(&ometa),
                state.step
            );
        }
        crate::io::load_into_varstore(&self.sess.vs, &w, &run.weights_path().display().to_string())?;
        let adam_step = ometa.get("adam_step").and_then(|s| s.parse().ok()).context("optimizer.safetensors: no adam_step")?;
        self.opt.load_state(&o, adam_step, &run.optimizer_path().display().to_string())?;
        if let Some(ema) = &mut self.ema {
            let _g = tch::no_grad_guard();
            for (e, (name, _)) in ema.iter_mut().zip(self.opt.params()) {
                let key = format!("ema.{name}");
                let src = o.get(&key).with_context(|| format!("{}: missing {key} (was EMA off?)", run.optimizer_path().display()))?;
                e.f_copy_(&src.f_to_device(e.device())?.f_to_kind(e.kind())?)?;
            }
        }
        self.state = state;
        Ok(())
    }
}

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
}

/// The training data and how a batch of it becomes model-space input.
enum TrainData {
    Images { train: ImageSet, test: ImageSet, n_bits: i64 },
    Tabular { train: Tensor, val: Tensor, noise: f64 },
}

impl TrainData {
    fn len(&self) -> i64 {
        match self {
            TrainData::Images { train, .. } => train.len(),
            TrainData::Tabular { train, .. } => train.size()[0],
        }
    }
    fn classes(&self) -> Vec<String> {
        match self {
            TrainData::Images { train, .. } => train.classes.clone(),
            TrainData::Tabular { .. } => vec![],
        }
    }
    /// Model-space input and labels for the given rows (noise drawn from the global generator).
    fn batch(&self, idx: &Tensor, device: Device) -> Result<(Tensor, Tensor)> {
        match self {
            TrainData::Images { train, n_bits, .. } => {
                let idx_here = idx.f_to_device(train.images.device())?;
                let px = train.images.f_index_select(0, &idx_here)?.f_to_device(device)?;
                let x = dequantize(&to_model_space(&px, *n_bits, Kind::Float)?, *n_bits)?;
                Ok((x, train.labels.f_index_select(0, idx)?))
            }
            TrainData::Tabular { train, noise, .. } => {
                let mut x = train.f_index_select(0, &idx.f_to_device(train.device())?)?.f_to_device(device)?.f_to_kind(Kind::Float)?;
                if *noise > 0.0 {
                    x = x.f_add(&x.f_rand_like()?.f_mul_scalar(*noise)?)?;
                }
                Ok((x, Tensor::f_zeros([idx.size()[0]], (Kind::Int64, Device::Cpu))?))
            }
        }
    }
}

fn load_train_data(cfg: &Config, verbose: bool) -> Result<(TrainData, Vec<String>, Option<(Tensor, Tensor)>)> {
    let seed = cfg.train.seed;
    match cfg.data.kind {
        DataKind::Images => {
            let (train_set, test_set, report) = load_split(Path::new(&cfg.data.path), &cfg.data, seed)?;
            if verbose {
                eprintln!(
                    "data: {} train / {} test images from {} ({} classes){}",
                    train_set.len(),
                    test_set.len(),
                    cfg.data.path,
                    train_set.classes.len(),
                    if report.skipped.is_empty() { String::new() } else { format!(", {} bad files skipped", report.skipped.len()) }
                );
            }
            Ok((TrainData::Images { train: train_set, test: test_set, n_bits: cfg.data.n_bits }, vec![], None))
        }
        DataKind::Tabular => {
            let table = load_table(Path::new(&cfg.data.path), &cfg.data)?;
            let split = split_table(&table, &cfg.data, seed)?;
            if verbose {
                eprintln!(
                    "data: {} train / {} validation / {} test rows of {} columns from {}{}",
                    split.train.size()[0],
                    split.val.size()[0],
                    split.test.size()[0],
                    split.columns.len(),
                    cfg.data.path,
                    if split.dropped > 0 { format!(", {} bad rows dropped", split.dropped) } else { String::new() }
                );
            }
            let (mean, std) = standardization(&split.train, cfg.data.uniform_noise)?;
            let columns = split.columns.clone();
            Ok((TrainData::Tabular { train: split.train, val: split.val, noise: cfg.data.uniform_noise }, columns, Some((mean, std))))
        }
    }
}

struct Batches {
    seed: u64,
    batch: i64,
    n: i64,
    epoch: i64,
    perm: Vec<i64>,
}

impl Batches {
    fn steps_per_epoch(&self) -> i64 {
        (self.n / self.batch).max(1)
    }
    /// Row indices of a given step: a seeded per-epoch permutation, cut in order.
    fn at(&mut self, step: i64) -> Result<Tensor> {
        let spe = self.steps_per_epoch();
        let epoch = step / spe;
        if epoch != self.epoch || self.perm.is_empty() {
            self.perm = seeded_permutation(self.n as usize, mix(self.seed, 1, epoch) as u64);
            self.epoch = epoch;
        }
        let b = self.batch.min(self.n);
        let start = ((step % spe) * b) as usize;
        Ok(Tensor::f_from_slice(&self.perm[start..start + b as usize])?)
    }
}

fn metrics_header(tabular: bool) -> &'static str {
    if tabular {
        "step,lr,train_nll,grad_norm,val_nll,steps_per_s,elapsed_s,skipped_steps"
    } else {
        "step,lr,train_bpd,grad_norm,test_bpd,steps_per_s,elapsed_s,skipped_steps"
    }
}

/// Keeps the metrics rows up to `step` (a resumed run rewrites what came after its checkpoint).
fn read_metrics(path: &Path, upto: i64) -> Result<Vec<String>> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(vec![]) };
    Ok(text
        .lines()
        .skip(1)
        .filter(|l| l.split(',').next().and_then(|s| s.parse::<i64>().ok()).is_some_and(|s| s <= upto))
        .map(str::to_string)
        .collect())
}

fn curves_from(rows: &[String]) -> (Vec<(f64, f64)>, Vec<(f64, f64)>) {
    let mut train = vec![];
    let mut test = vec![];
    for r in rows {
        let f: Vec<&str> = r.split(',').collect();
        let (Some(s), Some(tr), Some(te)) = (f.first(), f.get(2), f.get(4)) else { continue };
        let Ok(s) = s.parse::<f64>() else { continue };
        if let Ok(v) = tr.parse::<f64>() {
            train.push((s, v));
        }
        if let Ok(v) = te.parse::<f64>() {
            test.push((s, v));
        }
    }
    (train, test)
}

/// Trains the model of `cfg` on its data, writing the run directory `opts.out`.
pub fn train(cfg: &Config, opts: &TrainOptions) -> Result<TrainSummary> {
    let t_cfg = cfg.train.clone();
    if t_cfg.threads > 0 {
        tch::set_num_threads(t_cfg.threads as i32);
    }
    t_cfg.precision.parse::<crate::bench::Precision>()?.apply()?;
    let (mut data, columns, stats) = load_train_data(cfg, opts.verbose)?;
    if opts.device.is_cuda() {
        // The decoded training set lives on the GPU (uint8 images are small), so a step never
        // waits on a host-to-device copy.
        match &mut data {
            TrainData::Images { train, .. } => train.images = train.images.f_to_device(opts.device)?,
            TrainData::Tabular { train, .. } => *train = train.f_to_kind(Kind::Float)?.f_to_device(opts.device)?,
        }
    }
    let tabular = matches!(data, TrainData::Tabular { .. });
    let unit = if tabular { "nats (validation NLL)" } else { "bits/dim" };
    let run = if opts.resume { RunDir::open(&opts.out)? } else { RunDir::create(&opts.out)? };
    let classes = data.classes();
    let sess = Session::new_for(cfg, DataInfo { classes: classes.clone(), columns }, opts.device)?;
    let n_params = sess.parameter_count();
    let mut tr = Trainer::new(sess, classes.clone())?;
    let mut batches = Batches { seed: t_cfg.seed, batch: t_cfg.batch_size, n: data.len(), epoch: -1, perm: vec![] };
    if opts.resume {
        tr.load_checkpoint(&run)?;
        // Only a class-conditional model depends on the class list; tabular ones on the columns.
        if cfg.model.conditional && tr.state.classes != classes {
            bail!("--resume: the data's classes {classes:?} differ from the run's {:?}", tr.state.classes);
        }
        if tr.state.columns != tr.sess.columns {
            bail!("--resume: the data's columns {:?} differ from the run's {:?}", tr.sess.columns, tr.state.columns);
        }
        if opts.verbose {
            eprintln!("resuming {} at step {}", run.path.display(), tr.state.step);
        }
    } else {
        if let Some((mean, std)) = &stats {
            tr.sess.set_standardization(mean, std)?;
        }
        // Data-dependent initialisation (ActNorm) on one seeded batch of up to 512 rows.
        let n = data.len().min(t_cfg.batch_size.max(512));
        let idx = Tensor::f_from_slice(&seeded_permutation(data.len() as usize, mix(t_cfg.seed, 2, 0) as u64)[..n as usize])?;
        tch::manual_seed(mix(t_cfg.seed, 3, 0));
        let (x, labels) = data.batch(&idx, opts.device)?;
        let cond = tr.sess.one_hot(&labels)?;
        tr.data_init(&x, cond.as_ref())?;
        tr.reset_ema();
    }
    run.save_config(cfg)?;
    if opts.verbose {
        eprintln!("{} | {} parameters | device {:?}", tr.sess.model.describe(), n_params, opts.device);
    }

    let mut rows = read_metrics(&run.metrics_path(), tr.state.step)?;
    let eval_seed = mix(t_cfg.seed, 4, 0);
    // Lower is better: test bits/dim (images) or validation NLL in nats (tabular).
    let evaluate = |tr: &Trainer| -> Result<f64> {
        match &data {
            TrainData::Images { test, .. } if test.is_empty() => Ok(f64::NAN),
            TrainData::Images { test, .. } => tr.with_eval_weights(|s| {
                Ok(s.score_pixels(&test.images, &test.labels, t_cfg.eval_draws, 256, eval_seed)?.mean_bpd())
            }),
            TrainData::Tabular { val, .. } if val.size()[0] == 0 => Ok(f64::NAN),
            TrainData::Tabular { val, noise, .. } => tr.with_eval_weights(|s| {
                let lp = s.score_rows(val, *noise, t_cfg.eval_draws, 1024, eval_seed)?;
                Ok(-lp.iter().sum::<f64>() / lp.len() as f64)
            }),
        }
    };
    let write_samples = |tr: &Trainer, name: &str| -> Result<()> {
        if tabular {
            if tr.sess.model.dim() == 2 {
                let png = run.samples_dir().join(name);
                tr.with_eval_weights(|s| super::plot::plot_2d_model(s, &png, 2000, t_cfg.sample_temperature, mix(t_cfg.seed, 5, 0)))?;
            }
            return Ok(());
        }
        let px = tr.with_eval_weights(|s| s.sample_pixels(t_cfg.n_samples, t_cfg.sample_temperature, mix(t_cfg.seed, 5, 0), None))?;
        save_grid(&px, &run.samples_dir().join(name))
    };

    let start_step = tr.state.step;
    let bar = if opts.verbose { ProgressBar::new(t_cfg.max_steps as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}, {per_sec}]")
            .expect("static template"),
    );
    bar.set_position(start_step as u64);
    let is_tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let t0 = Instant::now();
    let mut window = (0.0f64, 0.0f64, 0i64);
    let mut last_log = (Instant::now(), tr.state.step);
    let mut last_eval = f64::NAN;
    let mut stopped_early = false;
    let short = if tabular { "nats" } else { "bpd" };
    while tr.state.step < t_cfg.max_steps {
        let step = tr.state.step;
        let idx = batches.at(step)?;
        tch::manual_seed(mix(t_cfg.seed, 6, step));
        let (x, labels) = data.batch(&idx, opts.device)?;
        let cond = tr.sess.one_hot(&labels)?;
        match tr.train_step(&x, cond.as_ref())? {
            StepOutcome::Updated { loss, grad_norm } => {
                window.0 += loss;
                window.1 += grad_norm;
                window.2 += 1;
            }
            StepOutcome::Skipped { loss, grad_norm } => {
                log(&bar, format!("step {}: non-finite loss {loss} / gradient norm {grad_norm}: update skipped", step + 1));
            }
        }
        let done = tr.state.step;
        let mut last = done == t_cfg.max_steps;
        let eval_now = last || (t_cfg.eval_every > 0 && done % t_cfg.eval_every == 0);
        let mut eval_field = String::new();
        if eval_now {
            last_eval = evaluate(&tr)?;
            eval_field = format!("{last_eval:.6}");
            if last_eval.is_finite() && tr.state.best_test_bpd.is_none_or(|b| last_eval < b) {
                if tr.sess.non_finite_variables().is_empty() {
                    tr.with_eval_weights(|s| s.save_weights(&run.best_path(), done))?;
                    tr.state.best_test_bpd = Some(last_eval);
                    tr.state.best_step = Some(done);
                }
            }
            if t_cfg.patience > 0 && t_cfg.eval_every > 0 {
                if let Some(best_step) = tr.state.best_step {
                    if (done - best_step) / t_cfg.eval_every >= t_cfg.patience && !last {
                        stopped_early = true;
                        last = true;
                        log(&bar, format!("early stop at step {done}: no better validation score for {} evaluations (best at step {best_step})", t_cfg.patience));
                    }
                }
            }
            if !is_tty && opts.verbose {
                eprintln!(
                    "step {done}/{}: train {:.4} {short}, {} {last_eval:.4} {short} (best {:.4} at step {})",
                    t_cfg.max_steps,
                    window.0 / window.2.max(1) as f64,
                    if tabular { "validation" } else { "test" },
                    tr.state.best_test_bpd.unwrap_or(f64::NAN),
                    tr.state.best_step.unwrap_or(0)
                );
            }
        }
        if eval_now || done % t_cfg.log_every == 0 {
            let dt = last_log.0.elapsed().as_secs_f64();
            let sps = (done - last_log.1) as f64 / dt.max(1e-9);
            let train_loss = window.0 / window.2.max(1) as f64;
            rows.push(format!(
                "{done},{:.6e},{train_loss:.6},{:.4},{eval_field},{sps:.3},{:.2},{}",
                tr.lr_at(step),
                window.1 / window.2.max(1) as f64,
                tr.state.train_seconds + t0.elapsed().as_secs_f64(),
                tr.state.skipped_steps
            ));
            bar.set_message(format!("loss {train_loss:.3} {short} | eval {last_eval:.3} | {sps:.1} steps/s"));
            window = (0.0, 0.0, 0);
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
            write_metrics(&run, &rows, tabular)?;
            let (a, b) = curves_from(&rows);
            let title = if tabular { "negative log-likelihood (nats)" } else { "bits/dim" };
            let eval_label = if tabular { "validation" } else { "test" };
            if let Err(e) = super::plot::plot_curves(&run.path.join("curves.png"), title, eval_label, &a, &b) {
                log(&bar, format!("warning: could not draw curves.png: {e}"));
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
    write_samples(&tr, "final.png")?;
    run.save_state(&tr.state)?;
    write_metrics(&run, &rows, tabular)?;
    let steps = tr.state.step - start_step;
    Ok(TrainSummary {
        steps: tr.state.step,
        final_eval: if last_eval.is_nan() { evaluate(&tr)? } else { last_eval },
        best_eval: tr.state.best_test_bpd.unwrap_or(f64::NAN),
        best_step: tr.state.best_step.unwrap_or(0),
        steps_per_s: steps as f64 / elapsed.max(1e-9),
        parameters: n_params,
        skipped_steps: tr.state.skipped_steps,
        unit,
        stopped_early,
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

fn write_metrics(run: &RunDir, rows: &[String], tabular: bool) -> Result<()> {
    crate::io::atomic::atomic_write(&run.metrics_path(), |f| {
        writeln!(f, "{}", metrics_header(tabular))?;
        for r in rows {
            writeln!(f, "{r}")?;
        }
        Ok(())
    })
}
