//! Invertible 1×1 convolution (Glow): a learned `C×C` matrix applied to every pixel's
//! channel vector, plain (log-det by slogdet) or LU-decomposed (log-det is `Σ log|s|`).
use super::{check_channels, spatial_size, Ctx, Flow};
use anyhow::Result;
use std::sync::Mutex;
use tch::{nn, Kind, Tensor};

/// `W·x` for every position: a 1×1 conv for images, a matmul for vectors.
pub(crate) fn apply_matrix(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let c = w.size()[0];
    if x.dim() == 4 {
        let s = x.size();
        let w4 = w.f_reshape([c, c, 1, 1])?;
        if super::fastconv::applies(x) && s[2] * s[3] <= super::fastconv::GEMM_1X1_HW && x.kind() == w.kind() {
            // Small CPU images: one GEMM over the pixels (see `fastconv`), not a oneDNN call.
            return super::fastconv::conv2d_same(x, &w4, None);
        }
        Ok(x.f_conv2d(&w4, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1)?)
    } else {
        Ok(x.f_matmul(&w.f_tr()?)?)
    }
}

/// A random rotation, the usual initialisation (log-det starts at 0).
fn random_orthogonal(c: i64) -> Tensor {
    let a = Tensor::randn([c, c], (Kind::Double, tch::Device::Cpu));
    let (q, _r) = Tensor::linalg_qr(&a, "reduced");
    q.to_kind(Kind::Float)
}

pub struct InvConv1x1 {
    pub channels: i64,
    pub weight: Tensor,
    inv_cache: Derived,
}

impl InvConv1x1 {
    pub fn new(p: nn::Path, channels: i64) -> Self {
        let w = random_orthogonal(channels).to_device(p.device());
        InvConv1x1 { channels, weight: p.var_copy("weight", &w), inv_cache: Derived::default() }
    }

    fn logdet(&self, x: &Tensor) -> Result<Tensor> {
        let (_sign, logabs) = Tensor::f_linalg_slogdet(&self.weight)?;
        let ld = logabs.f_mul_scalar(spatial_size(x) as f64)?.f_to_kind(x.kind())?;
        Ok(ld.f_expand([x.size()[0]], false)?)
    }
}

impl Flow for InvConv1x1 {
    fn forward(&self, x: &Tensor, _ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        check_channels("InvConv1x1", x, self.channels)?;
        Ok((apply_matrix(x, &self.weight)?, self.logdet(x)?))
    }
    fn inverse(&self, y: &Tensor, _ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        check_channels("InvConv1x1", y, self.channels)?;
        let w_inv = self.inv_cache.get_or(&[&self.weight], || Ok(Tensor::f_linalg_inv(&self.weight)?))?;
        Ok((apply_matrix(y, &w_inv)?, self.logdet(y)?.f_neg()?))
    }

    fn to_torchscript(&self, ts: &mut crate::script::ScriptBuilder) -> Result<crate::script::ScriptFlow> {
        // log|det W| by slogdet, times H·W, then cast (as `logdet`).
        let body = |input: &str, matrix: &str, neg: &str| {
            format!(
                "t = {input}\nw = $weight\n{}\nld = (torch.linalg_slogdet(w)[1] * float(hw)).to(t.dtype)\nreturn {}, {neg}ld.expand([t.size(0)])",
                crate::script::ts_spatial_size("hw", "t"),
                ts_apply_matrix("t", matrix)
            )
        };
        let layer = crate::script::Layer::new("InvConv1x1").tensor(ts, "weight", &self.weight)?;
        ts.add(layer.flow_methods(&body("x", "w", ""), &body("y", "torch.linalg_inv(w)", "-")))
    }
}

/// TorchScript of [`apply_matrix`]: a 1×1 conv for images, a matmul for vectors.
fn ts_apply_matrix(x: &str, w: &str) -> String {
    format!(
        "torch.conv2d({x}, ({w}).reshape([({w}).size(0), ({w}).size(0), 1, 1]), None, [1, 1], [0, 0], [1, 1], 1) if {x}.dim() == 4 else torch.matmul({x}, ({w}).t())"
    )
}

/// A matrix derived from parameters (the assembled LU weight, an inverse), remembered between
/// calls without gradient tracking (evaluation, sampling), so it is computed once per set of
/// weights instead of once per call and layer. It is reused only while every source tensor has
/// the same storage, shape, dtype and version counter: any in-place change (an optimizer step,
/// loading or copying weights) bumps the version and forces a recomputation. With gradients on
/// (training) it is always recomputed, as part of the graph. Behind a `Mutex`, so the layer is
/// `Send` (and a shared model may be read from several threads).
#[derive(Default)]
struct Derived(Mutex<Option<(Vec<SourceKey>, Tensor)>>);

type SourceKey = (usize, i64, Vec<i64>, Kind, tch::Device);

impl Derived {
    fn get_or(&self, sources: &[&Tensor], compute: impl FnOnce() -> Result<Tensor>) -> Result<Tensor> {
        if grad_tracked(sources) {
            return compute();
        }
        let key: Option<Vec<SourceKey>> = sources
            .iter()
            .map(|t| t.f_internal_version().ok().map(|v| (t.data_ptr() as usize, v, t.size(), t.kind(), t.device())))
            .collect();
        let Some(key) = key else { return compute() };
        let mut cached = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((k, t)) = &*cached {
            if *k == key {
                return Ok(t.shallow_clone());
            }
        }
        let t = compute()?;
        *cached = Some((key, t.shallow_clone()));
        Ok(t)
    }
}

/// Whether an op on `sources` would be recorded for autograd now (grad mode on and a source
/// requires grad).
fn grad_tracked(sources: &[&Tensor]) -> bool {
    crate::ffi::switches::grad_mode_enabled() && sources.iter().any(|t| t.requires_grad())
}

/// `W = P · (L ⊙ strictly_lower + I) · (U ⊙ strictly_upper + diag(sign_s · exp(log_s)))`.
/// P and sign(s) are fixed buffers; L, U and log|s| are learned. The masks are applied on every
/// use, so entries of the stored `lower`/`upper` outside them (as in imported weights) are inert.
pub struct InvConv1x1Lu {
    pub channels: i64,
    pub p: Tensor,
    pub sign_s: Tensor,
    pub lower: Tensor,
    pub upper: Tensor,
    pub log_s: Tensor,
    l_mask: Tensor,
    eye: Tensor,
    w_cache: Derived,
    inv_cache: Derived,
}

impl InvConv1x1Lu {
    pub fn new(p: nn::Path, channels: i64) -> Self {
        let w = random_orthogonal(channels).to_kind(Kind::Double);
        let (perm, lower, upper) = Tensor::linalg_lu(&w, true);
        let s = upper.diag(0);
        let dev = p.device();
        let f = |t: Tensor| t.to_kind(Kind::Float).to_device(dev);
        let perm_t = p.add("p", f(perm), false);
        let sign_s = p.add("sign_s", f(s.sign()), false);
        let lower = p.var_copy("lower", &f(lower));
        let upper = p.var_copy("upper", &f(upper.triu(1)));
        let log_s = p.var_copy("log_s", &f(s.abs().log()));
        let l_mask = Tensor::ones([channels, channels], (Kind::Float, dev)).tril(-1);
        let eye = Tensor::eye(channels, (Kind::Float, dev));
        InvConv1x1Lu { channels, p: perm_t, sign_s, lower, upper, log_s, l_mask, eye, w_cache: Derived::default(), inv_cache: Derived::default() }
    }

    /// The assembled `C×C` matrix.
    pub fn weight(&self) -> Result<Tensor> {
        let k = self.lower.kind();
        let l_mask = self.l_mask.f_to_kind(k)?;
        let eye = self.eye.f_to_kind(k)?;
        let l = self.lower.f_mul(&l_mask)?.f_add(&eye)?;
        let u = self
            .upper
            .f_mul(&l_mask.f_tr()?)?
            .f_add(&self.sign_s.f_mul(&self.log_s.f_exp()?)?.f_diag_embed(0, -2, -1)?)?;
        Ok(self.p.f_matmul(&l)?.f_matmul(&u)?)
    }

    /// The tensors `weight()` is computed from.
    fn sources(&self) -> [&Tensor; 5] {
        [&self.p, &self.sign_s, &self.lower, &self.upper, &self.log_s]
    }

    fn logdet(&self, x: &Tensor) -> Result<Tensor> {
        let ld = self.log_s.f_sum(x.kind())?.f_mul_scalar(spatial_size(x) as f64)?;
        Ok(ld.f_expand([x.size()[0]], false)?)
    }
}

impl Flow for InvConv1x1Lu {
    fn forward(&self, x: &Tensor, _ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        check_channels("InvConv1x1Lu", x, self.channels)?;
        let w = self.w_cache.get_or(&self.sources(), || self.weight())?;
        Ok((apply_matrix(x, &w)?, self.logdet(x)?))
    }
    fn inverse(&self, y: &Tensor, _ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        check_channels("InvConv1x1Lu", y, self.channels)?;
        let w_inv = self.inv_cache.get_or(&self.sources(), || Ok(Tensor::f_linalg_inv(&self.weight()?)?))?;
        Ok((apply_matrix(y, &w_inv)?, self.logdet(y)?.f_neg()?))
    }

    fn to_torchscript(&self, ts: &mut crate::script::ScriptBuilder) -> Result<crate::script::ScriptFlow> {
        // `weight()`: the masks are rebuilt in the parameters' dtype (exact 0/1 values).
        let weight = "lower = $lower\nc = lower.size(0)\n\
             l_mask = torch.ones([c, c], dtype=lower.dtype, device=lower.device).tril(-1)\n\
             eye = torch.eye(c, dtype=lower.dtype, device=lower.device)\n\
             l = lower * l_mask + eye\n\
             u = $upper * l_mask.t() + torch.diag_embed($sign_s * torch.exp($log_s), 0, -2, -1)\n\
             return torch.matmul(torch.matmul($p, l), u)";
        let body = |input: &str, matrix: &str, neg: &str| {
            format!(
                "t = {input}\nw = $self.weight()\n{}\nld = torch.sum($log_s, dtype=t.dtype) * float(hw)\nreturn {}, {neg}ld.expand([t.size(0)])",
                crate::script::ts_spatial_size("hw", "t"),
                ts_apply_matrix("t", matrix)
            )
        };
        let layer = crate::script::Layer::new("InvConv1x1Lu")
            .tensor(ts, "p", &self.p)?
            .tensor(ts, "sign_s", &self.sign_s)?
            .tensor(ts, "lower", &self.lower)?
            .tensor(ts, "upper", &self.upper)?
            .tensor(ts, "log_s", &self.log_s)?
            .method("weight", "", "Tensor", weight);
        ts.add(layer.flow_methods(&body("x", "w", ""), &body("y", "torch.linalg_inv(w)", "-")))
    }
}
