//! Monotone rational-quadratic splines (Durkan, Bekasov, Murray & Papamakarios, "Neural Spline
//! Flows", 2019): `K` bins on `[-B, B]`, each a ratio of two quadratics, with linear (identity)
//! tails outside. Used in couplings (NSF-C) and autoregressive layers (NSF-AR).
//!
//! Raw parameters are grouped per feature, `3K − 1` of them: `K` bin widths, `K` bin heights
//! (both through a softmax, then floored at `min_bin_width` / `min_bin_height`) and `K − 1`
//! interior knot derivatives (`min_derivative + softplus(raw + c)`, with `c` chosen so that a
//! zero raw value gives derivative 1). The two end derivatives are fixed to 1, so the spline
//! joins its identity tails with a continuous derivative, and all-zero parameters give the
//! identity (equal bins, unit derivatives): a zero-initialised conditioner starts as the
//! identity map.
//!
//! Numerics: inputs are clamped into `[-B, B]` *before* any spline arithmetic and the tails are
//! selected afterwards (`where`), so the branch a `where` discards never holds NaN or Inf and its
//! (zero) gradient stays finite. The inverse takes the quadratic's root in its stable form
//! `θ = 2c / (−b − √(b² − 4ac))`, with the discriminant floored just above zero (rounding can make it
//! slightly negative near a knot whose derivative is at its minimum, where the stable form does
//! not depend on it) and the root clamped into [0, 1] (where rounding can also push it).
use super::ElementwiseBijection;
use crate::script::{ts_float, ScriptBuilder};
use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// The discriminant's floor: the smallest normal number of the dtype. It is above zero, where
/// √'s gradient is infinite (rounding gives exact zeros too), and far below the discriminant a
/// bin has in exact arithmetic, `√(b² − 4ac) = h·δ·(d₁θ² + 2δθ(1−θ) + d₀(1−θ)²) / den > 0`, for
/// any parameters a float64 spline can hold: it only replaces rounding noise.
fn discriminant_floor(kind: Kind) -> f64 {
    if kind == Kind::Double {
        f64::MIN_POSITIVE
    } else {
        f32::MIN_POSITIVE as f64
    }
}

/// See the module docs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RationalQuadraticSpline {
    /// K, the number of bins.
    pub bins: i64,
    /// B: the spline covers `[-B, B]`; the identity outside.
    pub tail_bound: f64,
    pub min_bin_width: f64,
    pub min_bin_height: f64,
    pub min_derivative: f64,
}

/// Per-bin quantities of one spline evaluation, each `[..., 1]` (gathered at the input's bin).
struct Bin {
    /// Left knot `x_k` and width `w_k`.
    x_k: Tensor,
    w_k: Tensor,
    /// Bottom knot `y_k` and height `h_k`.
    y_k: Tensor,
    h_k: Tensor,
    /// Derivatives at the bin's two knots.
    d_k: Tensor,
    d_k1: Tensor,
}

impl RationalQuadraticSpline {
    /// K bins on `[-tail_bound, tail_bound]`, minimum bin size and derivative 1e-3.
    pub fn new(bins: i64, tail_bound: f64) -> Result<Self> {
        let s = RationalQuadraticSpline { bins, tail_bound, min_bin_width: 1e-3, min_bin_height: 1e-3, min_derivative: 1e-3 };
        s.validate()?;
        Ok(s)
    }

    /// Durkan et al.'s defaults for standardised data: K = 8 bins on [−3, 3].
    pub fn standard() -> Self {
        Self::new(8, 3.0).expect("valid defaults")
    }

    pub fn validate(&self) -> Result<()> {
        let k = self.bins as f64;
        if self.bins < 1 {
            bail!("rational-quadratic spline: bins = {} must be >= 1", self.bins);
        }
        if !(self.tail_bound.is_finite() && self.tail_bound > 0.0) {
            bail!("rational-quadratic spline: tail_bound = {} must be a positive number", self.tail_bound);
        }
        if !(self.min_bin_width > 0.0 && self.min_bin_width * k < 1.0 && self.min_bin_height > 0.0 && self.min_bin_height * k < 1.0) {
            bail!("rational-quadratic spline: the minimum bin width and height must be positive and below 1/bins");
        }
        if !(self.min_derivative > 0.0 && self.min_derivative < 1.0) {
            bail!("rational-quadratic spline: min_derivative = {} must be in (0, 1)", self.min_derivative);
        }
        Ok(())
    }

    /// `c` with `min_derivative + softplus(c) = 1`.
    fn derivative_offset(&self) -> f64 {
        (1.0 - self.min_derivative).exp_m1().ln()
    }

    /// `h` `[B, P·C, ...]` as `[B, C, ..., P]` (each feature's parameters on the last dim).
    fn grouped(&self, t: &Tensor, h: &Tensor) -> Result<Tensor> {
        let p = self.params_per_feature();
        let s = t.size();
        let mut shape = vec![s[0], s[1], p];
        shape.extend(&s[2..]);
        let hv = h.f_reshape(&shape[..])?;
        Ok(if s.len() > 2 { hv.f_movedim_int(2, -1)? } else { hv })
    }

    /// Knots `[..., K+1]` from -B to B exactly, and the bin sizes `[..., K]`, from raw sizes.
    fn knots(&self, raw: &Tensor, min_size: f64) -> Result<(Tensor, Tensor)> {
        let (k, b) = (self.bins, self.tail_bound);
        let sizes = raw.f_softmax(-1, None::<Kind>)?.f_mul_scalar(1.0 - min_size * k as f64)?.f_add_scalar(min_size)?;
        let inner = sizes.f_cumsum(-1, None::<Kind>)?.f_narrow(-1, 0, k - 1)?;
        let unit = inner.f_pad([1, 0], "constant", Some(0.0))?.f_pad([0, 1], "constant", Some(1.0))?;
        let knots = unit.f_mul_scalar(2.0 * b)?.f_sub_scalar(b)?;
        let widths = knots.f_narrow(-1, 1, k)?.f_sub(&knots.f_narrow(-1, 0, k)?)?;
        Ok((knots, widths))
    }

    /// The bin of every (clamped) `v` `[..., 1]` among `knots` and its quantities.
    fn bin(&self, hv: &Tensor, v: &Tensor, by_height: bool) -> Result<Bin> {
        let k = self.bins;
        let (xs, ws) = self.knots(&hv.f_narrow(-1, 0, k)?, self.min_bin_width)?;
        let (ys, hs) = self.knots(&hv.f_narrow(-1, k, k)?, self.min_bin_height)?;
        let ud = hv.f_narrow(-1, 2 * k, k - 1)?;
        let d = ud.f_add_scalar(self.derivative_offset())?.f_softplus()?.f_add_scalar(self.min_derivative)?;
        let ds = d.f_pad([1, 1], "constant", Some(1.0))?;
        let search = if by_height { &ys } else { &xs };
        // Number of interior knots at or below v: the bin index in 0..K (v is clamped into [-B, B]).
        let idx = v.f_ge_tensor(&search.f_narrow(-1, 1, k - 1)?)?.f_sum_dim_intlist(Some(&[-1i64][..]), true, Kind::Int64)?;
        let at = |t: &Tensor| t.f_gather(-1, &idx, false);
        Ok(Bin {
            x_k: at(&xs)?,
            w_k: at(&ws)?,
            y_k: at(&ys)?,
            h_k: at(&hs)?,
            d_k: at(&ds)?,
            d_k1: at(&ds.f_narrow(-1, 1, k)?)?,
        })
    }

    /// `log f'` at `θ` in a bin with slope `delta`: `log(δ²(d₁θ² + 2δθ(1−θ) + d₀(1−θ)²)) − 2 log(den)`.
    fn log_derivative(bin: &Bin, delta: &Tensor, theta: &Tensor, t1: &Tensor, den: &Tensor) -> Result<Tensor> {
        let omt = theta.f_neg()?.f_add_scalar(1.0)?;
        let inner = bin
            .d_k1
            .f_mul(&theta.f_square()?)?
            .f_add(&delta.f_mul(t1)?.f_mul_scalar(2.0)?)?
            .f_add(&bin.d_k.f_mul(&omt.f_square()?)?)?;
        let num = delta.f_square()?.f_mul(&inner)?;
        Ok(num.f_log()?.f_sub(&den.f_log()?.f_mul_scalar(2.0)?)?)
    }

    /// The quadratic `a θ² + b θ + c = 0` whose root in [0, 1] is the inverse's position in
    /// its bin, for clamped `v` `[..., 1]`: `(a, b, c)`.
    fn quadratic(bin: &Bin, delta: &Tensor, slope_sum: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let s = v.f_sub(&bin.y_k)?;
        let a = s.f_mul(slope_sum)?.f_add(&bin.h_k.f_mul(&delta.f_sub(&bin.d_k)?)?)?;
        let b = bin.h_k.f_mul(&bin.d_k)?.f_sub(&s.f_mul(slope_sum)?)?;
        let c = delta.f_mul(&s)?.f_neg()?;
        Ok((a, b, c))
    }

    fn slopes(bin: &Bin) -> Result<(Tensor, Tensor)> {
        let delta = bin.h_k.f_div(&bin.w_k)?;
        let slope_sum = bin.d_k.f_add(&bin.d_k1)?.f_sub(&delta.f_mul_scalar(2.0)?)?;
        Ok((delta, slope_sum))
    }

    fn run(&self, t: &Tensor, h: &Tensor, inverse: bool) -> Result<(Tensor, Option<Tensor>)> {
        check_spline_params(self, t, h)?;
        let b = self.tail_bound;
        let hv = self.grouped(t, h)?;
        let v = t.f_clamp(-b, b)?.f_unsqueeze(-1)?;
        let bin = self.bin(&hv, &v, inverse)?;
        let (delta, slope_sum) = Self::slopes(&bin)?;
        let (out, theta, t1, den) = if inverse {
            let (a, bq, c) = Self::quadratic(&bin, &delta, &slope_sum, &v)?;
            let disc = bq.f_square()?.f_sub(&a.f_mul(&c)?.f_mul_scalar(4.0)?)?.f_clamp_min(discriminant_floor(t.kind()))?;
            // The root lies in [0, 1]; rounding may put it just outside, where the log-derivative's
            // δθ(1−θ) term could turn negative.
            let theta = c.f_mul_scalar(2.0)?.f_div(&bq.f_neg()?.f_sub(&disc.f_sqrt()?)?)?.f_clamp(0.0, 1.0)?;
            let x = theta.f_mul(&bin.w_k)?.f_add(&bin.x_k)?;
            let t1 = theta.f_mul(&theta.f_neg()?.f_add_scalar(1.0)?)?;
            let den = delta.f_add(&slope_sum.f_mul(&t1)?)?;
            (x, theta, t1, den)
        } else {
            let theta = v.f_sub(&bin.x_k)?.f_div(&bin.w_k)?;
            let t1 = theta.f_mul(&theta.f_neg()?.f_add_scalar(1.0)?)?;
            let den = delta.f_add(&slope_sum.f_mul(&t1)?)?;
            let num = bin.h_k.f_mul(&delta.f_mul(&theta.f_square()?)?.f_add(&bin.d_k.f_mul(&t1)?)?)?;
            (bin.y_k.f_add(&num.f_div(&den)?)?, theta, t1, den)
        };
        let ld = Self::log_derivative(&bin, &delta, &theta, &t1, &den)?;
        let inside = t.f_abs()?.f_le(b)?;
        let out = out.f_squeeze_dim(-1)?.f_where_self(&inside, t)?;
        let ld = ld.f_squeeze_dim(-1)?.f_where_scalarother(&inside, 0.0)?;
        Ok((out, Some(ld)))
    }

    /// Diagnostics: the knots `(x_0..x_K, y_0..y_K)`, each `[B, C, ..., K+1]`, that the
    /// parameters `h` give for an input shaped like `t`.
    pub fn knots_of(&self, t: &Tensor, h: &Tensor) -> Result<(Tensor, Tensor)> {
        check_spline_params(self, t, h)?;
        let hv = self.grouped(t, h)?;
        let k = self.bins;
        Ok((self.knots(&hv.f_narrow(-1, 0, k)?, self.min_bin_width)?.0, self.knots(&hv.f_narrow(-1, k, k)?, self.min_bin_height)?.0))
    }

    /// Diagnostics: the inverse's discriminant `b² − 4ac` at `y` before it is floored
    /// (rounding can make it negative), shaped like `y`.
    pub fn discriminant(&self, y: &Tensor, h: &Tensor) -> Result<Tensor> {
        check_spline_params(self, y, h)?;
        let b = self.tail_bound;
        let hv = self.grouped(y, h)?;
        let v = y.f_clamp(-b, b)?.f_unsqueeze(-1)?;
        let bin = self.bin(&hv, &v, true)?;
        let (delta, slope_sum) = Self::slopes(&bin)?;
        let (a, bq, c) = Self::quadratic(&bin, &delta, &slope_sum, &v)?;
        Ok(bq.f_square()?.f_sub(&a.f_mul(&c)?.f_mul_scalar(4.0)?)?.f_squeeze_dim(-1)?)
    }
}

fn check_spline_params(s: &RationalQuadraticSpline, x: &Tensor, h: &Tensor) -> Result<()> {
    super::check_params("RationalQuadraticSpline", x, h, s.params_per_feature())
}

impl ElementwiseBijection for RationalQuadraticSpline {
    fn params_per_feature(&self) -> i64 {
        3 * self.bins - 1
    }

    fn forward(&self, x: &Tensor, h: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        self.run(x, h, false)
    }

    fn inverse(&self, y: &Tensor, h: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        self.run(y, h, true)
    }

    /// [`run`](Self::run) op for op; temporaries are prefixed `rq_` so that callers' names
    /// (an autoregressive inverse loop) are not overwritten.
    fn script(&self, _ts: &mut ScriptBuilder, inverse: bool) -> Result<String> {
        let (k, p) = (self.bins, self.params_per_feature());
        let b = ts_float(self.tail_bound)?;
        let nb = ts_float(-self.tail_bound)?;
        let two_b = ts_float(2.0 * self.tail_bound)?;
        let knots = |raw: &str, min: f64, name: &str| -> Result<String> {
            Ok(format!(
                "rq_sz = torch.softmax({raw}, -1) * {} + {}\n\
                 rq_in = torch.cumsum(rq_sz, -1).narrow(-1, 0, {km1})\n\
                 rq_unit = torch.constant_pad_nd(torch.constant_pad_nd(rq_in, [1, 0], 0.0), [0, 1], 1.0)\n\
                 {name}s = rq_unit * {two_b} - {b}\n\
                 {name}w = {name}s.narrow(-1, 1, {k}) - {name}s.narrow(-1, 0, {k})\n",
                ts_float(1.0 - min * k as f64)?,
                ts_float(min)?,
                km1 = k - 1
            ))
        };
        let mut s = format!(
            "assert t.dim() >= 2 and h.dim() == t.dim() and h.size(0) == t.size(0) and h.size(1) == {p} * t.size(1), \"RationalQuadraticSpline: expected {p} parameters per feature for input \" + str(t.size()) + \", got \" + str(h.size())\n\
             rq_shape = [t.size(0), t.size(1), {p}] + t.size()[2:]\n\
             rq_h = h.reshape(rq_shape)\n\
             if t.dim() > 2:\n    rq_h = torch.movedim(rq_h, 2, -1)\n\
             rq_v = torch.clamp(t, {nb}, {b}).unsqueeze(-1)\n"
        );
        s += &knots(&format!("rq_h.narrow(-1, 0, {k})"), self.min_bin_width, "rq_x")?;
        s += &knots(&format!("rq_h.narrow(-1, {k}, {k})"), self.min_bin_height, "rq_y")?;
        let search = if inverse { "rq_ys" } else { "rq_xs" };
        s += &format!(
            "rq_d = torch.softplus(rq_h.narrow(-1, {}, {}) + {}) + {}\n\
             rq_ds = torch.constant_pad_nd(rq_d, [1, 1], 1.0)\n\
             rq_idx = torch.sum(rq_v >= {search}.narrow(-1, 1, {}), [-1], True, dtype=4)\n\
             rq_xk = torch.gather(rq_xs, -1, rq_idx)\n\
             rq_wk = torch.gather(rq_xw, -1, rq_idx)\n\
             rq_yk = torch.gather(rq_ys, -1, rq_idx)\n\
             rq_hk = torch.gather(rq_yw, -1, rq_idx)\n\
             rq_dk = torch.gather(rq_ds, -1, rq_idx)\n\
             rq_dk1 = torch.gather(rq_ds.narrow(-1, 1, {k}), -1, rq_idx)\n\
             rq_delta = rq_hk / rq_wk\n\
             rq_ss = rq_dk + rq_dk1 - rq_delta * 2.0\n",
            2 * k,
            k - 1,
            ts_float(self.derivative_offset())?,
            ts_float(self.min_derivative)?,
            k - 1
        );
        if inverse {
            s += &format!("rq_s = rq_v - rq_yk\n\
                  rq_a = rq_s * rq_ss + rq_hk * (rq_delta - rq_dk)\n\
                  rq_b = rq_hk * rq_dk - rq_s * rq_ss\n\
                  rq_c = -(rq_delta * rq_s)\n\
                  rq_floor = {f64_floor} if t.dtype == 7 else {f32_floor}\n\
                  rq_disc = torch.clamp_min(rq_b.square() - rq_a * rq_c * 4.0, rq_floor)\n\
                  rq_theta = torch.clamp(rq_c * 2.0 / (-rq_b - torch.sqrt(rq_disc)), 0.0, 1.0)\n\
                  rq_out = rq_theta * rq_wk + rq_xk\n\
                  rq_t1 = rq_theta * (-rq_theta + 1.0)\n\
                  rq_den = rq_delta + rq_ss * rq_t1\n", f64_floor = ts_float(f64::MIN_POSITIVE)?, f32_floor = ts_float(f32::MIN_POSITIVE as f64)?);
        } else {
            s += "rq_theta = (rq_v - rq_xk) / rq_wk\n\
                  rq_t1 = rq_theta * (-rq_theta + 1.0)\n\
                  rq_den = rq_delta + rq_ss * rq_t1\n\
                  rq_num = rq_hk * (rq_delta * rq_theta.square() + rq_dk * rq_t1)\n\
                  rq_out = rq_yk + rq_num / rq_den\n";
        }
        s += "rq_omt = -rq_theta + 1.0\n\
              rq_inner = rq_dk1 * rq_theta.square() + rq_delta * rq_t1 * 2.0 + rq_dk * rq_omt.square()\n\
              rq_ld = torch.log(rq_delta.square() * rq_inner) - torch.log(rq_den) * 2.0\n";
        s += &format!(
            "rq_inside = torch.abs(t) <= {b}\n\
             out = torch.where(rq_inside, rq_out.squeeze(-1), t)\n\
             ld = torch.where(rq_inside, rq_ld.squeeze(-1), 0.0)\n"
        );
        Ok(s)
    }

    fn name(&self) -> String {
        format!("RationalQuadraticSpline(bins={}, tail_bound={})", self.bins, self.tail_bound)
    }
}
