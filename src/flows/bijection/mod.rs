//! Elementwise bijections: a monotone map of each transformed feature given its raw
//! parameters, the part of a coupling (or an autoregressive layer) that says *how* a feature
//! changes. The conditioner that produces the parameters and the structure that says which
//! features are transformed are separate parts (see [`super::coupling`]).
use crate::script::ScriptBuilder;
use anyhow::Result;
use tch::Tensor;

pub mod affine;
pub mod spline;

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

    /// TorchScript statements computing what `forward` (or `inverse`) computes, op for op:
    /// they read the input `t` and the parameters `h` and set `out` and, unless
    /// [`volume_preserving`](Self::volume_preserving), the elementwise `ld`. `ts` is there for
    /// bijections that need helper methods.
    fn script(&self, ts: &mut ScriptBuilder, inverse: bool) -> Result<String>;

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
