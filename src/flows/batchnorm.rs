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
        use crate::script::{ts_check_channels, ts_spatial_size, Layer};
        let logdet = |t: &str, neg: &str| {
            format!(
                "{}\nper = $log_gamma - torch.log($running_var + $eps) * 0.5\nld = torch.sum(per, dtype={t}.dtype) * float(hw)\nld = {neg}ld.expand([{t}.size(0)])\n",
                ts_spatial_size("hw", t)
            )
        };
        let f = format!(
            "{}out = (x - $running_mean) * torch.rsqrt($running_var + $eps) * torch.exp($log_gamma) + $beta\n{}return out, ld",
            ts_check_channels("BatchNormFlow", "x"),
            logdet("x", "")
        );
        let i = format!(
            "{}out = (y - $beta) * torch.exp(-$log_gamma) * torch.sqrt($running_var + $eps) + $running_mean\n{}return out, ld",
            ts_check_channels("BatchNormFlow", "y"),
            logdet("y", "-")
        );
        let layer = Layer::new("BatchNormFlow")
            .tensor(ts, "log_gamma", &self.log_gamma)?
            .tensor(ts, "beta", &self.beta)?
            .tensor(ts, "running_mean", &self.running_mean)?
            .tensor(ts, "running_var", &self.running_var)?
            .int("channels", self.channels)
            .float("eps", self.eps);
        ts.add(layer.flow_methods(&f, &i))
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
            let _ = rm.f_mul_scalar_(1.0 - m)?;
            let _ = rm.f_add_(&mean.f_detach()?.f_to_kind(rm.kind())?.f_mul_scalar(m)?)?;
            let mut rv = self.running_var.shallow_clone();
            let _ = rv.f_mul_scalar_(1.0 - m)?;
            let _ = rv.f_add_(&var.f_detach()?.f_to_kind(rv.kind())?.f_mul_scalar(m)?)?;
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
