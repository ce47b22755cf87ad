//! The image field of a continuous flow: FFJORD's `ConcatSquashConv2d` layers,
//! `y = conv(x) · σ(W_g t + b_g) + W_b t` per output channel, 3×3 convolutions with padding 1,
//! smooth activations between them ([`OdeActivation`]) and none after the last.
//!
//! The CNF's state stays flat `[B, C·H·W]` (so the solvers, the augmented dynamics, the
//! counters and the RNODE regularisers are the vector CNF's, unchanged): the net views `z` as
//! `[B, C, H, W]` on the way in and flattens `dz/dt` on the way out. A context `[B, K]` enters
//! as `K` constant channels beside the image.
//!
//! Jacobian-vector products are carried through the layers beside the values, as for the
//! dense field ([`super::jvp`]): a conv's tangent is the conv without its bias, an activation's
//! is scaled by `σ'(a)` ([`OdeActivation::scale_tangent`]). The tangent index is the outer
//! dimension `[K, B, C, H, W]`, folded into the batch for each conv.
//!
//! **Exact trace by colouring.** With `n` layers of 3×3 convs, output pixel `p` depends on input
//! pixel `q` only when `|p − q|∞ ≤ n`, so the Jacobian is banded. Pixels of one channel whose
//! rows and columns agree modulo `P = n + 1` never see each other: for the indicator `v` of such a
//! set (a *colour*), `(J v)_j = J_jj` on every member `j`, and `tr J = Σ_colours vᵀ J v` exactly
//! (Curtis, Powell & Reid's column compression). That takes `C·min(P, H)·min(P, W)` tangents
//! instead of `C·H·W`: 16 instead of 784 on a 28×28 image with three convs. Full Jacobian
//! columns (the RNODE Frobenius norm with the exact trace) still take the one-hot images, which
//! are the colours of period `(H, W)`. All tangents are the same for every row until the first
//! activation.
//!
//! Parameter names are the dense field's: `{i}.linear.weight [out, in, 3, 3]`,
//! `{i}.linear.bias [out]`, `{i}.gate.{weight,bias} [out]`, `{i}.hyper_bias.weight [out]`.
use super::jvp::Tangents;
use super::net::{ConcatSquash, OdeActivation, OdeLayers, OdeNet};
use anyhow::{bail, Result};
use tch::{nn, Tensor};

/// Kernel size of every conv (FFJORD's `ksize = 3`, stride 1, padding 1: the image keeps its size).
pub const KERNEL: i64 = 3;

impl OdeNet {
    /// A conv field on images `shape = [C, H, W]` (+ `context_dim` constant channels) with
    /// hidden channel counts `hidden` (FFJORD's `dims`), returning `C` channels.
    pub fn conv(p: nn::Path, shape: [i64; 3], context_dim: i64, hidden: &[i64], activation: OdeActivation) -> Result<Self> {
        if shape.iter().any(|s| *s < 1) || context_dim < 0 {
            bail!("conv ODE net: needs an image shape [C, H, W] of positive sizes and context_dim >= 0 (got {shape:?}, {context_dim})");
        }
        if let Some(w) = hidden.iter().find(|w| **w < 1) {
            bail!("conv ODE net: hidden channel counts must be >= 1, got {w} in {hidden:?}");
        }
        let mut c_in = shape[0] + context_dim;
        let mut layers = vec![];
        for (i, c_out) in hidden.iter().copied().chain(std::iter::once(shape[0])).enumerate() {
            layers.push(ConcatSquash::with_weight(&p / i, &[c_out, c_in, KERNEL, KERNEL]));
            c_in = c_out;
        }
        Ok(OdeNet { layers: OdeLayers::ConcatSquashConv { layers, shape }, activation, dim: shape.iter().product(), context_dim })
    }

    /// `[C, H, W]` of a conv field, `None` for a dense one.
    pub fn image_shape(&self) -> Option<[i64; 3]> {
        match &self.layers {
            OdeLayers::ConcatSquashConv { shape, .. } => Some(*shape),
            _ => None,
        }
    }

    /// Tangents the exact trace needs ([`super::jvp::Tangents::BasisTrace`] ranges over them):
    /// the `dim` basis vectors of a dense field, the colours of a conv field (module docs).
    pub fn trace_probes(&self) -> i64 {
        match &self.layers {
            OdeLayers::ConcatSquashConv { layers, shape } => {
                let (py, px) = colour_period(layers.len() as i64, *shape);
                shape[0] * py * px
            }
            _ => self.dim,
        }
    }
}

/// The colour period along rows and columns for `n` conv layers on `shape`: one more than the
/// reach of the field's receptive field, at most the image's size (where every pixel is its own
/// colour).
pub(super) fn colour_period(n: i64, [_, h, w]: [i64; 3]) -> (i64, i64) {
    let p = n * (KERNEL / 2) + 1;
    (p.min(h), p.min(w))
}

/// The indicator images of colours `first .. first + count` of period `(py, px)`, `[count, C, H, W]`:
/// colour `k = (c·py + dy)·px + dx` holds channel `c`'s pixels `(y, x)` with `y ≡ dy (mod py)`,
/// `x ≡ dx (mod px)`. With period `(H, W)` they are the one-hot images `e_first ..` in order.
pub(super) fn colours(shape: [i64; 3], (py, px): (i64, i64), first: i64, count: i64, like: &Tensor) -> Result<Tensor> {
    let [c, h, w] = shape;
    let int = (tch::Kind::Int64, like.device());
    let k = Tensor::f_arange_start(first, first + count, int)?.f_reshape([count, 1, 1, 1])?;
    let (ch, dy, dx) = (k.f_floor_divide_scalar(py * px)?, k.f_floor_divide_scalar(px)?.f_remainder(py)?, k.f_remainder(px)?);
    let chan = Tensor::f_arange(c, int)?.f_reshape([1, c, 1, 1])?.f_eq_tensor(&ch)?;
    let rows = Tensor::f_arange(h, int)?.f_remainder(py)?.f_reshape([1, 1, h, 1])?.f_eq_tensor(&dy)?;
    let cols = Tensor::f_arange(w, int)?.f_remainder(px)?.f_reshape([1, 1, 1, w])?.f_eq_tensor(&dx)?;
    Ok(chan.f_logical_and(&rows)?.f_logical_and(&cols)?.f_to_kind(like.kind())?)
}

/// `conv(x, w) + b` for `x [..., C, H, W]` with any number of leading dimensions (folded into
/// the batch for the conv and restored after).
fn conv(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let s = x.size();
    let lead = &s[..s.len() - 3];
    let flat = x.f_reshape([-1, s[s.len() - 3], s[s.len() - 2], s[s.len() - 1]])?;
    let y = flat.f_conv2d(w, b, [1, 1], [KERNEL / 2, KERNEL / 2], [1, 1], 1)?;
    let mut shape = lead.to_vec();
    shape.extend(&y.size()[1..]);
    Ok(y.f_reshape(&shape)?)
}

/// `z [N, C·H·W]` as `[N, C, H, W]`, with the context's constant channels after the image's.
fn image_input(shape: [i64; 3], z: &Tensor, cond: Option<&Tensor>) -> Result<Tensor> {
    let [c, h, w] = shape;
    let n = z.size()[0];
    let x = z.f_reshape([n, c, h, w])?;
    Ok(match cond {
        Some(k) => {
            let k = k.f_to_kind(z.kind())?;
            let planes = k.f_reshape([n, k.size()[1], 1, 1])?.f_expand([n, k.size()[1], h, w], false)?;
            Tensor::f_cat(&[x, planes], 1)?
        }
        None => x,
    })
}

/// The layers on `x`: the output `[N, C, H, W]` and each hidden layer's pre-activation and
/// output (what the tangents' scaling needs).
fn layers(net: &OdeNet, maps: &[(Tensor, Tensor)], x: Tensor) -> Result<(Tensor, Vec<(Tensor, Tensor)>)> {
    let last = maps.len() - 1;
    let mut h = x;
    let mut hidden = Vec::with_capacity(last);
    for (i, (w, b)) in maps.iter().enumerate() {
        let a = conv(&h, w, Some(b))?;
        if i < last {
            h = net.activation.apply(&a)?;
            hidden.push((a, h.shallow_clone()));
        } else {
            h = a;
        }
    }
    Ok((h, hidden))
}

/// `f(z, t)` flat `[N, C·H·W]`, given the maps at `t`.
pub(super) fn apply(net: &OdeNet, shape: [i64; 3], maps: &[(Tensor, Tensor)], z: &Tensor, cond: Option<&Tensor>) -> Result<Tensor> {
    let (v, _) = layers(net, maps, image_input(shape, z, cond)?)?;
    Ok(v.f_reshape([z.size()[0], -1])?)
}

/// As [`super::jvp::Prepared::apply_with_tangents`] for a conv field: the flat field `[B, D]`
/// and, per tangent set, the Jacobian columns `[count, B, D]` (`Basis`), the part of the trace
/// from colours `first .. first + count` `[B]` (`BasisTrace`), or `J ε` as `[1, B, D]` (`Probe`).
pub(super) fn apply_with_tangents(
    net: &OdeNet,
    shape: [i64; 3],
    maps: &[(Tensor, Tensor)],
    z: &Tensor,
    cond: Option<&Tensor>,
    sets: &[Tangents],
) -> Result<(Tensor, Vec<Tensor>)> {
    let b = z.size()[0];
    let (v, hidden) = layers(net, maps, image_input(shape, z, cond)?)?;
    // The tangents see only the image's input channels: the context is not differentiated.
    let w_z = maps[0].0.f_narrow(1, 0, shape[0])?;
    let period = colour_period(maps.len() as i64, shape);
    let mut out = Vec::with_capacity(sets.len());
    for set in sets {
        // The tangent images: probes `[B, ...]`, colours or one-hots `[count, ...]`.
        let v = match set {
            Tangents::Probe(eps) => eps.f_reshape([b, shape[0], shape[1], shape[2]])?,
            Tangents::Basis { first, count } => colours(shape, (shape[1], shape[2]), *first, *count, z)?,
            Tangents::BasisTrace { first, count } => colours(shape, period, *first, *count, z)?,
        };
        // After the first conv: `[1, B, ...]` for probes, `[count, 1, ...]` for the others (the
        // same for every row until an activation's scaling).
        let mut jt = conv(&v, &w_z, None)?.f_unsqueeze(if let Tangents::Probe(_) = set { 0 } else { 1 })?;
        for ((a, h), (w, _)) in hidden.iter().zip(&maps[1..]) {
            jt = conv(&net.activation.scale_tangent(&jt, a, h)?, w, None)?;
        }
        let k = jt.size()[0];
        let columns = jt.f_expand([k, b, shape[0], shape[1], shape[2]], false)?.f_reshape([k, b, -1])?;
        out.push(match set {
            // Σ over the colour's pixels of (J v)_j, per row.
            Tangents::BasisTrace { count, .. } => columns.f_mul(&v.f_reshape([*count, 1, -1])?)?.f_sum_dim_intlist(Some(&[0i64, 2][..]), false, None)?,
            _ => columns,
        });
    }
    Ok((v.f_reshape([b, -1])?, out))
}

/// `f(z_n, t_n)` with a time per row, `t [N, 1]` (flow matching): each layer's gate and time
/// bias per row, broadcast over its channels' pixels.
pub(super) fn forward_per_row(net: &OdeNet, layers: &[ConcatSquash], shape: [i64; 3], t: &Tensor, z: &Tensor, cond: Option<&Tensor>) -> Result<Tensor> {
    let n = z.size()[0];
    let per_channel = |v: Tensor| v.f_unsqueeze(-1)?.f_unsqueeze(-1);
    let mut h = image_input(shape, z, cond)?;
    for (i, l) in layers.iter().enumerate() {
        let gate = per_channel(t.f_mul(&l.gate_weight)?.f_add(&l.gate_bias)?.f_sigmoid()?)?;
        h = conv(&h, &l.weight, Some(&l.bias))?.f_mul(&gate)?.f_add(&per_channel(t.f_mul(&l.hyper_bias)?)?)?;
        if i + 1 < layers.len() {
            h = net.activation.apply(&h)?;
        }
    }
    Ok(h.f_reshape([n, -1])?)
}
