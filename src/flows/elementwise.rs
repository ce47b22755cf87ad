//! Elementwise affine maps `y = x · exp(log_scale) + shift`, per feature:
//! - [`ElementwiseAffine::standardize`]: fixed (buffers) from training-set statistics, the first
//!   layer of a tabular model, so every likelihood is in the data's own units;
//! - [`ElementwiseAffine::scaling`]: NICE's learned diagonal scaling (log-scale only).
//!
//! (A learned diagonal Gaussian base is a [`super::DiagGaussian`], not a layer.)
use super::{check_channels, sum_per_sample, Ctx, Flow};
use anyhow::Result;
use tch::{nn, Tensor};

/// The stored parameters; the affine map is derived from them on every call, so loading
/// weights or training them is always reflected.
pub enum ElementwiseAffine {
    Standardize { mean: Tensor, std: Tensor },
    Scaling { log_scale: Tensor },
}

impl ElementwiseAffine {
    /// `y = (x - mean) / std`; `mean`, `std` are `[D]` and saved as buffers `mean`, `std`.
    pub fn standardize(p: nn::Path, mean: &Tensor, std: &Tensor) -> Self {
        let dev = p.device();
        let mean = p.add("mean", mean.to_kind(tch::Kind::Float).to_device(dev), false);
        let std = p.add("std", std.to_kind(tch::Kind::Float).to_device(dev), false);
        ElementwiseAffine::Standardize { mean, std }
    }

    pub fn scaling(p: nn::Path, dim: i64) -> Self {
        ElementwiseAffine::Scaling { log_scale: p.zeros("log_scale", &[dim]) }
    }

    /// `(shift, log_scale)` of `y = x · exp(log_scale) + shift`.
    pub fn affine(&self) -> Result<(Tensor, Tensor)> {
        Ok(match self {
            ElementwiseAffine::Standardize { mean, std } => (mean.f_div(std)?.f_neg()?, std.f_log()?.f_neg()?),
            ElementwiseAffine::Scaling { log_scale } => (log_scale.f_zeros_like()?, log_scale.shallow_clone()),
        })
    }

    fn dims(&self) -> i64 {
        match self {
            ElementwiseAffine::Standardize { mean, .. } => mean.size()[0],
            ElementwiseAffine::Scaling { log_scale } => log_scale.size()[0],
        }
    }
}

impl Flow for ElementwiseAffine {
    fn to_torchscript(&self, ts: &mut crate::script::ScriptBuilder) -> Result<crate::script::ScriptFlow> {
        use crate::script::{ts_check_channels, Layer};
        // `affine()`: (shift, log_scale), op for op.
        let (layer, affine) = match self {
            ElementwiseAffine::Standardize { mean, std } => (
                Layer::new("Standardize").tensor(ts, "mean", mean)?.tensor(ts, "std", std)?,
                "shift = -($mean / $std)\nls = -torch.log($std)\n",
            ),
            ElementwiseAffine::Scaling { log_scale } => {
                (Layer::new("Scaling").tensor(ts, "log_scale", log_scale)?, "ls = $log_scale\nshift = torch.zeros_like(ls)\n")
            }
        };
        let (f, i) = script_affine(|t| ts_check_channels("ElementwiseAffine", t), affine);
        ts.add(layer.int("channels", self.dims()).flow_methods(&f, &i))
    }

    fn forward(&self, x: &Tensor, _ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        check_channels("ElementwiseAffine", x, self.dims())?;
        let (shift, log_scale) = self.affine()?;
        affine_forward(x, &shift, &log_scale)
    }
    fn inverse(&self, y: &Tensor, _ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        check_channels("ElementwiseAffine", y, self.dims())?;
        let (shift, log_scale) = self.affine()?;
        affine_inverse(y, &shift, &log_scale)
    }
}

/// `y = x · exp(log_scale) + shift` per feature (`[D]` parameters on dim 1) with its log-det:
/// shared by the elementwise layers and the diagonal Gaussian base.
pub(crate) fn affine_forward(x: &Tensor, shift: &Tensor, log_scale: &Tensor) -> Result<(Tensor, Tensor)> {
    let y = x.f_mul(&log_scale.f_exp()?)?.f_add(shift)?;
    let ld = sum_per_sample(&log_scale.f_unsqueeze(0)?.f_expand_as(x)?)?;
    Ok((y, ld))
}

/// The inverse of [`affine_forward`], with the inverse log-det.
pub(crate) fn affine_inverse(y: &Tensor, shift: &Tensor, log_scale: &Tensor) -> Result<(Tensor, Tensor)> {
    let x = y.f_sub(shift)?.f_mul(&log_scale.f_neg()?.f_exp()?)?;
    let ld = sum_per_sample(&log_scale.f_unsqueeze(0)?.f_expand_as(y)?)?;
    Ok((x, ld.f_neg()?))
}

/// TorchScript of [`affine_forward`] and [`affine_inverse`]: `check(t)` asserts the input's
/// shape, `affine` sets `shift` and `ls`.
pub(crate) fn script_affine(check: impl Fn(&str) -> String, affine: &str) -> (String, String) {
    use crate::script::ts_sum_per_sample;
    let f = format!("{}{affine}out = x * torch.exp(ls) + shift\nreturn out, {}", check("x"), ts_sum_per_sample("ls.unsqueeze(0).expand_as(x)"));
    let i = format!("{}{affine}out = (y - shift) * torch.exp(-ls)\nreturn out, -{}", check("y"), ts_sum_per_sample("ls.unsqueeze(0).expand_as(y)"));
    (f, i)
}
