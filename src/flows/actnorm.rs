//! ActNorm (Glow): a per-channel affine map whose parameters are set from the first batch so
//! that its output has zero mean and unit variance per channel.
use super::{channel_shape, check_channels, spatial_size, Ctx, Flow};
use anyhow::Result;
use tch::{nn, Kind, Tensor};

/// How the scale is stored: `Log` (`y = (x + bias)·exp(logs)`, OpenAI / y0ast) or `Linear`
/// (`y = scale·(x + loc)`, rosinality). The log-det is the same quantity either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActNormParam {
    Log,
    Linear,
}

pub struct ActNorm {
    pub channels: i64,
    pub param: ActNormParam,
    /// Target std after initialisation (Glow's `actnorm_scale`).
    pub init_scale: f64,
    /// `bias` (Log) or `loc` (Linear), shape `[1, C, 1, 1]` or `[1, C]`.
    pub shift: Tensor,
    /// `logs` (Log) or `scale` (Linear).
    pub scale: Tensor,
    /// 0 until the data-dependent initialisation ran; saved with the weights.
    pub initialized: Tensor,
}

impl ActNorm {
    /// `ndim` is the rank of the inputs (4 for images, 2 for vectors).
    pub fn new(p: nn::Path, channels: i64, ndim: usize, param: ActNormParam) -> Self {
        let shape = channel_shape(channels, ndim);
        let (shift, scale) = match param {
            ActNormParam::Log => (p.zeros("bias", &shape), p.zeros("logs", &shape)),
            ActNormParam::Linear => (p.zeros("loc", &shape), p.ones("scale", &shape)),
        };
        let initialized = p.zeros_no_train("initialized", &[]);
        ActNorm { channels, param, init_scale: 1.0, shift, scale, initialized }
    }

    pub fn is_initialized(&self) -> bool {
        self.initialized.double_value(&[]) != 0.0
    }

    fn log_scale(&self) -> Result<Tensor> {
        Ok(match self.param {
            ActNormParam::Log => self.scale.shallow_clone(),
            ActNormParam::Linear => self.scale.f_abs()?.f_log()?,
        })
    }

    fn mul_scale(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.param {
            ActNormParam::Log => x.f_mul(&self.scale.f_exp()?)?,
            ActNormParam::Linear => x.f_mul(&self.scale)?,
        })
    }

    fn div_scale(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.param {
            ActNormParam::Log => x.f_mul(&self.scale.f_neg()?.f_exp()?)?,
            ActNormParam::Linear => x.f_div(&self.scale)?,
        })
    }

    /// Sets shift and scale from `x` so the output has zero mean and `init_scale` std per channel.
    pub fn initialize_from(&self, x: &Tensor) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let dims: Vec<i64> = (0..x.dim() as i64).filter(|&d| d != 1).collect();
        let x = x.f_to_kind(self.shift.kind())?;
        let mean = x.f_mean_dim(Some(&dims[..]), true, None)?;
        let centered = x.f_sub(&mean)?;
        match self.param {
            ActNormParam::Log => {
                let var = centered.f_square()?.f_mean_dim(Some(&dims[..]), true, None)?;
                let logs = (var.f_sqrt()? + 1e-6).f_reciprocal()?.f_mul_scalar(self.init_scale)?.f_log()?;
                self.shift.shallow_clone().f_copy_(&mean.f_neg()?.f_reshape(self.shift.size())?)?;
                self.scale.shallow_clone().f_copy_(&logs.f_reshape(self.scale.size())?)?;
            }
            ActNormParam::Linear => {
                let std = x.f_std_dim(Some(&dims[..]), true, true)?;
                let scale = (std + 1e-6).f_reciprocal()?.f_mul_scalar(self.init_scale)?;
                self.shift.shallow_clone().f_copy_(&mean.f_neg()?.f_reshape(self.shift.size())?)?;
                self.scale.shallow_clone().f_copy_(&scale.f_reshape(self.scale.size())?)?;
            }
        }
        let _ = self.initialized.shallow_clone().f_fill_(1.0)?;
        Ok(())
    }

    fn logdet(&self, x: &Tensor) -> Result<Tensor> {
        let per = self.log_scale()?.f_sum(Kind::Double)?.f_to_kind(x.kind())?;
        let ld = per.f_mul_scalar(spatial_size(x) as f64)?;
        Ok(ld.f_expand([x.size()[0]], false)?)
    }
}

impl Flow for ActNorm {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        check_channels("ActNorm", x, self.channels)?;
        if ctx.data_init && !self.is_initialized() {
            self.initialize_from(x)?;
        }
        let y = self.mul_scale(&x.f_add(&self.shift)?)?;
        Ok((y, self.logdet(x)?))
    }

    fn inverse(&self, y: &Tensor, _ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        check_channels("ActNorm", y, self.channels)?;
        let x = self.div_scale(y)?.f_sub(&self.shift)?;
        Ok((x, self.logdet(y)?.f_neg()?))
    }

    fn to_torchscript(&self, ts: &mut crate::script::ScriptBuilder) -> Result<crate::script::ScriptFlow> {
        self.script(ts)
    }
}

impl ActNorm {
    /// TorchScript of [`Flow::forward`] / [`Flow::inverse`] (eval mode: no data initialisation;
    /// an exported model is trained, so its ActNorms are initialised).
    pub(crate) fn script(&self, ts: &mut crate::script::ScriptBuilder) -> Result<crate::script::ScriptFlow> {
        use crate::script::ts_spatial_size;
        // log|scale| summed in float64, then cast, as `logdet` does.
        let (kind, log_scale, mul, div) = match self.param {
            ActNormParam::Log => ("ActNorm", "scale", "(t + shift) * torch.exp(scale)", "t * torch.exp(-scale) - shift"),
            ActNormParam::Linear => ("ActNormLinear", "torch.log(torch.abs(scale))", "(t + shift) * scale", "t / scale - shift"),
        };
        let body = |input: &str, out: &str, neg: &str| {
            format!(
                "t = {input}\nshift = $shift\nscale = $scale\nout = {out}\n{}\nld = torch.sum({log_scale}, dtype=7).to(t.dtype) * float(hw)\nreturn out, {neg}ld.expand([t.size(0)])",
                ts_spatial_size("hw", "t")
            )
        };
        let layer = crate::script::Layer::new(kind).tensor(ts, "shift", &self.shift)?.tensor(ts, "scale", &self.scale)?;
        ts.add(layer.flow_methods(&body("x", mul, ""), &body("y", div, "-")))
    }
}
