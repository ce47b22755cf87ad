//! MAF (Papamakarios, Pavlakou & Murray, 2017) and IAF (Kingma et al., 2016) on vectors:
//! `[standardize] → blocks × autoregressive layer (a MADE × an affine map), with [norm] and
//! [permutation] between the layers → base`. An IAF is the same stack with every layer wrapped
//! in [`Inverse`]: sampling in one pass per layer, density in D. NSF-AR
//! ([`super::nsf`]) is this stack with splines.
//!
//! Parameter names: `standardize.{mean,std}`, `blocks.{b}.made.*` (its `order` and masks are
//! buffers), `blocks.{b}.{norm,permutation}.*`, `base.{loc,log_std}`.
use super::realnvp::{push_standardize, VectorSpec};
use super::FlowModel;
use crate::config::{BaseChoice, Config, DegreesChoice, InverseChoice, MadeOrderChoice, ModelConfig, NormChoice, PermutationChoice};
use crate::flows::{
    ActNorm, ActNormParam, Affine, Autoregressive, Base, BatchNormFlow, DiagGaussian, ElementwiseBijection, Flow, HiddenDegrees,
    InvConv1x1, InvConv1x1Lu, Inverse, InverseMethod, Made, MadeOptions, MadeOrder, Permutation, Sequential, StandardNormal,
};
use anyhow::Result;
use tch::nn;

/// MAF (or, with `inverted`, IAF).
pub struct Maf;

impl Maf {
    /// `spec.context_dim > 0` builds p(x | c): every MADE reads the context `[B, context_dim]`.
    pub fn build(root: nn::Path, cfg: &Config, spec: &VectorSpec, inverted: bool) -> Result<FlowModel> {
        let context_dim = spec.context_dim;
        let m = &cfg.model;
        let name = if inverted { "IAF" } else { "MAF" };
        let model = autoregressive_stack(root, m, spec, context_dim, inverted, &|| Box::new(Affine::exp_tanh()))?;
        let desc = format!(
            "{name}: {} dims, {} affine autoregressive layers, {}, context {context_dim}, standardize {}",
            spec.dim,
            m.blocks,
            stack_summary(m),
            spec.standardize
        );
        Ok(FlowModel { desc, ..model })
    }
}

/// The MADE, between-layer and base settings, for descriptions.
pub fn stack_summary(m: &ModelConfig) -> String {
    format!(
        "MADE width {} {} {} ({:?}), {:?} order, {:?} degrees, {:?} inverse, norm {:?}, permutation {:?}, base {:?}",
        m.width,
        m.depth,
        if m.residual { "residual blocks" } else { "hidden layers" },
        m.activation,
        m.made_order,
        m.made_degrees,
        m.inverse,
        m.norm,
        m.permutation,
        m.base
    )
}

/// The order of block `b`'s MADE.
fn made_order(choice: MadeOrderChoice, b: i64) -> MadeOrder {
    match choice {
        MadeOrderChoice::Natural => MadeOrder::Natural,
        MadeOrderChoice::Reversed => MadeOrder::Reversed,
        MadeOrderChoice::Random => MadeOrder::Random,
        MadeOrderChoice::Alternating if b % 2 == 0 => MadeOrder::Natural,
        MadeOrderChoice::Alternating => MadeOrder::Reversed,
    }
}

/// `blocks` autoregressive layers whose bijection `transform()` makes (each wrapped in
/// [`Inverse`] when `inverted`), with the configured norm and permutation between them, over
/// the configured base. The description is left to the caller.
pub fn autoregressive_stack(
    root: nn::Path,
    m: &ModelConfig,
    spec: &VectorSpec,
    context_dim: i64,
    inverted: bool,
    transform: &dyn Fn() -> Box<dyn ElementwiseBijection>,
) -> Result<FlowModel> {
    let d = spec.dim;
    let mut flow = Sequential::new();
    push_standardize(&mut flow, &root, spec);
    let inverse_method = match m.inverse {
        InverseChoice::Sequential => InverseMethod::Sequential,
        InverseChoice::Jacobi => InverseMethod::Jacobi { tol: m.jacobi_tol },
    };
    for b in 0..m.blocks {
        let p = &root / "blocks" / b;
        let t = transform();
        let o = MadeOptions {
            features: d,
            params_per_feature: t.params_per_feature(),
            context_dim,
            hidden: m.width,
            layers: m.depth,
            order: made_order(m.made_order, b),
            degrees: match m.made_degrees {
                DegreesChoice::Cyclic => HiddenDegrees::Cyclic,
                DegreesChoice::Random => HiddenDegrees::Random,
            },
            residual: m.residual,
            activation: m.activation,
        };
        let layer = Autoregressive::new(Made::new(&p / "made", &o)?, t, inverse_method)?;
        if inverted {
            flow.push(Inverse(layer));
        } else {
            flow.push(layer);
        }
        if b + 1 < m.blocks {
            push_between(&mut flow, &p, m, d);
        }
    }
    Ok(FlowModel { event_shape: vec![d], flow, base: vector_base(&root, m.base, d), n_classes: None, desc: String::new() })
}

/// Normalisation then a permutation between two layers on `d` features (nflows' MAF and NSF:
/// batch norm between the layers; reversals, random permutations or an LU-parameterised linear
/// map), under `p / "norm"` and `p / "permutation"`.
pub fn push_between(flow: &mut Sequential, p: &nn::Path, m: &ModelConfig, d: i64) {
    match m.norm {
        NormChoice::Batchnorm => flow.push(BatchNormFlow::new(p / "norm", d, 2)),
        NormChoice::Actnorm => flow.push(ActNorm::new(p / "norm", d, 2, ActNormParam::Log)),
        NormChoice::None => {}
    }
    let perm: Option<Box<dyn Flow>> = match m.permutation {
        PermutationChoice::Reverse => Some(Box::new(Permutation::reverse(p / "permutation", d))),
        PermutationChoice::Shuffle => Some(Box::new(Permutation::shuffle(p / "permutation", d))),
        PermutationChoice::InvconvLu => Some(Box::new(InvConv1x1Lu::new(p / "permutation", d))),
        PermutationChoice::Invconv => Some(Box::new(InvConv1x1::new(p / "permutation", d))),
        PermutationChoice::None => None,
    };
    if let Some(perm) = perm {
        flow.layers.push(perm);
    }
}

/// The base of a vector model: `N(0, I)` or a learned diagonal Gaussian under `root / "base"`.
pub fn vector_base(root: &nn::Path, choice: BaseChoice, d: i64) -> Box<dyn Base> {
    match choice {
        BaseChoice::DiagGaussian => Box::new(DiagGaussian::new(root / "base", d)),
        BaseChoice::Normal => Box::new(StandardNormal),
    }
}
