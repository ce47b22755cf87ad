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
//! [`RationalQuadraticSpline::circular`] is the variant for angles: `[-π, π)` as a circle
//! (inputs taken modulo 2π), no tails, one learned derivative shared by both ends.
//!
//! Numerics: inputs are clamped into `[-B, B]` *before* any spline arithmetic and the tails are
//! selected afterwards (`where`), so the branch a `where` discards never holds NaN or Inf and its
//! (zero) gradient stays finite. The inverse takes the quadratic's root in its stable form
//! `θ = 2c / (−b − √(b² − 4ac))`, with the discriminant floored just above zero (rounding can make it
//! slightly negative near a knot whose derivative is at its minimum, where the stable form does
//! not depend on it) and the root clamped into [0, 1] (where rounding can also push it).
use super::ElementwiseBijection;
use crate::script::{ScriptBuilder, ScriptFlow};
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
    /// The smallest bin width and height, as a fraction of `2B`.
    pub min_bin_size: f64,
    pub min_derivative: f64,
    /// A circle instead of a line (angles, Rezende et al. 2020): inputs are taken modulo `2B`
    /// into `[-B, B)`, there are no tails, and the derivative at `±B` is one learned value shared
    /// by both ends, so the map is a smooth bijection of the circle (`3K` parameters).
    pub circular: bool,
}

/// A bin's slope `δ`, `2δ` and `d_k + d_{k+1} − 2δ`.
struct Slopes {
    delta: Tensor,
    delta2: Tensor,
    slope_sum: Tensor,
}

/// Per-bin quantities of one spline evaluation, each `[B, 1, N]` (gathered at each input's
/// bin; `N` counts the features).
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
        let s = RationalQuadraticSpline { bins, tail_bound, min_bin_size: 1e-3, min_derivative: 1e-3, circular: false };
        s.validate()?;
        Ok(s)
    }

    /// The circular spline of `bins` bins on angles `[-π, π)`.
    pub fn circular(bins: i64) -> Result<Self> {
        let s = RationalQuadraticSpline { circular: true, ..Self::new(bins, std::f64::consts::PI)? };
        s.validate()?;
        Ok(s)
    }

    /// Durkan et al.'s defaults for standardised data: K = 8 bins on [−3, 3].
    pub fn standard() -> Self {
        Self::new(8, 3.0).expect("valid defaults")
    }

    pub fn validate(&self) -> Result<()> {
        if self.bins < 1 {
            bail!("rational-quadratic spline: bins = {} must be >= 1", self.bins);
        }
        if !(self.tail_bound.is_finite() && self.tail_bound > 0.0) {
            bail!("rational-quadratic spline: tail_bound = {} must be a positive number", self.tail_bound);
        }
        if !(self.min_bin_size > 0.0 && self.min_bin_size * (self.bins as f64) < 1.0) {
            bail!("rational-quadratic spline: the minimum bin size {} must be positive and below 1/bins", self.min_bin_size);
        }
        if !(self.min_derivative > 0.0 && self.min_derivative < 1.0) {
            bail!("rational-quadratic spline: min_derivative = {} must be in (0, 1)", self.min_derivative);
        }
        Ok(())
    }

    /// `c` with `min_derivative + softplus(c) = 1`.
    pub(crate) fn derivative_offset(&self) -> f64 {
        (1.0 - self.min_derivative).exp_m1().ln()
    }

    /// `h` `[B, P·C, ...]` (grouped per feature) as `[B, P, N]` with the `N = C·...` features
    /// innermost: the per-bin reductions (softmax, cumsum, gather) then run over a middle
    /// dimension with contiguous features, instead of over rows of K values.
    fn by_parameter(&self, t: &Tensor, h: &Tensor) -> Result<Tensor> {
        let s = t.size();
        Ok(h.f_reshape([s[0], s[1], self.params_per_feature(), -1])?.f_transpose(1, 2)?.f_reshape([s[0], self.params_per_feature(), -1])?)
    }

    /// Knots `[B, 2, K+1, N]` (x then y, from -B to B exactly) and bin sizes `[B, 2, K, N]`
    /// (widths then heights) from `hp` `[B, P, N]`.
    fn knots(&self, hp: &Tensor) -> Result<(Tensor, Tensor)> {
        let (k, b, m) = (self.bins, self.tail_bound, self.min_bin_size);
        let s = hp.size();
        let raw = hp.f_narrow(1, 0, 2 * k)?.f_view([s[0], 2, k, s[2]])?;
        let sizes = raw.f_softmax(2, None::<Kind>)?.f_mul_scalar(2.0 * b * (1.0 - m * k as f64))?.f_add_scalar(2.0 * b * m)?;
        let knots = sizes.f_pad([0, 0, 1, 0], "constant", Some(-b))?.f_cumsum(2, None::<Kind>)?;
        // The last knot is B exactly (the cumulative sum is B up to rounding); cumsum's gradient
        // does not read its output, so it may be overwritten.
        let _ = knots.f_narrow(2, k, 1)?.f_fill_(b)?;
        let sizes = knots.f_narrow(2, 1, k)?.f_sub(&knots.f_narrow(2, 0, k)?)?;
        Ok((knots, sizes))
    }

    /// The bin of every (clamped) `v` `[B, 1, N]` among the x knots (forward) or the y knots
    /// (inverse), and its quantities.
    fn bin(&self, hp: &Tensor, v: &Tensor, by_height: bool) -> Result<Bin> {
        let k = self.bins;
        let (knots, sizes) = self.knots(hp)?;
        let n_d = k - 1 + self.circular as i64;
        let d = hp.f_narrow(1, 2 * k, n_d)?.f_add_scalar(self.derivative_offset())?.f_softplus()?.f_add_scalar(self.min_derivative)?;
        // Linear tails: unit derivatives at both ends; a circle: the first one at both ends.
        let ds = if self.circular { Tensor::f_cat(&[&d, &d.f_narrow(1, 0, 1)?], 1)? } else { d.f_pad([0, 0, 1, 1], "constant", Some(1.0))? };
        // Number of interior knots at or below v: the bin index in 0..K (v is clamped into [-B, B]).
        let search = knots.f_select(1, by_height as i64)?.f_narrow(1, 1, k - 1)?;
        let idx = v.f_ge_tensor(&search)?.f_sum_dim_intlist(Some(&[1i64][..]), true, Kind::Int64)?;
        let s = v.size();
        let idx2 = idx.f_unsqueeze(1)?.f_expand([s[0], 2, 1, s[2]], false)?;
        let at_knot = knots.f_gather(2, &idx2, false)?;
        let at_size = sizes.f_gather(2, &idx2, false)?;
        let at_d = ds.f_gather(1, &Tensor::f_cat(&[&idx, &idx.f_add_scalar(1)?], 1)?, false)?;
        Ok(Bin {
            x_k: at_knot.f_select(1, 0)?,
            y_k: at_knot.f_select(1, 1)?,
            w_k: at_size.f_select(1, 0)?,
            h_k: at_size.f_select(1, 1)?,
            d_k: at_d.f_narrow(1, 0, 1)?,
            d_k1: at_d.f_narrow(1, 1, 1)?,
        })
    }

    /// `log f'` at `θ` in a bin with slope `δ`:
    /// `log(δ² (d₁θ² + 2δθ(1−θ) + d₀(1−θ)²) / den²)`, from `θ²`, `θ(1−θ)` and `den`.
    fn log_derivative(bin: &Bin, sl: &Slopes, theta: &Tensor, sq: &Tensor, t1: &Tensor, den: &Tensor) -> Result<Tensor> {
        let omt = theta.f_rsub_scalar(1.0)?;
        let inner = bin.d_k1.f_mul(sq)?.f_addcmul(&sl.delta2, t1)?.f_addcmul(&bin.d_k, &omt.f_square()?)?;
        Ok(sl.delta.f_square()?.f_mul(&inner)?.f_div(&den.f_square()?)?.f_log()?)
    }

    /// The quadratic `a θ² + b θ − c' = 0` whose root in [0, 1] is the inverse's position in its
    /// bin, for clamped `v`: `(a, b, c')` with `c' = δ (v − y_k) >= 0` (Durkan et al.'s `c` is
    /// `−c'`).
    fn quadratic(bin: &Bin, sl: &Slopes, v: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let s = v.f_sub(&bin.y_k)?;
        let sa = s.f_mul(&sl.slope_sum)?;
        let a = sa.f_addcmul(&bin.h_k, &sl.delta.f_sub(&bin.d_k)?)?;
        let b = bin.h_k.f_mul(&bin.d_k)?.f_sub(&sa)?;
        let c = sl.delta.f_mul(&s)?;
        Ok((a, b, c))
    }

    /// `b² − 4ac` in the signs of [`quadratic`](Self::quadratic): `b² + 4ac'`.
    fn disc(a: &Tensor, b: &Tensor, c: &Tensor) -> Result<Tensor> {
        Ok(b.f_square()?.f_addcmul(&a.f_mul_scalar(4.0)?, c)?)
    }

    /// The bin's slope `δ = h/w`, `2δ` and `d_k + d_{k+1} − 2δ`.
    fn slopes(bin: &Bin) -> Result<Slopes> {
        let delta = bin.h_k.f_div(&bin.w_k)?;
        let delta2 = delta.f_mul_scalar(2.0)?;
        let slope_sum = bin.d_k.f_add(&bin.d_k1)?.f_sub(&delta2)?;
        Ok(Slopes { delta, delta2, slope_sum })
    }

    /// The input clamped into `[-B, B]` (a circle: taken modulo `2B` into `[-B, B)`), as
    /// `[B, 1, N]`.
    fn clamped(&self, t: &Tensor) -> Result<Tensor> {
        let b = self.tail_bound;
        let v = if self.circular { t.f_add_scalar(b)?.f_remainder(2.0 * b)?.f_sub_scalar(b)? } else { t.f_clamp(-b, b)? };
        Ok(v.f_reshape([t.size()[0], 1, -1])?)
    }

    fn run(&self, t: &Tensor, h: &Tensor, inverse: bool) -> Result<(Tensor, Option<Tensor>)> {
        check_spline_params(self, t, h)?;
        let hp = self.by_parameter(t, h)?;
        let v = self.clamped(t)?;
        let bin = self.bin(&hp, &v, inverse)?;
        let sl = Self::slopes(&bin)?;
        let (out, theta) = if inverse {
            // θ = 2c / (−b − √(b² − 4ac)) = 2c' / (b + √(b² + 4ac')), the discriminant floored.
            let (a, bq, c) = Self::quadratic(&bin, &sl, &v)?;
            let disc = Self::disc(&a, &bq, &c)?.f_clamp_min(discriminant_floor(t.kind()))?;
            // The root lies in [0, 1]; rounding may put it just outside, where the log-derivative's
            // δθ(1−θ) term could turn negative.
            let theta = c.f_mul_scalar(2.0)?.f_div(&bq.f_add(&disc.f_sqrt()?)?)?.f_clamp(0.0, 1.0)?;
            (bin.x_k.f_addcmul(&theta, &bin.w_k)?, theta)
        } else {
            (Tensor::new(), v.f_sub(&bin.x_k)?.f_div(&bin.w_k)?)
        };
        let sq = theta.f_square()?;
        let t1 = theta.f_sub(&sq)?;
        let den = sl.delta.f_addcmul(&sl.slope_sum, &t1)?;
        let out = if inverse {
            out
        } else {
            let num = bin.h_k.f_mul(&sl.delta.f_mul(&sq)?.f_addcmul(&bin.d_k, &t1)?)?;
            bin.y_k.f_addcdiv(&num, &den)?
        };
        let ld = Self::log_derivative(&bin, &sl, &theta, &sq, &t1, &den)?;
        if self.circular {
            return Ok((out.f_view_as(t)?, Some(ld.f_view_as(t)?)));
        }
        let inside = t.f_abs()?.f_le(self.tail_bound)?;
        let out = out.f_view_as(t)?.f_where_self(&inside, t)?;
        let ld = ld.f_view_as(t)?.f_where_scalarother(&inside, 0.0)?;
        Ok((out, Some(ld)))
    }

    /// Diagnostics: the knots `(x_0..x_K, y_0..y_K)`, each `[B, K+1, N]` with `N` the features
    /// of `t` (row-major), that the parameters `h` give for an input shaped like `t`.
    pub fn knots_of(&self, t: &Tensor, h: &Tensor) -> Result<(Tensor, Tensor)> {
        check_spline_params(self, t, h)?;
        let (knots, _) = self.knots(&self.by_parameter(t, h)?)?;
        Ok((knots.f_select(1, 0)?, knots.f_select(1, 1)?))
    }

    /// Diagnostics: the inverse's discriminant `b² − 4ac` at `y` before it is floored, shaped
    /// like `y`.
    pub fn discriminant(&self, y: &Tensor, h: &Tensor) -> Result<Tensor> {
        check_spline_params(self, y, h)?;
        let v = self.clamped(y)?;
        let bin = self.bin(&self.by_parameter(y, h)?, &v, true)?;
        let (a, b, c) = Self::quadratic(&bin, &Self::slopes(&bin)?, &v)?;
        Ok(Self::disc(&a, &b, &c)?.f_view_as(y)?)
    }
}

fn check_spline_params(s: &RationalQuadraticSpline, x: &Tensor, h: &Tensor) -> Result<()> {
    super::check_params("RationalQuadraticSpline", x, h, s.params_per_feature())
}

impl ElementwiseBijection for RationalQuadraticSpline {
    fn params_per_feature(&self) -> i64 {
        3 * self.bins - 1 + self.circular as i64
    }

    fn forward(&self, x: &Tensor, h: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        self.run(x, h, false)
    }

    fn inverse(&self, y: &Tensor, h: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        self.run(y, h, true)
    }

    /// [`run`](Self::run) op for op (see [`super::spline_script`]).
    fn to_torchscript(&self, ts: &mut ScriptBuilder) -> Result<ScriptFlow> {
        ts.add(super::spline_script::layer(self)?)
    }

    fn name(&self) -> String {
        if self.circular {
            format!("CircularRationalQuadraticSpline(bins={})", self.bins)
        } else {
            format!("RationalQuadraticSpline(bins={}, tail_bound={})", self.bins, self.tail_bound)
        }
    }
}
