//! The rational-quadratic spline described for export ([`crate::script`]): the methods
//! `forward(t, h)` and `inverse(t, h)` compute what [`RationalQuadraticSpline`]'s `run` computes,
//! op for op, with the spline's numbers as the layer's constants (one Python class for every
//! line spline, one for every circular one).
use super::{ElementwiseBijection, RationalQuadraticSpline};
use crate::script::Layer;
use anyhow::Result;

/// Reshapes the parameters by kind, computes the knots, derivatives and the input's bin
/// (among the x knots, or the y knots when `by_height`), up to the bin's slopes.
fn bin_source(by_height: bool, circular: bool) -> String {
    let wrap = if circular {
        "v = (torch.remainder(t + $b, $two_b) - $b).reshape([t.size(0), 1, -1])"
    } else {
        "v = torch.clamp(t, $neg_b, $b).reshape([t.size(0), 1, -1])"
    };
    // Linear tails: unit derivatives at both ends; a circle: the first one at both ends.
    let ends = if circular { "ds = torch.cat([d, d.narrow(1, 0, 1)], 1)" } else { "ds = torch.constant_pad_nd(d, [0, 0, 1, 1], 1.0)" };
    format!(
        "assert t.dim() >= 2 and h.dim() == t.dim() and h.size(0) == t.size(0) and h.size(1) == $p * t.size(1), \"RationalQuadraticSpline: expected \" + str($p) + \" parameters per feature for input \" + str(t.size()) + \", got \" + str(h.size())\n\
         hp = h.reshape([t.size(0), t.size(1), $p, -1]).transpose(1, 2).reshape([t.size(0), $p, -1])\n\
         {wrap}\n\
         raw = hp.narrow(1, 0, $k2).view([hp.size(0), 2, $k, hp.size(2)])\n\
         sz = torch.softmax(raw, 2) * $scale + $min_size\n\
         knots = torch.cumsum(torch.constant_pad_nd(sz, [0, 0, 1, 0], $neg_b), 2)\n\
         knots.narrow(2, $k, 1).fill_($b)\n\
         sizes = knots.narrow(2, 1, $k) - knots.narrow(2, 0, $k)\n\
         d = torch.softplus(hp.narrow(1, $k2, $nd) + $offset) + $min_d\n\
         {ends}\n\
         idx = torch.sum(v >= knots.select(1, {which}).narrow(1, 1, $km1), [1], True, dtype=4)\n\
         idx2 = idx.unsqueeze(1).expand([v.size(0), 2, 1, v.size(2)])\n\
         at_knot = torch.gather(knots, 2, idx2)\n\
         at_size = torch.gather(sizes, 2, idx2)\n\
         at_d = torch.gather(ds, 1, torch.cat([idx, idx + 1], 1))\n\
         xk = at_knot.select(1, 0)\n\
         yk = at_knot.select(1, 1)\n\
         wk = at_size.select(1, 0)\n\
         hk = at_size.select(1, 1)\n\
         dk = at_d.narrow(1, 0, 1)\n\
         dk1 = at_d.narrow(1, 1, 1)\n\
         delta = hk / wk\n\
         delta2 = delta * 2.0\n\
         ss = dk + dk1 - delta2\n",
        which = by_height as i64,
    )
}

/// The log-derivative at `theta` and the result: the identity tails of a line spline.
fn finish_source(circular: bool) -> String {
    let ld = "omt = torch.rsub(theta, 1.0)\n\
              inner = torch.addcmul(torch.addcmul(dk1 * sq, delta2, t1), dk, omt.square())\n\
              ld = torch.log(delta.square() * inner / den.square())\n";
    if circular {
        format!("{ld}return out.view_as(t), ld.view_as(t)")
    } else {
        format!("{ld}inside = torch.abs(t) <= $b\nreturn torch.where(inside, out.view_as(t), t), torch.where(inside, ld.view_as(t), 0.0)")
    }
}

/// The spline as a described layer.
pub(super) fn layer(s: &RationalQuadraticSpline) -> Result<Layer> {
    let (k, m, b) = (s.bins, s.min_bin_size, s.tail_bound);
    let theta = "sq = theta.square()\nt1 = theta - sq\nden = torch.addcmul(delta, ss, t1)\n";
    let forward = format!(
        "{}theta = (v - xk) / wk\n{theta}out = torch.addcdiv(yk, hk * torch.addcmul(delta * sq, dk, t1), den)\n{}",
        bin_source(false, s.circular),
        finish_source(s.circular)
    );
    // θ = 2c' / (b + √(b² + 4ac')), the discriminant floored at the dtype's smallest normal
    // number, the root clamped into [0, 1] (see the module docs of the spline).
    let inverse = format!(
        "{}sd = v - yk\n\
         sa = sd * ss\n\
         qa = torch.addcmul(sa, hk, delta - dk)\n\
         qb = hk * dk - sa\n\
         qc = delta * sd\n\
         floor = $floor64 if t.dtype == 7 else $floor32\n\
         disc = torch.clamp_min(torch.addcmul(qb.square(), qa * 4.0, qc), floor)\n\
         theta = torch.clamp(qc * 2.0 / (qb + torch.sqrt(disc)), 0.0, 1.0)\n\
         out = torch.addcmul(xk, theta, wk)\n{theta}{}",
        bin_source(true, s.circular),
        finish_source(s.circular)
    );
    let kind = if s.circular { "CircularRationalQuadraticSpline" } else { "RationalQuadraticSpline" };
    Ok(super::script_methods(kind, &forward, &inverse)
        .int("p", s.params_per_feature())
        .int("k", k)
        .int("k2", 2 * k)
        .int("km1", k - 1)
        .int("nd", k - 1 + s.circular as i64)
        .float("b", b)
        .float("neg_b", -b)
        .float("two_b", 2.0 * b)
        .float("scale", 2.0 * b * (1.0 - m * k as f64))
        .float("min_size", 2.0 * b * m)
        .float("offset", s.derivative_offset())
        .float("min_d", s.min_derivative)
        .float("floor64", f64::MIN_POSITIVE)
        .float("floor32", f32::MIN_POSITIVE as f64))
}
