//! One optimisation step and the trainer's state: the session, our Adam, the EMA weights and
//! the run state, with checkpoints that save and restore all of it exactly.
use super::Adam;
use crate::config::Objective;
use crate::flows::{Ctx, Sink};
use crate::io::tensors::named_variables;
use crate::io::{read_safetensors, write_safetensors, RunDir, RunState};
use crate::session::Session;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

/// Result of one optimisation step.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    Updated { loss: f64, grad_norm: f64 },
    /// The loss or the gradient norm was NaN/Inf: no update was made.
    Skipped { loss: f64, grad_norm: f64 },
}

/// What one [`Trainer::train_step`] measured beside the loss: the objective alone (the mean
/// NLL or bits/dim, or the flow-matching loss), the layers' weighted penalties that were added
/// to it (a continuous flow's kinetic energy and Jacobian norm; `None` when no layer reported
/// one), and the layers' counters (`nfe_forward`, `nfe_backward`: function evaluations of the
/// ODE solves, as the solver counted them; this rank's own in a distributed run).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepReport {
    pub objective: f64,
    pub penalty: Option<f64>,
    pub counters: BTreeMap<String, f64>,
}

pub struct Trainer {
    pub sess: Session,
    pub opt: Adam,
    /// EMA copies of the trainable parameters (same order as the optimizer's).
    pub ema: Option<Vec<Tensor>>,
    pub state: RunState,
    /// Consecutive non-finite steps so far.
    pub nonfinite_run: i64,
    /// This process's part in a data-parallel run (`None`: training in one process).
    pub parallel: Option<super::DataParallel>,
    /// What the last [`train_step`](Self::train_step) measured beside the loss.
    pub last_report: StepReport,
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
        Ok(Trainer { sess, opt, ema, state, nonfinite_run: 0, parallel: None, last_report: StepReport::default() })
    }

    /// Restarts the EMA from the current weights (after the data-dependent initialisation).
    pub fn reset_ema(&mut self) {
        if let Some(ema) = &mut self.ema {
            *ema = self.opt.params().iter().map(|(_, p)| p.detach().copy()).collect();
        }
    }

    /// The learning rate of step `step` (linear warm-up, then constant).
    pub fn lr_at(&self, step: i64) -> f64 {
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
        let _ = self.sess.model.log_prob(x, &ctx)?;
        Ok(())
    }

    /// One step on a batch already in model space (dequantised), on `train.objective`: the mean
    /// negative log-likelihood (nats for tabular data, bits/dim for images) or the
    /// flow-matching loss, plus every penalty the layers report to the context's sink (already
    /// weighted by their config). NaN/Inf in the loss or the gradients skips the update and
    /// counts it; `max_nonfinite` in a row is an error. [`last_report`](Self::last_report)
    /// then holds the objective, the penalty and the layers' counters.
    pub fn train_step(&mut self, x: &Tensor, cond: Option<&Tensor>) -> Result<StepOutcome> {
        let sink = Sink::new();
        let ctx = self.sess.ctx_train(cond).with_sink(&sink);
        let objective = match self.sess.cfg.train.objective {
            Objective::FlowMatching => self.sess.model.flow_matching_loss(x, &ctx)?,
            Objective::Likelihood | Objective::ReverseKl => {
                let lp = self.sess.model.log_prob(x, &ctx)?;
                if self.sess.is_tabular() {
                    // mean negative log-likelihood, nats
                    lp.f_mean(Kind::Float)?.f_neg()?
                } else {
                    // mean bits/dim
                    let dims = self.sess.model.dim() as f64;
                    let n_bits = self.sess.cfg.data.n_bits as f64;
                    lp.f_mean(Kind::Float)?.f_neg()?.f_div_scalar(dims * std::f64::consts::LN_2)?.f_add_scalar(n_bits)?
                }
            }
        };
        let penalty = sink.total_penalty()?;
        let loss = match &penalty {
            Some(p) => objective.f_add(&p.f_to_kind(objective.kind())?)?,
            None => objective.shallow_clone(),
        };
        let mut extras = vec![objective.f_detach()?];
        if let Some(p) = &penalty {
            extras.push(p.f_detach()?);
        }
        let (outcome, values) = self.step_on_loss_reading(&loss, &extras)?;
        self.last_report = StepReport { objective: values[0], penalty: values.get(1).copied(), counters: sink.counters() };
        Ok(outcome)
    }

    /// The update for a scalar `loss` whose graph reaches the parameters (any objective: the
    /// likelihood of [`train_step`](Self::train_step), the reverse KL of `crate::vi`): backward,
    /// the NaN/Inf check that skips and counts, clipping, Adam, EMA; the step counter advances.
    pub fn step_on_loss(&mut self, loss: &Tensor) -> Result<StepOutcome> {
        Ok(self.step_on_loss_reading(loss, &[])?.0)
    }

    /// [`step_on_loss`](Self::step_on_loss), also bringing the scalars `extras` (detached parts
    /// of the loss) to the host in the same read, averaged over the ranks like the loss.
    pub fn step_on_loss_reading(&mut self, loss: &Tensor, extras: &[Tensor]) -> Result<(StepOutcome, Vec<f64>)> {
        let step = self.state.step;
        let lr = self.lr_at(step);
        self.opt.zero_grad();
        // Distributed: gradients and loss averaged over the ranks, so every rank takes the same
        // update (or skips the same non-finite step).
        match &mut self.parallel {
            Some(p) => p.backward(loss, &self.opt, step)?,
            None => loss.f_backward()?,
        }
        let norm = self.opt.grad_norm()?;
        let mut scalars = vec![loss.f_detach()?.f_to_kind(Kind::Double)?.f_reshape([] as [i64; 0])?];
        for e in extras {
            scalars.push(e.f_detach()?.f_to_kind(Kind::Double)?.f_reshape([] as [i64; 0])?);
        }
        let mut values = Tensor::f_stack(&scalars, 0)?;
        if let Some(p) = &mut self.parallel {
            values = p.mean_loss(&values)?;
        }
        let host = Vec::<f64>::try_from(Tensor::f_cat(&[values, norm.f_to_kind(Kind::Double)?.f_reshape([1])?], 0)?.f_to_device(Device::Cpu)?)?;
        let (loss_v, norm_v) = (host[0], host[host.len() - 1]);
        let extra_values = host[1..host.len() - 1].to_vec();
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
            return Ok((StepOutcome::Skipped { loss: loss_v, grad_norm: norm_v }, extra_values));
        }
        self.nonfinite_run = 0;
        let clip = self.sess.cfg.train.grad_clip;
        let scale = if clip > 0.0 && norm_v > clip { clip / norm_v } else { 1.0 };
        self.opt.step(lr, scale)?;
        if let Some(ema) = &mut self.ema {
            let _g = tch::no_grad_guard();
            let d = self.sess.cfg.train.ema;
            for (e, (_, p)) in ema.iter_mut().zip(self.opt.params()) {
                let _ = e.f_mul_scalar_(d)?;
                let _ = e.f_add_(&p.f_mul_scalar(1.0 - d)?)?;
            }
        }
        Ok((StepOutcome::Updated { loss: loss_v, grad_norm: norm_v }, extra_values))
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
