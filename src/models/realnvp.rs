//! RealNVP (Dinh, Sohl-Dickstein & Bengio, 2017), built from the same zoo as Glow.
//!
//! - [`RealNvp`] on vectors: `[standardize] → blocks × (affine coupling with an MLP conditioner
//!   on alternating masks or halves → norm → permutation) → [diagonal Gaussian base]`.
//!   Parameter names: `standardize.{mean,std}`, `blocks.{b}.{coupling.net,norm,permutation}.*`,
//!   `base.{loc,log_std}`.
//! - [`RealNvpImage`]: per level `3 × checkerboard coupling → squeeze → 3 × channel coupling →
//!   split`, and `4 × checkerboard coupling` at the last level, with Glow's conv conditioner.
use super::FlowModel;
use crate::config::{BaseChoice, Config, MaskChoice, NormChoice, PermutationChoice};
use crate::flows::{
    ActNorm, ActNormParam, Affine, Alternating, Base, BatchNormFlow, ChannelHalves, Checkerboard, Coupling, DiagGaussian,
    ElementwiseAffine, Flatten, InvConv1x1Lu, LearnedPrior, Partition, Permutation, Sequential,
    SplitPrior, Squeeze, StandardNormal,
};
use anyhow::{bail, Result};
use tch::nn;

/// What a vector model needs beyond the config: its dimension, and the size of the context
/// its conditioners read (0: an unconditional model).
#[derive(Clone, Debug)]
pub struct VectorSpec {
    pub dim: i64,
    pub standardize: bool,
    pub context_dim: i64,
}

/// The mask of block `block`. Consecutive blocks must transform different features, so the mask
/// alternates, unless a reversal after each block already swaps the roles (always for halves,
/// for an even number of features with alternating masks): alternating both would cancel out
/// and leave half of the features untransformed.
pub fn vector_mask(choice: MaskChoice, block: i64, dim: i64, permutation: PermutationChoice) -> Box<dyn Partition> {
    let reversal_swaps = permutation == PermutationChoice::Reverse
        && match choice {
            MaskChoice::Alternating => dim % 2 == 0,
            MaskChoice::Halves => true,
        };
    let k = if reversal_swaps { 0 } else { block % 2 };
    match choice {
        MaskChoice::Alternating => Box::new(Alternating::new(k)),
        MaskChoice::Halves => Box::new(ChannelHalves::new(k == 1)),
    }
}

/// The optional standardisation layer first (statistics filled in from the training split).
pub fn push_standardize(flow: &mut Sequential, root: &nn::Path, spec: &VectorSpec) {
    if spec.standardize {
        let zeros = tch::Tensor::zeros([spec.dim], (tch::Kind::Float, tch::Device::Cpu));
        flow.push(ElementwiseAffine::standardize(root / "standardize", &zeros, &zeros.ones_like()));
    }
}

/// `, context K` for a conditional model's description.
pub fn context_note(spec: &VectorSpec) -> String {
    if spec.context_dim > 0 {
        format!(", context {}", spec.context_dim)
    } else {
        String::new()
    }
}

/// RealNVP on vectors.
pub struct RealNvp;

impl RealNvp {
    pub fn build(root: nn::Path, cfg: &Config, spec: &VectorSpec) -> Result<FlowModel> {
        let m = &cfg.model;
        let d = spec.dim;
        if d < 2 {
            bail!("RealNVP needs at least 2 dimensions, the data has {d}");
        }
        let mut flow = Sequential::new();
        push_standardize(&mut flow, &root, spec);
        for b in 0..m.blocks {
            let p = &root / "blocks" / b;
            let mask = vector_mask(m.mask, b, d, m.permutation);
            flow.push(Coupling::with_mlp(&p / "coupling", mask, Box::new(Affine::exp_tanh()), d, spec.context_dim, m.width, m.depth, m.activation)?);
            match m.norm {
                NormChoice::Batchnorm => flow.push(BatchNormFlow::new(&p / "norm", d, 2)),
                NormChoice::Actnorm => flow.push(ActNorm::new(&p / "norm", d, 2, ActNormParam::Log)),
                NormChoice::None => {}
            }
            // With alternating masks an LU / plain 1×1 "permutation" would only mix the roles
            // the masks already alternate; halves get a learned mixing.
            match (m.permutation, m.mask) {
                (PermutationChoice::Reverse, _) => flow.push(Permutation::reverse(&p / "permutation", d)),
                (PermutationChoice::Shuffle, _) => flow.push(Permutation::shuffle(&p / "permutation", d)),
                (PermutationChoice::InvconvLu, MaskChoice::Halves) => flow.push(InvConv1x1Lu::new(&p / "permutation", d)),
                (PermutationChoice::Invconv, MaskChoice::Halves) => flow.push(crate::flows::InvConv1x1::new(&p / "permutation", d)),
                _ => {}
            }
        }
        let base: Box<dyn Base> = match m.base {
            BaseChoice::DiagGaussian => Box::new(DiagGaussian::new(&root / "base", d)),
            BaseChoice::Normal => Box::new(StandardNormal),
        };
        let desc = format!(
            "RealNVP: {d} dims, {} blocks, MLP width {} depth {} ({:?}), {:?} masks, norm {:?}, base {:?}, standardize {}{}",
            m.blocks, m.width, m.depth, m.activation, m.mask, m.norm, m.base, spec.standardize, context_note(spec)
        );
        Ok(FlowModel { event_shape: vec![d], flow, base, n_classes: None, desc })
    }
}

/// The `[C, H, W]` at the start of each of `levels` levels of a multi-scale image flow: each level
/// squeezes (4C, H/2, W/2) and factors out half of the channels before the next.
pub fn level_shapes(shape: [i64; 3], levels: i64) -> Vec<[i64; 3]> {
    let mut shapes = vec![shape];
    for _ in 1..levels {
        let [c, h, w] = *shapes.last().expect("non-empty");
        shapes.push([c * 2, h / 2, w / 2]);
    }
    shapes
}

/// RealNVP on images (multi-scale, checkerboard and channel couplings).
pub struct RealNvpImage;

impl RealNvpImage {
    pub fn build(root: nn::Path, cfg: &Config) -> Result<FlowModel> {
        let m = &cfg.model;
        let s = cfg.data.image_size;
        let shape = [cfg.data.channels, s, s];
        let div = 1 << (m.levels - 1);
        if s % div != 0 {
            bail!("RealNVP: image size {s} must be divisible by 2^(levels-1) = {div}");
        }
        let coupling = |p: nn::Path, mask: Box<dyn Partition>, c: i64| Coupling::with_conv_net(p, mask, Box::new(Affine::exp_tanh()), c, m.width, 0);
        let norm = |seq: &mut Sequential, p: nn::Path, c: i64| match m.norm {
            NormChoice::Batchnorm => seq.push(BatchNormFlow::new(p, c, 4)),
            NormChoice::Actnorm => seq.push(ActNorm::new(p, c, 4, ActNormParam::Log)),
            NormChoice::None => {}
        };
        let shapes = level_shapes(shape, m.levels);
        let top = *shapes.last().expect("levels >= 1");
        let mut inner = Sequential::new();
        {
            let lp = &root / "levels" / (m.levels - 1);
            for k in 0..4 {
                let p = &lp / "steps" / k;
                inner.push(coupling(&p / "coupling", Box::new(Checkerboard::new(k % 2)), top[0])?);
                norm(&mut inner, &p / "norm", top[0]);
            }
            inner.push(Flatten { shape: top.to_vec() });
        }
        for i in (0..(m.levels - 1) as usize).rev() {
            let lp = &root / "levels" / i;
            let [c, h, w] = shapes[i];
            let mut level = Sequential::new();
            for k in 0..3 {
                let p = &lp / "steps" / k;
                level.push(coupling(&p / "coupling", Box::new(Checkerboard::new(k % 2)), c)?);
                norm(&mut level, &p / "norm", c);
            }
            level.push(Squeeze);
            for k in 3..6 {
                let p = &lp / "steps" / k;
                level.push(coupling(&p / "coupling", Box::new(ChannelHalves::new(k % 2 == 0)), 4 * c)?);
                norm(&mut level, &p / "norm", 4 * c);
            }
            level.push(SplitPrior::new(&lp / "split", [4 * c, h / 2, w / 2], Box::new(inner)));
            inner = level;
        }
        let top_dim: i64 = top.iter().product();
        let base: Box<dyn Base> = match m.base {
            BaseChoice::DiagGaussian => Box::new(LearnedPrior::new(&root / "prior", top, shape.iter().product::<i64>() - top_dim, true, None)),
            BaseChoice::Normal => Box::new(StandardNormal),
        };
        let desc = format!("RealNVP (images): image {shape:?}, {} levels, width {}, norm {:?}, base {:?}", m.levels, m.width, m.norm, m.base);
        Ok(FlowModel { event_shape: shape.to_vec(), flow: inner, base, n_classes: None, desc })
    }
}
