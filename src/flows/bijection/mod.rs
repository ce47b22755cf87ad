//! Elementwise bijections: a monotone map of each transformed feature given its raw
//! parameters, the part of a coupling (or an autoregressive layer) that says *how* a feature
//! changes. The conditioner that produces the parameters and the structure that says which
//! features are transformed are separate parts (see [`super::coupling`]).
use crate::script::{Layer, ScriptBuilder, ScriptFlow};
use anyhow::Result;
use tch::Tensor;

pub mod affine;
pub mod spline;
mod spline_script;

pub use affine::{Additive, Affine, ParamLayout, ScaleFn};
pub use spline::RationalQuadraticSpline;

/// `y = f(x; θ)` per feature, strictly increasing in `x`.
///
/// The raw parameters `h` have the layout of `x` with `params_per_feature()` times as many
/// channels (dim 1): `[B, P·C, ...]` for `x` of `[B, C, ...]`. How the `P` values of a feature
/// are arranged in those channels is the bijection's own business (Glow interleaves shift and
/// scale; rosinality puts them in contiguous halves; splines group them per feature).
pub trait ElementwiseBijection: Send {
    /// Raw parameters the conditioner must produce per transformed feature.
    fn params_per_feature(&self) -> i64;

    /// `(f(x), log f'(x))`, the log-derivative elementwise like `x`, or `None` when it is zero
    /// everywhere (volume preserving).
    fn forward(&self, x: &Tensor, h: &Tensor) -> Result<(Tensor, Option<Tensor>)>;

    /// `(f⁻¹(y), log f'(f⁻¹(y)))`: the *forward* log-derivative at the recovered input, so a
    /// caller negates it for the inverse log-det.
    fn inverse(&self, y: &Tensor, h: &Tensor) -> Result<(Tensor, Option<Tensor>)>;

    /// Describes `forward(self, t: Tensor, h: Tensor) -> Tuple[Tensor, Optional[Tensor]]` and
    /// `inverse(...)` (same signature) computing what [`forward`](Self::forward) and
    /// [`inverse`](Self::inverse) compute, op for op (see [`crate::script`]).
    fn to_torchscript(&self, ts: &mut ScriptBuilder) -> Result<ScriptFlow>;

    /// Whether `log f'` is identically zero (the log-det is then not computed at all).
    fn volume_preserving(&self) -> bool {
        false
    }

    /// Name in messages.
    fn name(&self) -> String;
}

/// Checks that `h` holds `p` parameters per feature of `x` (dim 1, same other dims).
pub(crate) fn check_params(name: &str, x: &Tensor, h: &Tensor, p: i64) -> Result<()> {
    let (xs, hs) = (x.size(), h.size());
    let ok = xs.len() == hs.len() && xs.len() >= 2 && hs[1] == p * xs[1] && xs[0] == hs[0] && xs[2..] == hs[2..];
    if !ok {
        anyhow::bail!("{name}: expected parameters of shape {:?} ({p} per feature) for input {xs:?}, got {hs:?}", {
            let mut s = xs.clone();
            if s.len() >= 2 {
                s[1] *= p;
            }
            s
        });
    }
    Ok(())
}

/// The two methods of an elementwise bijection from their bodies (which read `t` and `h`).
pub(crate) fn script_methods(kind: &str, forward_body: &str, inverse_body: &str) -> Layer {
    let (p, r) = ("t: Tensor, h: Tensor", "Tuple[Tensor, Optional[Tensor]]");
    Layer::new(kind).method("forward", p, r, forward_body).method("inverse", p, r, inverse_body)
}
