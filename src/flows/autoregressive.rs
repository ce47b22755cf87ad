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
use crate::script::{ts_float, ts_sum_per_sample, ts_zero_logdet, ScriptBuilder, ScriptFlow};
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

    /// `forward` as one network call; `inverse` as a TorchScript loop (sequential: `D` steps
    /// of one feature each; Jacobi: at most `D` iterations with the same stopping rule).
    fn to_torchscript(&self, ts: &mut ScriptBuilder) -> Result<ScriptFlow> {
        let m = self.made.script_parts(ts)?;
        let d = self.made.features;
        let p = self.made.params_per_feature;
        let vp = self.transform.volume_preserving();
        let check = |v: &str| format!("assert {v}.dim() == 2 and {v}.size(1) == {d}, \"Autoregressive: expected input [B, {d}], got \" + str({v}.size())\n");
        let ld_of = |v: &str| if vp { ts_zero_logdet(v) } else { ts_sum_per_sample("ld") };
        let f = format!(
            "{}ws = self.{}()\nhid = self.{}(ws, x, cond)\nh = torch.linear(hid, ws[{}], {})\nt = x\n{}return out, {}",
            check("x"),
            m.masked,
            m.hidden,
            m.out_weight_index,
            m.out_bias,
            self.transform.script(ts, false)?,
            ld_of("x")
        );
        let step = indent(&self.transform.script(ts, true)?);
        let (n, bias, order) = (m.out_weight_index, &m.out_bias, &m.order);
        let i = match self.inverse_method {
            InverseMethod::Sequential => {
                let acc = if vp { String::new() } else { format!("    lds = lds + {}\n", ts_sum_per_sample("ld")) };
                format!(
                    "{}ws = self.{masked}()\nx = torch.zeros_like(y)\nlds = {}\nfor k in range({d}):\n    \
                     i = int({order}[k])\n    \
                     hid = self.{hidden}(ws, x, cond)\n    \
                     h = torch.linear(hid, ws[{n}].narrow(0, i * {p}, {p}), {bias}.narrow(0, i * {p}, {p}))\n    \
                     t = y.narrow(1, i, 1)\n{step}\n    \
                     x = x.index_copy(1, {order}.narrow(0, k, 1), out)\n{acc}return x, -lds",
                    check("y"),
                    ts_zero_logdet("y"),
                    masked = m.masked,
                    hidden = m.hidden,
                )
            }
            InverseMethod::Jacobi { tol } => {
                let lds = if vp { ts_zero_logdet("y") } else { ts_sum_per_sample("ld") };
                format!(
                    "{}ws = self.{masked}()\nx = torch.zeros_like(y)\nld = torch.zeros_like(y)\nfor it in range({d}):\n    \
                     hid = self.{hidden}(ws, x, cond)\n    \
                     h = torch.linear(hid, ws[{n}], {bias})\n    \
                     t = y\n{step}\n    \
                     dx = torch.max(torch.abs(out - x))\n    \
                     x = out\n    \
                     if it + 1 < {d} and bool(dx <= {}):\n        break\n\
                     return x, -{lds}",
                    check("y"),
                    ts_float(tol)?,
                    masked = m.masked,
                    hidden = m.hidden,
                )
            }
        };
        let stem = m.net.trim_start_matches('_').trim_end_matches("_net").to_string();
        ts.define_flow(&stem, &f, &i)
    }

    fn layer_name(&self) -> String {
        format!("Autoregressive({})", self.transform.name())
    }
}

fn indent(body: &str) -> String {
    body.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}
