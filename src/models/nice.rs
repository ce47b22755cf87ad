//! NICE (Dinh, Krueger & Bengio, 2015): additive couplings with MLP conditioners on alternating
//! halves, then a learned diagonal scaling. Volume-preserving except for the scaling.
//! Parameter names: `standardize.{mean,std}`, `blocks.{b}.coupling.net.*`, `scaling.log_scale`.
use super::realnvp::{context_note, push_standardize, vector_mask, VectorSpec};
use super::FlowModel;
use crate::config::Config;
use crate::flows::{Additive, Coupling, ElementwiseAffine, Sequential, StandardNormal};
use anyhow::{bail, Result};
use tch::nn;

pub struct Nice;

impl Nice {
    pub fn build(root: nn::Path, cfg: &Config, spec: &VectorSpec) -> Result<FlowModel> {
        let m = &cfg.model;
        let d = spec.dim;
        if d < 2 {
            bail!("NICE needs at least 2 dimensions, the data has {d}");
        }
        let mut flow = Sequential::new();
        push_standardize(&mut flow, &root, spec);
        for b in 0..m.blocks {
            let p = &root / "blocks" / b;
            let mask = vector_mask(m.mask, b, d, crate::config::PermutationChoice::None);
            flow.push(Coupling::with_mlp(&p / "coupling", mask, Box::new(Additive), d, spec.context_dim, m.width, m.depth, m.activation)?);
        }
        flow.push(ElementwiseAffine::scaling(&root / "scaling", d));
        let desc = format!(
            "NICE: {d} dims, {} additive blocks, MLP width {} depth {} ({:?}), {:?} masks, standardize {}{}",
            m.blocks, m.width, m.depth, m.activation, m.mask, spec.standardize, context_note(spec)
        );
        Ok(FlowModel { event_shape: vec![d], flow, base: Box::new(StandardNormal), n_classes: None, desc })
    }
}
