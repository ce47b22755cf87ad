//! The augmented dynamics of one CNF solve over `s ∈ [0, 1]`: the state is
//! `[[z, log-det] [B, D + 1], (kinetic, jacobian) [B, 2]]` (the second only when regularising)
//! and its derivative `[[T·f, tr(∂(T·f)/∂z)], (‖T·f‖², ‖∂(T·f)/∂z‖²_F)]`. `z` and the log-det
//! share one tensor so the solver's arithmetic runs once over both (one tensor under error
//! control: Hairer's RMS norm over all its entries is the same as over the two).
//!
//! `T` is folded into the last layer's affine map, so the net returns `dz/ds` directly and its
//! Jacobian-vector products are those of `∂(dz/ds)/∂z`. The trace comes from
//! [`Prepared::apply_with_tangents`]: the exact one from the basis vectors (the diagonal of the
//! Jacobian only, or all its columns when the Frobenius norm is wanted, in chunks of at most
//! [`EXACT_TRACE_ROWS`] rows × tangents, divided by the pixels of a conv field), Hutchinson's
//! from one probe per row.
use super::jvp::{basis_trace, Prepared, Tangents};
use super::{Cnf, Noise, TraceMode, EXACT_TRACE_ROWS};
use anyhow::Result;
use tch::Tensor;

pub(super) struct Field<'a> {
    cnf: &'a Cnf,
    prep: Prepared<'a>,
    end_time: Tensor,
    cond: Option<&'a Tensor>,
    regularise: bool,
    /// Exact trace: `(first, count)` basis chunks.
    chunks: Vec<(i64, i64)>,
    /// Hutchinson's `ε [B, D]`, fixed for the whole solve.
    noise: Option<Tensor>,
}

impl<'a> Field<'a> {
    pub(super) fn new(cnf: &'a Cnf, x: &Tensor, cond: Option<&'a Tensor>, mode: TraceMode, regularise: bool) -> Result<Self> {
        let (batch, dim) = (x.size()[0], cnf.dim());
        let like = (x.kind(), x.device());
        let mut chunks = vec![];
        let mut noise = None;
        match mode {
            TraceMode::Exact => {
                // The Frobenius norm needs every Jacobian column; the trace alone, the net's probes
                // (a conv field's colours).
                let want_frob = regularise && cnf.options.jacobian_weight > 0.0;
                let probes = if want_frob { dim } else { cnf.net.trace_probes() };
                // A conv field's tangent row holds every pixel: fewer rows make the same memory.
                let pixels = cnf.net.image_shape().map_or(1, |[_, h, w]| h * w);
                let per_chunk = (EXACT_TRACE_ROWS / (batch * pixels).max(1)).clamp(1, probes);
                let mut first = 0;
                while first < probes {
                    let count = per_chunk.min(probes - first);
                    chunks.push((first, count));
                    first += count;
                }
            }
            TraceMode::Hutchinson(kind) => {
                let _g = tch::no_grad_guard();
                noise = Some(match kind {
                    Noise::Rademacher => Tensor::f_randint(2, [batch, dim], like)?.f_mul_scalar(2.0)?.f_sub_scalar(1.0)?,
                    Noise::Gaussian => Tensor::f_randn([batch, dim], like)?,
                });
            }
        }
        let end_time = cnf.end_time()?;
        let prep = cnf.net.prepare(&end_time)?.with_basis(&chunks)?;
        Ok(Field { cnf, prep, end_time, cond, regularise, chunks, noise })
    }

    pub(super) fn eval(&mut self, s: f64, y: &[Tensor]) -> Result<Vec<Tensor>> {
        let d = self.cnf.dim();
        let z = y[0].f_narrow(1, 0, d)?;
        let maps = self.prep.maps_at(&self.end_time.f_mul_scalar(s)?)?;
        let want_frob = self.regularise && self.cnf.options.jacobian_weight > 0.0;
        let sum_rows = |t: &Tensor, dims: &[i64]| t.f_sum_dim_intlist(Some(dims), false, None);
        let (velocity, trace, frob) = if let Some(eps) = &self.noise {
            let (v, jv) = self.prep.apply_with_tangents(&maps, &z, self.cond, &[Tangents::Probe(eps)])?;
            let jv = jv[0].f_squeeze_dim(0)?;
            let frob = if want_frob { Some(sum_rows(&jv.f_square()?, &[1])?) } else { None };
            (v, sum_rows(&jv.f_mul(eps)?, &[1])?, frob)
        } else {
            let sets: Vec<Tangents> = self
                .chunks
                .iter()
                .map(|&(first, count)| if want_frob { Tangents::Basis { first, count } } else { Tangents::BasisTrace { first, count } })
                .collect();
            let (v, parts) = self.prep.apply_with_tangents(&maps, &z, self.cond, &sets)?;
            let mut trace: Option<Tensor> = None;
            let mut frob: Option<Tensor> = None;
            for (&(first, count), part) in self.chunks.iter().zip(&parts) {
                let tr = if want_frob {
                    // part[k, b, :] is column (first + k) of row b's Jacobian: its diagonal entry
                    // is at position first + k.
                    let fr = sum_rows(&part.f_square()?, &[0, 2])?;
                    frob = Some(match frob {
                        Some(acc) => acc.f_add(&fr)?,
                        None => fr,
                    });
                    basis_trace(part, first, count)?
                } else {
                    part.shallow_clone()
                };
                trace = Some(match trace {
                    Some(acc) => acc.f_add(&tr)?,
                    None => tr,
                });
            }
            (v, trace.expect("at least one chunk"), frob)
        };
        let mut out = vec![Tensor::f_cat(&[&velocity, &trace.f_unsqueeze(1)?], 1)?];
        if self.regularise {
            let ke = sum_rows(&velocity.f_square()?, &[1])?;
            let frob = match frob {
                Some(f) => f,
                None => ke.f_zeros_like()?,
            };
            out.push(Tensor::f_stack(&[ke, frob], 1)?);
        }
        Ok(out)
    }
}
