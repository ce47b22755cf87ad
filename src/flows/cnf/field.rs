//! The augmented dynamics of one CNF solve over `s ∈ [0, 1]`: the state is
//! `[z [B, D], log-det [B], (kinetic, jacobian) [B, 2]]` (the last only when regularising) and
//! its derivative `[T·f, tr(∂(T·f)/∂z), (‖T·f‖², ‖∂(T·f)/∂z‖²_F)]`.
//!
//! `T` is folded into the last layer's affine map, so the net returns `dz/ds` directly and the
//! vector-Jacobian products give the trace of `∂(dz/ds)/∂z` without another batch-sized multiply.
use super::{Cnf, Noise, TraceMode, EXACT_TRACE_ROWS};
use anyhow::Result;
use tch::Tensor;

/// One chunk of the exact trace: `copies` stacked copies of the batch, copy `k` with the
/// cotangent `e_{first + k}`.
struct Chunk {
    copies: i64,
    /// `[copies·B, D]`: row block `k` holds the basis vector `e_{first + k}`.
    basis: Tensor,
    cond: Option<Tensor>,
}

pub(super) struct Field<'a> {
    cnf: &'a Cnf,
    end_time: Tensor,
    cond: Option<&'a Tensor>,
    regularise: bool,
    graph: bool,
    batch: i64,
    chunks: Vec<Chunk>,
    /// Hutchinson's `ε [B, D]`, fixed for the whole solve.
    noise: Option<Tensor>,
}

impl<'a> Field<'a> {
    pub(super) fn new(cnf: &'a Cnf, x: &Tensor, cond: Option<&'a Tensor>, mode: TraceMode, regularise: bool, graph: bool) -> Result<Self> {
        let (batch, dim) = (x.size()[0], cnf.dim());
        let like = (x.kind(), x.device());
        let end_time = if graph { cnf.end_time()? } else { cnf.end_time()?.f_detach()? };
        let mut chunks = vec![];
        let mut noise = None;
        let _g = tch::no_grad_guard();
        match mode {
            TraceMode::Exact => {
                let per_chunk = (EXACT_TRACE_ROWS / batch.max(1)).clamp(1, dim);
                let eye = Tensor::f_eye(dim, like)?;
                let mut first = 0;
                while first < dim {
                    let copies = per_chunk.min(dim - first);
                    let basis = eye.f_narrow(0, first, copies)?.f_repeat_interleave_self_int(batch, Some(0), None)?;
                    let cond = match cond {
                        Some(c) if copies > 1 => Some(c.f_repeat([copies, 1])?),
                        Some(c) => Some(c.shallow_clone()),
                        None => None,
                    };
                    chunks.push(Chunk { copies, basis, cond });
                    first += copies;
                }
            }
            TraceMode::Hutchinson(kind) => {
                noise = Some(match kind {
                    Noise::Rademacher => Tensor::f_randint(2, [batch, dim], like)?.f_mul_scalar(2.0)?.f_sub_scalar(1.0)?,
                    Noise::Gaussian => Tensor::f_randn([batch, dim], like)?,
                });
            }
        }
        Ok(Field { cnf, end_time, cond, regularise, graph, batch, chunks, noise })
    }

    /// A tensor the vector-Jacobian product can be taken against: `z` itself when it is already
    /// part of the graph being built, else a detached leaf that requires grad (never the
    /// caller's tensor: its flag stays as it was).
    fn vjp_input(&self, z: Tensor) -> Result<Tensor> {
        if self.graph && z.requires_grad() {
            Ok(z)
        } else {
            Ok(z.f_detach()?.set_requires_grad(true))
        }
    }

    /// `u · (∂out/∂input)` for a fixed cotangent `u` (zeros when `out` does not depend on it).
    fn vjp(&self, out: &Tensor, input: &Tensor, u: &Tensor) -> Result<Tensor> {
        let scalar = out.f_mul(u)?.f_sum(out.kind())?;
        let g = Tensor::f_run_backward(&[scalar], &[input], self.graph, self.graph)?.pop().expect("one input");
        if g.defined() {
            Ok(g)
        } else {
            Ok(input.f_zeros_like()?)
        }
    }

    pub(super) fn eval(&mut self, s: f64, y: &[Tensor]) -> Result<Vec<Tensor>> {
        let out = tch::with_grad(|| self.eval_in_grad_mode(s, y))?;
        if self.graph {
            Ok(out)
        } else {
            out.iter().map(|t| Ok(t.f_detach()?)).collect()
        }
    }

    fn eval_in_grad_mode(&self, s: f64, y: &[Tensor]) -> Result<Vec<Tensor>> {
        let b = self.batch;
        let t = self.end_time.f_mul_scalar(s)?;
        let mut maps = self.cnf.net.at_time(&t)?;
        let (w, bias) = maps.pop().expect("at least one layer");
        maps.push((w.f_mul(&self.end_time)?, bias.f_mul(&self.end_time)?));
        let want_frob = self.regularise && self.cnf.options.jacobian_weight > 0.0;
        let sum1 = |t: &Tensor| t.f_sum_dim_intlist(Some(&[1i64][..]), false, None);
        let (velocity, trace, frob) = if let Some(eps) = &self.noise {
            let z = self.vjp_input(y[0].shallow_clone())?;
            let v = self.cnf.net.apply(&maps, &z, self.cond)?;
            let g = self.vjp(&v, &z, eps)?;
            let frob = if want_frob { Some(sum1(&g.f_square()?)?) } else { None };
            (v, sum1(&g.f_mul(eps)?)?, frob)
        } else {
            let mut velocity = None;
            let mut trace: Option<Tensor> = None;
            let mut frob: Option<Tensor> = None;
            for c in &self.chunks {
                let z = if c.copies > 1 { y[0].f_repeat([c.copies, 1])? } else { y[0].shallow_clone() };
                let z = self.vjp_input(z)?;
                let v = self.cnf.net.apply(&maps, &z, c.cond.as_ref())?;
                let g = self.vjp(&v, &z, &c.basis)?;
                // Row block k of g is row (first + k) of the Jacobian: its diagonal entry sits
                // where the basis has its one.
                let per_copy = |t: Tensor| -> Result<Tensor> {
                    Ok(t.f_view([c.copies, b])?.f_sum_dim_intlist(Some(&[0i64][..]), false, None)?)
                };
                let tr = per_copy(sum1(&g.f_mul(&c.basis)?)?)?;
                trace = Some(match trace {
                    Some(acc) => acc.f_add(&tr)?,
                    None => tr,
                });
                if want_frob {
                    let fr = per_copy(sum1(&g.f_square()?)?)?;
                    frob = Some(match frob {
                        Some(acc) => acc.f_add(&fr)?,
                        None => fr,
                    });
                }
                if velocity.is_none() {
                    velocity = Some(if c.copies > 1 { v.f_narrow(0, 0, b)? } else { v });
                }
            }
            (velocity.expect("at least one chunk"), trace.expect("at least one chunk"), frob)
        };
        let mut out = vec![velocity, trace];
        if self.regularise {
            let ke = sum1(&out[0].f_square()?)?;
            let frob = match frob {
                Some(f) => f,
                None => ke.f_zeros_like()?,
            };
            out.push(Tensor::f_stack(&[ke, frob], 1)?);
        }
        Ok(out)
    }
}
