//! Base distributions. A model is `transform + base` (zuko's `Flow(transform, base)`): its
//! log-density is `base.log_prob(transform(x)) + log|det transform'(x)|`.
//!
//! Every base here is a Gaussian, written as a bijection onto standard-normal noise
//! (`to_noise`, `from_noise`), which gives log-densities, reparameterised samples and
//! temperature sampling (`from_noise(T·ε)`) from one description, and lets the TorchScript
//! export call a base like any layer.
use super::Ctx;
use crate::script::{ts_zero_logdet, Layer, ScriptBuilder, ScriptFlow};
use anyhow::{bail, Result};
use tch::{nn, Kind, Tensor};

/// A base distribution over flat latents `[B, D]`.
pub trait Base: Send {
    /// `z -> (ε, log|det dε/dz|)` with `ε ~ N(0, I)` under the base.
    fn to_noise(&self, z: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)>;
    /// `ε -> (z, log|det dz/dε|)`.
    fn from_noise(&self, eps: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)>;

    /// `log p(z)` per sample, nats.
    fn log_prob(&self, z: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (eps, ld) = self.to_noise(z, ctx)?;
        Ok(standard_normal_log_prob(&eps)?.f_add(&ld)?)
    }

    /// `n` reparameterised draws of dimension `dim` (gradients reach the base's parameters) at
    /// `temperature`, from libtorch's generator, with their log-density under the base.
    fn rsample(&self, n: i64, dim: i64, temperature: f64, ctx: &Ctx, like: (Kind, tch::Device)) -> Result<(Tensor, Tensor)> {
        let eps = Tensor::f_randn([n, dim], like)?.f_mul_scalar(temperature)?;
        let (z, ld) = self.from_noise(&eps, ctx)?;
        Ok((z.shallow_clone(), standard_normal_log_prob(&eps)?.f_sub(&ld)?))
    }

    /// TorchScript of `to_noise` (as forward) and `from_noise` (as inverse).
    fn to_torchscript(&self, ts: &mut ScriptBuilder) -> Result<ScriptFlow>;
}

/// `Σ log N(z; 0, 1)` over all but the batch dimension.
pub fn standard_normal_log_prob(z: &Tensor) -> Result<Tensor> {
    let b = z.size()[0];
    let d = (z.numel() as i64 / b.max(1)) as f64;
    let sq = z.f_reshape([b, -1])?.f_square()?.f_sum_dim_intlist(Some(&[1i64][..]), false, None)?;
    Ok(sq.f_mul_scalar(-0.5)?.f_sub_scalar(0.5 * d * (2.0 * std::f64::consts::PI).ln())?)
}

/// `N(0, I)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct StandardNormal;

impl Base for StandardNormal {
    fn to_noise(&self, z: &Tensor, _ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        Ok((z.shallow_clone(), super::zero_logdet(z)?))
    }
    fn from_noise(&self, eps: &Tensor, _ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        Ok((eps.shallow_clone(), super::zero_logdet(eps)?))
    }
    fn to_torchscript(&self, ts: &mut ScriptBuilder) -> Result<ScriptFlow> {
        let layer = Layer::new("StandardNormal").flow_methods(&format!("return x, {}", ts_zero_logdet("x")), &format!("return y, {}", ts_zero_logdet("y")));
        ts.add(layer)
    }
}

/// `N(loc, diag(exp(log_std))²)` with learned `loc`, `log_std` of shape `[D]` (names `loc`,
/// `log_std` under its path), both zero at the start (a standard normal).
pub struct DiagGaussian {
    pub loc: Tensor,
    pub log_std: Tensor,
}

impl DiagGaussian {
    pub fn new(p: nn::Path, dim: i64) -> Self {
        DiagGaussian { loc: p.zeros("loc", &[dim]), log_std: p.zeros("log_std", &[dim]) }
    }

    fn check(&self, z: &Tensor) -> Result<()> {
        let d = self.loc.size()[0];
        if z.dim() != 2 || z.size()[1] != d {
            bail!("DiagGaussian base: expected latents [B, {d}], got {:?}", z.size());
        }
        Ok(())
    }
}

impl DiagGaussian {
    /// `(shift, log_scale)` of the map onto noise, `ε = z · exp(log_scale) + shift`.
    fn affine(&self) -> Result<(Tensor, Tensor)> {
        Ok((self.loc.f_mul(&self.log_std.f_neg()?.f_exp()?)?.f_neg()?, self.log_std.f_neg()?))
    }
}

impl Base for DiagGaussian {
    fn to_noise(&self, z: &Tensor, _ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        self.check(z)?;
        let (shift, ls) = self.affine()?;
        super::elementwise::affine_forward(z, &shift, &ls)
    }
    fn from_noise(&self, eps: &Tensor, _ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        self.check(eps)?;
        let (shift, ls) = self.affine()?;
        super::elementwise::affine_inverse(eps, &shift, &ls)
    }
    fn to_torchscript(&self, ts: &mut ScriptBuilder) -> Result<ScriptFlow> {
        let check = |t: &str| format!("assert {t}.dim() == 2 and {t}.size(1) == $dim, \"DiagGaussian base: expected latents [B, \" + str($dim) + \"], got \" + str({t}.size())\n");
        let (f, i) = super::elementwise::script_affine(check, "shift = -($loc * torch.exp(-$log_std))\nls = -$log_std\n");
        let layer = Layer::new("DiagGaussian").tensor(ts, "loc", &self.loc)?.tensor(ts, "log_std", &self.log_std)?.int("dim", self.loc.size()[0]);
        ts.add(layer.flow_methods(&f, &i))
    }
}

impl<B: Base + ?Sized> Base for Box<B> {
    fn to_noise(&self, z: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        (**self).to_noise(z, ctx)
    }
    fn from_noise(&self, eps: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        (**self).from_noise(eps, ctx)
    }
    fn to_torchscript(&self, ts: &mut ScriptBuilder) -> Result<ScriptFlow> {
        (**self).to_torchscript(ts)
    }
}
