//! Neural spline flows (Durkan, Bekasov, Murray & Papamakarios, 2019) on vectors, with
//! rational-quadratic splines of `bins` bins on `[-tail_bound, tail_bound]`:
//! - NSF-AR (`structure = "autoregressive"`): MAF's stack ([`super::maf::autoregressive_stack`])
//!   with splines; parameter names `blocks.{b}.made.*`;
//! - NSF-C (`structure = "coupling"`): `blocks × (spline coupling with an MLP conditioner on
//!   the `mask`ed features, [norm], [permutation])`; names `blocks.{b}.coupling.net.*`.
//!
//! In both, `standardize.*` first, the norm and permutation between the layers, `base.*` last.
use super::maf::{autoregressive_stack, push_between, stack_summary, vector_base};
use super::realnvp::{push_standardize, vector_mask, VectorSpec};
use super::FlowModel;
use crate::config::{Config, StructureChoice};
use crate::flows::{Coupling, RationalQuadraticSpline, Sequential};
use anyhow::{bail, Result};
use tch::nn;

pub struct Nsf;

impl Nsf {
    /// `spec.context_dim > 0` builds p(x | c): every conditioner reads the context.
    pub fn build(root: nn::Path, cfg: &Config, spec: &VectorSpec) -> Result<FlowModel> {
        let context_dim = spec.context_dim;
        let m = &cfg.model;
        let d = spec.dim;
        let spline = RationalQuadraticSpline::new(m.bins, m.tail_bound)?;
        let what = format!("{} bins on [-{}, {}]", m.bins, m.tail_bound, m.tail_bound);
        match m.structure {
            StructureChoice::Autoregressive => {
                let model = autoregressive_stack(root, m, spec, context_dim, false, &|| Box::new(spline))?;
                let desc = format!(
                    "NSF-AR: {d} dims, {} spline autoregressive layers ({what}), {}, context {context_dim}, standardize {}",
                    m.blocks,
                    stack_summary(m),
                    spec.standardize
                );
                Ok(FlowModel { desc, ..model })
            }
            StructureChoice::Coupling => {
                if d < 2 {
                    bail!("NSF with model.structure = \"coupling\" needs at least 2 dimensions, the data has {d}");
                }
                let mut flow = Sequential::new();
                push_standardize(&mut flow, &root, spec);
                for b in 0..m.blocks {
                    let p = &root / "blocks" / b;
                    let mask = vector_mask(m.mask, b, d, m.permutation);
                    flow.push(Coupling::with_mlp(&p / "coupling", mask, Box::new(spline), d, context_dim, m.width, m.depth, m.activation)?);
                    if b + 1 < m.blocks {
                        push_between(&mut flow, &p, m, d);
                    }
                }
                let desc = format!(
                    "NSF-C: {d} dims, {} spline couplings ({what}), MLP width {} depth {} ({:?}), {:?} masks, norm {:?}, permutation {:?}, base {:?}, context {context_dim}, standardize {}",
                    m.blocks, m.width, m.depth, m.activation, m.mask, m.norm, m.permutation, m.base, spec.standardize
                );
                Ok(FlowModel { event_shape: vec![d], flow, base: vector_base(&root, m.base, d), n_classes: None, desc })
            }
        }
    }
}
