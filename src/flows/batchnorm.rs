//! Batch-norm as a flow (RealNVP, Dinh et al. 2017): `y = (x - mean) / sqrt(var + eps) ·
//! exp(log_gamma) + beta`. In training the batch statistics are used (and the log-det is taken
//! with them held fixed) and the running statistics are updated; in eval and in the inverse
//! the running statistics are used.
use super::{channel_shape, check_channels, spatial_size, Ctx, Flow};
use anyhow::Result;
use tch::{nn, Tensor};

pub struct BatchNormFlow {
    pub channels: i64,
    pub log_gamma: Tensor,
    pub beta: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub momentum: f64,
    pub eps: f64,
}

impl BatchNormFlow {
    pub fn new(p: nn::Path, channels: i64, ndim: usize) -> Self {
        let shape = channel_shape(channels, ndim);
        BatchNormFlow {
            channels,
            log_gamma: p.zeros("log_gamma", &shape),
            beta: p.zeros("beta", &shape),
            running_mean: p.zeros_no_train("running_mean", &shape),
            running_var: p.ones_no_train("running_var", &shape),
            momentum: 0.05,
            eps: 1e-5,
        }
    }

    fn logdet(&self, var: &Tensor, x: &Tensor) -> Result<Tensor> {
        let per = self.log_gamma.f_sub(&var.f_add_scalar(self.eps)?.f_log()?.f_mul_scalar(0.5)?)?;
        let ld = per.f_sum(x.kind())?.f_mul_scalar(spatial_size(x) as f64)?;
        Ok(ld.f_expand([x.size()[0]], false)?)
    }
}

impl Flow for BatchNormFlow {
    /// TorchScript of the eval-mode map (running statistics, which stay fixed in the exported
    /// module: fine-tuning there trains `log_gamma` and `beta` only).
    fn to_torchscript(&self, ts: &mut crate::script::ScriptBuilder) -> Result<crate::script::ScriptFlow> {
        use crate::script::{ts_float, ts_spatial_size};
        let (lg, beta) = (ts.tensor(&self.log_gamma)?, ts.tensor(&self.beta)?);
        let (rm, rv) = (ts.tensor(&self.running_mean)?, ts.tensor(&self.running_var)?);
        let stem = ts.stem("batchnorm", &[&self.log_gamma, &self.beta, &self.running_mean, &self.running_var]);
        let eps = ts_float(self.eps)?;
        let logdet = |t: &str, neg: &str| {
            format!(
                "{}\nper = {lg} - torch.log({rv} + {eps}) * 0.5\nld = torch.sum(per, dtype={t}.dtype) * float(hw)\nld = {neg}ld.expand([{t}.size(0)])\n",
                ts_spatial_size("hw", t)
            )
        };
        let f = format!(
            "assert x.dim() >= 2 and x.size(1) == {c}, \"BatchNormFlow: expected input with {c} channels (dim 1), got \" + str(x.size())\n\
             out = (x - {rm}) * torch.rsqrt({rv} + {eps}) * torch.exp({lg}) + {beta}\n{}return out, ld",
            logdet("x", ""),
            c = self.channels
        );
        let i = format!(
            "assert y.dim() >= 2 and y.size(1) == {c}, \"BatchNormFlow: expected input with {c} channels (dim 1), got \" + str(y.size())\n\
             out = (y - {beta}) * torch.exp(-{lg}) * torch.sqrt({rv} + {eps}) + {rm}\n{}return out, ld",
            logdet("y", "-"),
            c = self.channels
        );
        ts.define_flow(&stem, &f, &i)
    }

    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        check_channels("BatchNormFlow", x, self.channels)?;
        let (mean, var) = if ctx.train && x.size()[0] > 1 {
            let dims: Vec<i64> = (0..x.dim() as i64).filter(|&d| d != 1).collect();
            let mean = x.f_mean_dim(Some(&dims[..]), true, None)?;
            let var = x.f_sub(&mean)?.f_square()?.f_mean_dim(Some(&dims[..]), true, None)?;
            let _g = tch::no_grad_guard();
            let m = self.momentum;
            let mut rm = self.running_mean.shallow_clone();
            rm.f_mul_scalar_(1.0 - m)?;
            rm.f_add_(&mean.f_detach()?.f_to_kind(rm.kind())?.f_mul_scalar(m)?)?;
            let mut rv = self.running_var.shallow_clone();
            rv.f_mul_scalar_(1.0 - m)?;
            rv.f_add_(&var.f_detach()?.f_to_kind(rv.kind())?.f_mul_scalar(m)?)?;
            (mean, var)
        } else {
            (self.running_mean.shallow_clone(), self.running_var.shallow_clone())
        };
        let y = x
            .f_sub(&mean)?
            .f_mul(&var.f_add_scalar(self.eps)?.f_rsqrt()?)?
            .f_mul(&self.log_gamma.f_exp()?)?
            .f_add(&self.beta)?;
        Ok((y, self.logdet(&var, x)?))
    }

    fn inverse(&self, y: &Tensor, _ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        check_channels("BatchNormFlow", y, self.channels)?;
        let var = &self.running_var;
        let x = y
            .f_sub(&self.beta)?
            .f_mul(&self.log_gamma.f_neg()?.f_exp()?)?
            .f_mul(&var.f_add_scalar(self.eps)?.f_sqrt()?)?
            .f_add(&self.running_mean)?;
        Ok((x, self.logdet(var, y)?.f_neg()?))
    }
}
