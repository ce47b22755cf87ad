//! Adam whose state (moments, step count) we own, so a checkpoint can save and restore it
//! exactly: tch's `nn::Adam` cannot export its state.
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

pub struct Adam {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Updates applied so far.
    pub step: i64,
    params: Vec<(String, Tensor)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl Adam {
    /// `params`: the trainable variables, by name.
    pub fn new(params: Vec<(String, Tensor)>) -> Result<Self> {
        let m = params.iter().map(|(_, p)| p.f_zeros_like()).collect::<Result<Vec<_>, _>>()?;
        let v = params.iter().map(|(_, p)| p.f_zeros_like()).collect::<Result<Vec<_>, _>>()?;
        Ok(Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, step: 0, params, m, v })
    }

    pub fn params(&self) -> &[(String, Tensor)] {
        &self.params
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.f_zero_();
            }
        }
    }

    /// Global L2 norm of all gradients, as a 0-dim tensor (no host sync).
    pub fn grad_norm(&self) -> Result<Tensor> {
        let mut total: Option<Tensor> = None;
        for (_, p) in &self.params {
            let g = p.grad();
            if g.defined() {
                let sq = g.f_square()?.f_sum(Kind::Float)?;
                total = Some(match total {
                    Some(t) => t.f_add(&sq)?,
                    None => sq,
                });
            }
        }
        match total {
            Some(t) => Ok(t.f_sqrt()?),
            None => bail!("no gradients: call backward() before the optimizer step"),
        }
    }

    /// One Adam update with learning rate `lr`, the gradients first scaled by `grad_scale`
    /// (gradient clipping).
    pub fn step(&mut self, lr: f64, grad_scale: f64) -> Result<()> {
        let _g = tch::no_grad_guard();
        self.step += 1;
        let t = self.step as f64;
        let bc1 = 1.0 - self.beta1.powf(t);
        let bc2 = 1.0 - self.beta2.powf(t);
        for (i, (_, p)) in self.params.iter().enumerate() {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let g = if grad_scale != 1.0 { g.f_mul_scalar(grad_scale)? } else { g };
            let m = &mut self.m[i];
            m.f_mul_scalar_(self.beta1)?;
            m.f_add_(&g.f_mul_scalar(1.0 - self.beta1)?)?;
            let v = &mut self.v[i];
            v.f_mul_scalar_(self.beta2)?;
            v.f_add_(&g.f_square()?.f_mul_scalar(1.0 - self.beta2)?)?;
            let denom = v.f_sqrt()?.f_div_scalar(bc2.sqrt())?.f_add_scalar(self.eps)?;
            let update = m.f_div(&denom)?.f_mul_scalar(lr / bc1)?;
            p.shallow_clone().f_sub_(&update)?;
        }
        Ok(())
    }

    /// `m.<name>`, `v.<name>` for every parameter.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![];
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.push((format!("m.{name}"), self.m[i].shallow_clone()));
            out.push((format!("v.{name}"), self.v[i].shallow_clone()));
        }
        out
    }

    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>, step: i64, origin: &str) -> Result<()> {
        let _g = tch::no_grad_guard();
        for (i, (name, p)) in self.params.iter().enumerate() {
            for (prefix, dst) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("{prefix}.{name}");
                let Some(src) = tensors.get(&key) else { bail!("{origin}: missing optimizer state {key}") };
                if src.size() != p.size() {
                    bail!("{origin}: {key} has shape {:?}, parameter has {:?}", src.size(), p.size());
                }
                dst.f_copy_(&src.f_to_kind(dst.kind())?.f_to_device(dst.device())?)?;
            }
        }
        self.step = step;
        Ok(())
    }
}
