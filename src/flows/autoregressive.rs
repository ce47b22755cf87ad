//! Autoregressive layers (MAF, NSF-AR; IAF is [`crate::flows::Inverse`] of one): a [`Made`]
//! (its ordering is the layer's structure, its network the conditioner) times any
//! [`ElementwiseBijection`]: `y_i = f(x_i; θ_i(x_<i))`.
//!
//! - `forward` (the density direction of a MAF) is one pass: every `θ_i` from `x` at once.
//! - `inverse` needs `x_<i` before `x_i`. [`InverseMethod::Sequential`] makes `D` passes, the
//!   `k`-th computing only what the `k`-th feature's parameters read (the hidden units of degree
//!   at most `k`, a prefix of each layer, and that feature's block of output rows) and
//!   inverting that feature. [`InverseMethod::Jacobi`] iterates the fixed point
//!   `x ← f⁻¹(y; θ(x))` from `x = 0` on all features at once, and stops when no feature moves by
//!   more than `tol`, or after `D` iterations: after `t` iterations the first `t` features in
//!   the ordering are exact, so `D` iterations always give the sequential result. Each
//!   iteration reads one number back to the host (the largest update).
//!
//! Every network pass (and every step of the sequential loop) counts one `"made_passes"` in
//! `ctx.sink`.
use super::bijection::ElementwiseBijection;
use super::conditioner::Made;
use super::{sum_per_sample, zero_logdet, Ctx, Flow};
use crate::script::{ts_sum_per_sample, ts_zero_logdet, Layer, ScriptBuilder, ScriptFlow};
use anyhow::{bail, Result};
use tch::Tensor;

/// How [`Autoregressive::inverse`] solves for `x`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum InverseMethod {
    /// `D` passes, one feature each.
    Sequential,
    /// Fixed-point iteration over all features, until the largest update is at most `tol`
    /// (at most `D` iterations).
    Jacobi { tol: f64 },
}

impl InverseMethod {
    /// Jacobi with a tolerance of 1e-6 (absolute, in the layer's input units).
    pub fn jacobi() -> Self {
        InverseMethod::Jacobi { tol: 1e-6 }
    }
}

pub struct Autoregressive {
    pub made: Made,
    pub transform: Box<dyn ElementwiseBijection>,
    pub inverse_method: InverseMethod,
}

impl Autoregressive {
    /// Fails when the MADE does not produce the bijection's parameter count per feature.
    pub fn new(made: Made, transform: Box<dyn ElementwiseBijection>, inverse_method: InverseMethod) -> Result<Self> {
        if made.params_per_feature != transform.params_per_feature() {
            bail!(
                "Autoregressive: {} needs {} parameters per feature, the MADE produces {}",
                transform.name(),
                transform.params_per_feature(),
                made.params_per_feature
            );
        }
        if let InverseMethod::Jacobi { tol } = inverse_method {
            if !(tol >= 0.0 && tol.is_finite()) {
                bail!("Autoregressive: the Jacobi tolerance must be a number >= 0, got {tol}");
            }
        }
        Ok(Autoregressive { made, transform, inverse_method })
    }

    fn check(&self, x: &Tensor) -> Result<()> {
        let d = self.made.features;
        if x.dim() != 2 || x.size()[1] != d {
            bail!("Autoregressive: expected input [B, {d}], got {:?}", x.size());
        }
        Ok(())
    }

    fn logdet(&self, ld: Option<Tensor>, like: &Tensor) -> Result<Tensor> {
        match ld {
            Some(l) => sum_per_sample(&l),
            None => zero_logdet(like),
        }
    }

    fn inverse_sequential(&self, y: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        let ws = self.made.masked_weights()?;
        let sizes = self.made.prefix_sizes()?;
        // Without autograd recording, x is ours to fill in place (sampling); with it (an IAF's
        // density), each step makes a new x.
        let in_place = !crate::ffi::switches::grad_mode_enabled();
        let mut x = y.f_zeros_like()?;
        let mut total = zero_logdet(y)?;
        for (k, i) in self.made.order_vec()?.into_iter().enumerate() {
            // The k-th feature has degree k + 1: its parameters read units of degree <= k only
            // (none for the first feature without a context: its parameters are the bias).
            let h = match &sizes {
                Some(sz) if sz[sz.len() - 1][k] == 0 => {
                    ctx.count("made_passes", 1.0);
                    self.made.output_bias_of(i, y.size()[0])?
                }
                Some(sz) => self.made.output_of_prefix(&ws, &self.made.hidden_prefix(&ws, &x, ctx, sz, k)?, i)?,
                None => self.made.output_of(&ws, &self.made.hidden(&ws, &x, ctx)?, i)?,
            };
            let (xi, ld) = self.transform.inverse(&y.f_narrow(1, i, 1)?, &h)?;
            if in_place {
                let _ = x.f_narrow(1, i, 1)?.f_copy_(&xi)?;
            } else {
                x = x.f_index_copy(1, &self.made.order.f_narrow(0, k as i64, 1)?, &xi)?;
            }
            if let Some(l) = ld {
                total = total.f_add(&sum_per_sample(&l)?)?;
            }
        }
        Ok((x, total.f_neg()?))
    }

    fn inverse_jacobi(&self, y: &Tensor, tol: f64, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        let ws = self.made.masked_weights()?;
        let d = self.made.features;
        let mut x = y.f_zeros_like()?;
        let mut ld = None;
        for it in 0..d {
            let hid = self.made.hidden(&ws, &x, ctx)?;
            let h = self.made.output(&ws, &hid)?;
            let (xn, l) = self.transform.inverse(y, &h)?;
            let dx = xn.f_sub(&x)?.f_abs()?.f_max()?;
            x = xn;
            ld = l;
            if it + 1 < d && dx.f_double_value(&[])? <= tol {
                break;
            }
        }
        Ok((x, self.logdet(ld, y)?.f_neg()?))
    }
}

impl Flow for Autoregressive {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        self.check(x)?;
        let ws = self.made.masked_weights()?;
        let hid = self.made.hidden(&ws, x, ctx)?;
        let h = self.made.output(&ws, &hid)?;
        let (y, ld) = self.transform.forward(x, &h)?;
        Ok((y, self.logdet(ld, x)?))
    }

    fn inverse(&self, y: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        self.check(y)?;
        match self.inverse_method {
            InverseMethod::Sequential => self.inverse_sequential(y, ctx),
            InverseMethod::Jacobi { tol } => self.inverse_jacobi(y, tol, ctx),
        }
    }

    /// `forward` as one network call; `inverse` as a loop (sequential: `D` steps of one
    /// feature each; Jacobi: at most `D` iterations with the same stopping rule). The Python
    /// back end writes Jacobi's early stop without data-dependent control flow when traced
    /// (see [`jacobi_python`]), so torch.export and torch.compile capture it whole.
    fn to_torchscript(&self, ts: &mut ScriptBuilder) -> Result<ScriptFlow> {
        let made = self.made.describe(ts)?;
        let transform = self.transform.to_torchscript(ts)?;
        let check = |v: &str| format!("assert {v}.dim() == 2 and {v}.size(1) == $d, \"Autoregressive: expected input [B, \" + str($d) + \"], got \" + str({v}.size())\n");
        let logdet = |v: &str| format!("if ld is None:\n    lds = {}\nelse:\n    lds = {}\n", ts_zero_logdet(v), ts_sum_per_sample("ld"));
        let f = format!("{}h = $made.forward(x, cond)\nout, ld = $transform.forward(x, h)\n{}return out, lds", check("x"), logdet("x"));
        let mut layer = Layer::new("Autoregressive").int("d", self.made.features).child("made", &made).child("transform", &transform);
        let i = match self.inverse_method {
            InverseMethod::Sequential => format!(
                "{}ws = $made.masked()\nx = torch.zeros_like(y)\nlds = {}\n\
                 for k in range($d):\n    \
                     i = $made.feature(k)\n    \
                     h = $made.output_of(ws, $made.hidden(ws, x, cond), k)\n    \
                     out, ld = $transform.inverse(y.index_select(1, i), h)\n    \
                     x = x.index_copy(1, i, out)\n    \
                     if ld is not None:\n        lds = lds + {}\n\
                 return x, -lds",
                check("y"),
                ts_zero_logdet("y"),
                ts_sum_per_sample("ld")
            ),
            InverseMethod::Jacobi { tol } => {
                layer = layer.float("tol", tol).python_method("inverse", FLOW_PARAMS_Y, FLOW_RET, &jacobi_python(&check("y")));
                format!(
                    "{}ws = $made.masked()\nx = torch.zeros_like(y)\nlds = {}\n\
                     for it in range($d):\n    \
                         h = $made.output(ws, $made.hidden(ws, x, cond))\n    \
                         out, ld = $transform.inverse(y, h)\n{}    \
                         dx = torch.max(torch.abs(out - x))\n    \
                         x = out\n    \
                         if it + 1 < $d and float(dx) <= $tol:\n        break\n\
                     return x, -lds",
                    check("y"),
                    ts_zero_logdet("y"),
                    indent(&logdet("y"))
                )
            }
        };
        ts.add(layer.flow_methods(&f, &i))
    }

    fn layer_name(&self) -> String {
        format!("Autoregressive({})", self.transform.name())
    }
}

const FLOW_PARAMS_Y: &str = "y: Tensor, cond: Optional[Tensor]";
const FLOW_RET: &str = "Tuple[Tensor, Tensor]";

/// Jacobi's inverse in the Python back end: the same iterations, but once the stopping rule
/// holds, later iterations keep `x` and the log-det as they were (`where`), so the result is
/// the early-stopped one exactly. Eager PyTorch still stops early; under torch.compile and
/// torch.export (which cannot branch on a tensor's value) all `D` iterations are traced.
fn jacobi_python(check: &str) -> String {
    format!(
        "{check}ws = self.made.masked()\nx = torch.zeros_like(y)\nlds = {zero}\n\
         stopped = torch.zeros([], dtype=torch.bool, device=y.device)\n\
         for it in range(self.d):\n    \
             h = self.made.output(ws, self.made.hidden(ws, x, cond))\n    \
             out, ld = self.transform.inverse(y, h)\n    \
             new_lds = {zero} if ld is None else {sum}\n    \
             dx = torch.max(torch.abs(out - x))\n    \
             x = torch.where(stopped, x, out)\n    \
             lds = torch.where(stopped, lds, new_lds)\n    \
             if it + 1 < self.d:\n        \
                 stopped = stopped | (dx.double() <= self.tol)\n        \
                 if not (torch.compiler.is_compiling() or torch.compiler.is_exporting()) and bool(stopped):\n            \
                     break\n\
         return x, -lds",
        zero = ts_zero_logdet("y"),
        sum = ts_sum_per_sample("ld"),
    )
}

fn indent(body: &str) -> String {
    body.lines().map(|l| format!("    {l}\n")).collect()
}
