//! The field during one solve: its affine maps at each time, with what does not depend on time
//! prepared once per solve, and its Jacobian-vector products carried through the layers beside
//! the values (forward mode by hand: the net is affine maps and elementwise activations).
//!
//! Nothing here calls autograd: the trace is plain tensor ops, so a training step
//! back-propagates through them once (no double backward), and under no-grad nothing is
//! recorded at all.
use super::net::{OdeLayers, OdeNet};
use anyhow::Result;
use tch::Tensor;

/// Which Jacobian-vector products [`Prepared::apply_with_tangents`] carries along.
pub enum Tangents<'a> {
    /// The basis vectors `e_first .. e_{first+count-1}`: those columns of the Jacobian, `[count, B, D]`.
    Basis { first: i64, count: i64 },
    /// Only the diagonal entries of those columns, summed: their part of the trace, `[B]`. Skips
    /// the last layer's product. For a conv field `first .. first + count` number colours
    /// instead of basis vectors (see [`super::conv`]; [`OdeNet::trace_probes`] counts them).
    BasisTrace { first: i64, count: i64 },
    /// One probe per row, `ε [B, D]`: `J ε` as `[1, B, D]` (Hutchinson).
    Probe(&'a Tensor),
}

/// The net for one solve: the output scaled by `scale` (the end time `T`, so the net returns
/// `dz/ds`), and for an MLP every map but the first bias fixed in advance (computed once, so the
/// backward pass also meets those ops once per solve instead of once per evaluation).
pub struct Prepared<'a> {
    net: &'a OdeNet,
    scale: Tensor,
    mlp: Option<MlpMaps>,
    /// MLP only: per basis chunk `(first, count)`, the tangents after the first linear map
    /// `[count, 1, H]` and the last layer's rows `[count, 1, H]` (both fixed during a solve).
    basis: Vec<((i64, i64), Tensor, Tensor)>,
}

struct MlpMaps {
    freqs: i64,
    /// Columns of the first weight that read the time features, and the rest (`z`, context).
    w_t: Tensor,
    first: (Tensor, Tensor),
    rest: Vec<(Tensor, Tensor)>,
}

impl OdeNet {
    pub fn prepare(&self, scale: &Tensor) -> Result<Prepared<'_>> {
        let mlp = match &self.layers {
            OdeLayers::ConcatSquash(_) | OdeLayers::ConcatSquashConv { .. } => None,
            OdeLayers::Mlp { linears, freqs } => {
                let n = linears.len();
                let scaled = |i: usize| -> Result<(Tensor, Tensor)> {
                    let (w, b) = &linears[i];
                    Ok(if i + 1 == n { (w.f_mul(scale)?, b.f_mul(scale)?) } else { (w.shallow_clone(), b.shallow_clone()) })
                };
                let (w0, b0) = scaled(0)?;
                let nt = 2 * freqs;
                let w_t = w0.f_narrow(1, 0, nt)?;
                let w_z = w0.f_narrow(1, nt, w0.size()[1] - nt)?;
                let rest = (1..n).map(scaled).collect::<Result<Vec<_>>>()?;
                Some(MlpMaps { freqs: *freqs, w_t, first: (w_z, b0), rest })
            }
        };
        Ok(Prepared { net: self, scale: scale.shallow_clone(), mlp, basis: vec![] })
    }
}

impl Prepared<'_> {
    /// Fixes what the basis chunks need from time-independent weights (MLP fields with hidden
    /// layers), once per solve.
    pub fn with_basis(mut self, chunks: &[(i64, i64)]) -> Result<Self> {
        if let Some(m) = &self.mlp {
            if let Some((w_last, _)) = m.rest.last() {
                let w_z = m.first.0.f_narrow(1, 0, self.net.dim)?;
                for &(first, count) in chunks {
                    let start = w_z.f_narrow(1, first, count)?.f_tr()?.f_contiguous()?.f_unsqueeze(1)?;
                    let rows = w_last.f_narrow(0, first, count)?.f_unsqueeze(1)?;
                    self.basis.push(((first, count), start, rows));
                }
            }
        }
        Ok(self)
    }

    fn fixed_basis(&self, first: i64, count: i64) -> Option<(&Tensor, &Tensor)> {
        self.basis.iter().find(|(k, _, _)| *k == (first, count)).map(|(_, s, r)| (s, r))
    }

    /// The affine maps at time `t` (0-dim), the last one scaled.
    pub fn maps_at(&self, t: &Tensor) -> Result<Vec<(Tensor, Tensor)>> {
        match &self.mlp {
            Some(m) => {
                let b = m.first.1.f_addmv(&m.w_t, &OdeNet::time_features(t, m.freqs)?)?;
                let mut maps = Vec::with_capacity(1 + m.rest.len());
                maps.push((m.first.0.shallow_clone(), b));
                maps.extend(m.rest.iter().map(|(w, b)| (w.shallow_clone(), b.shallow_clone())));
                Ok(maps)
            }
            None => {
                let mut maps = self.net.at_time(t)?;
                let (w, b) = maps.pop().expect("at least one layer");
                maps.push((w.f_mul(&self.scale)?, b.f_mul(&self.scale)?));
                Ok(maps)
            }
        }
    }

    /// The (scaled) field at `maps` and, for each tangent set, its Jacobian-vector products per
    /// row: a tangent goes through `W` and is scaled by `σ'(a)` beside the values. The tangent
    /// index is the outer dimension, so the scaling broadcasts over whole contiguous `[B, H]`
    /// blocks and every linear map is one GEMM over `K·B` rows. The sets share one forward pass.
    pub fn apply_with_tangents(&self, maps: &[(Tensor, Tensor)], z: &Tensor, cond: Option<&Tensor>, sets: &[Tangents]) -> Result<(Tensor, Vec<Tensor>)> {
        let net = self.net;
        if let OdeLayers::ConcatSquashConv { shape, .. } = &net.layers {
            return super::conv::apply_with_tangents(net, *shape, maps, z, cond, sets);
        }
        let b = z.size()[0];
        let mut h = match cond {
            Some(c) => Tensor::f_cat(&[z, &c.f_to_kind(z.kind())?], 1)?,
            None => z.shallow_clone(),
        };
        let last = maps.len() - 1;
        // Pre-activations and outputs of the hidden layers, for the tangents' scaling.
        let mut hidden = Vec::with_capacity(last);
        for (i, (w, bias)) in maps.iter().enumerate() {
            let a = h.f_linear(w, Some(bias))?;
            if i < last {
                h = net.activation.apply(&a)?;
                hidden.push((a, h.shallow_clone()));
            } else {
                h = a;
            }
        }
        let w_z = maps[0].0.f_narrow(1, 0, net.dim)?;
        let mut out = Vec::with_capacity(sets.len());
        for set in sets {
            let (first, count, diagonal_only) = match set {
                Tangents::Basis { first, count } => (*first, *count, false),
                Tangents::BasisTrace { first, count } => (*first, *count, last > 0),
                Tangents::Probe(_) => (0, 0, false),
            };
            let fixed = match set {
                Tangents::Probe(_) => None,
                _ => self.fixed_basis(first, count),
            };
            // After the first linear map: `[K, 1, H]` (the same for every row) or `[1, B, H]`.
            let mut jt = match (set, fixed) {
                (Tangents::Probe(eps), _) => eps.f_linear::<Tensor>(&w_z, None)?.f_unsqueeze(0)?,
                (_, Some((start, _))) => start.shallow_clone(),
                _ => w_z.f_narrow(1, first, count)?.f_tr()?.f_contiguous()?.f_unsqueeze(1)?,
            };
            for (i, ((a, hh), (w, _))) in hidden.iter().zip(&maps[1..]).enumerate() {
                jt = net.activation.scale_tangent(&jt, a, hh)?;
                if diagonal_only && i + 1 == last {
                    // Σ_k Σ_h W[first + k, h] · u[k, b, h]: the diagonal entries only.
                    let rows = match fixed {
                        Some((_, rows)) => rows.shallow_clone(),
                        None => w.f_narrow(0, first, count)?.f_unsqueeze(1)?,
                    };
                    jt = jt.f_mul(&rows)?.f_sum_dim_intlist(Some(&[0i64, 2][..]), false, None)?;
                } else {
                    jt = jt.f_linear::<Tensor>(w, None)?;
                }
            }
            if diagonal_only {
                out.push(jt);
                continue;
            }
            if jt.size()[1] != b {
                jt = jt.f_expand([-1, b, -1], false)?;
            }
            if let Tangents::BasisTrace { .. } = set {
                // A single affine layer: its Jacobian is the weight itself.
                jt = basis_trace(&jt, first, count)?;
            }
            out.push(jt);
        }
        Ok((h, out))
    }
}

/// The part of the trace in Jacobian columns `first .. first + count`, given those columns
/// `[count, B, D]`: column `first + k`'s diagonal entry is at feature `first + k`. `[B]`.
pub(super) fn basis_trace(columns: &Tensor, first: i64, count: i64) -> Result<Tensor> {
    Ok(columns.f_narrow(2, first, count)?.f_diagonal(0, 0, 2)?.f_sum_dim_intlist(Some(&[1i64][..]), false, None)?)
}
