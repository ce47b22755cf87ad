//! One optimisation step and the trainer's state: the session, our Adam, the EMA weights and
//! the run state, with checkpoints that save and restore all of it exactly.
use super::Adam;
use crate::flows::Ctx;
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
        Ok(Trainer { sess, opt, ema, state, nonfinite_run: 0, parallel: None })
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

    /// One step on a batch already in model space (dequantised). NaN/Inf in the loss or the
    /// gradients skips the update and counts it; `max_nonfinite` in a row is an error.
    pub fn train_step(&mut self, x: &Tensor, cond: Option<&Tensor>) -> Result<StepOutcome> {
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
        self.step_on_loss(&loss)
    }

    /// The update for a scalar `loss` whose graph reaches the parameters (any objective: the
    /// likelihood of [`train_step`](Self::train_step), the reverse KL of `crate::vi`): backward,
    /// the NaN/Inf check that skips and counts, clipping, Adam, EMA; the step counter advances.
    pub fn step_on_loss(&mut self, loss: &Tensor) -> Result<StepOutcome> {
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
        let mut loss_d = loss.f_detach()?.f_to_kind(Kind::Double)?;
        if let Some(p) = &mut self.parallel {
            loss_d = p.mean_loss(&loss_d)?;
        }
        let host = Vec::<f64>::try_from(Tensor::f_stack(&[loss_d, norm.f_to_kind(Kind::Double)?], 0)?.f_to_device(Device::Cpu)?)?;
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
                let _ = e.f_mul_scalar_(d)?;
                let _ = e.f_add_(&p.f_mul_scalar(1.0 - d)?)?;
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
