//! Glow (Kingma & Dhariwal, 2018): L levels of [squeeze, K × (ActNorm, 1×1 conv, coupling),
//! split], a learned top prior. Parameter names:
//! `levels.{i}.steps.{k}.{actnorm,invconv,coupling.net}.*`, `levels.{i}.split.*`, `prior.*`.
//!
//! Latent order (the flat `[B, D]` the flow produces): level 0's factored-out half
//! (C, H, W row-major), level 1's, …, then the top latent.
use super::DensityModel;
use crate::config::{Config, CouplingChoice, PermutationChoice};
use crate::flows::{
    ActNorm, ActNormParam, Coupling, CouplingKind, Flatten, Flow, InvConv1x1, InvConv1x1Lu, LearnedPrior, Mask, Permutation,
    Sequential, SplitPrior, Squeeze,
};
use anyhow::{bail, Result};
use tch::nn;

#[derive(Clone, Debug)]
pub struct GlowConfig {
    /// `[C, H, W]` of the images.
    pub image_shape: [i64; 3],
    pub levels: i64,
    pub steps: i64,
    pub width: i64,
    pub coupling: CouplingChoice,
    pub permutation: PermutationChoice,
    pub learn_top: bool,
    /// Number of classes when class-conditional.
    pub n_classes: Option<i64>,
    pub actnorm_scale: f64,
}

impl GlowConfig {
    pub fn from_config(cfg: &Config, n_classes: i64) -> Result<Self> {
        let s = cfg.data.image_size;
        Ok(GlowConfig {
            image_shape: [cfg.data.channels, s, s],
            levels: cfg.model.levels,
            steps: cfg.model.steps,
            width: cfg.model.width,
            coupling: cfg.model.coupling,
            permutation: cfg.model.permutation,
            learn_top: cfg.model.learn_top,
            n_classes: cfg.model.conditional.then_some(n_classes),
            actnorm_scale: cfg.model.actnorm_scale,
        })
    }
}

pub struct Glow {
    pub cfg: GlowConfig,
    flow: Sequential,
}

impl Glow {
    pub fn new(root: nn::Path, cfg: &GlowConfig) -> Result<Self> {
        let [c, h, w] = cfg.image_shape;
        let div = 1 << cfg.levels;
        if h % div != 0 || w % div != 0 {
            bail!("Glow: image {h}×{w} must be divisible by 2^levels = {div}");
        }
        // Shapes after each level's squeeze.
        let mut shapes = vec![];
        let (mut ch, mut hh, mut ww) = (c, h, w);
        for i in 0..cfg.levels {
            ch *= 4;
            hh /= 2;
            ww /= 2;
            shapes.push([ch, hh, ww]);
            if i + 1 < cfg.levels {
                ch /= 2;
            }
        }
        // Build from the top down: each split wraps everything after it.
        let top = *shapes.last().expect("levels >= 1");
        let mut inner = Sequential::new();
        if cfg.learn_top || cfg.n_classes.is_some() {
            inner.push(LearnedPrior::new(&root / "prior", top, cfg.learn_top, cfg.n_classes));
        }
        inner.push(Flatten { shape: top.to_vec() });
        for i in (0..cfg.levels as usize).rev() {
            let lp = &root / "levels" / i;
            let shape = shapes[i];
            let mut level = Sequential::new();
            level.push(Squeeze);
            for k in 0..cfg.steps {
                let sp = &lp / "steps" / k;
                level.layers.push(Box::new(step(&sp, cfg, shape[0])?));
            }
            if i + 1 < cfg.levels as usize {
                level.push(SplitPrior::new(&lp / "split", shape, Box::new(inner)));
            } else {
                level.layers.extend(inner.layers);
            }
            inner = level;
        }
        Ok(Glow { cfg: cfg.clone(), flow: inner })
    }
}

/// One flow step: ActNorm, permutation (1×1 conv), coupling.
fn step(p: &nn::Path, cfg: &GlowConfig, channels: i64) -> Result<Sequential> {
    let mut s = Sequential::new();
    let mut an = ActNorm::new(p / "actnorm", channels, 4, ActNormParam::Log);
    an.init_scale = cfg.actnorm_scale;
    s.push(an);
    match cfg.permutation {
        PermutationChoice::InvconvLu => s.push(InvConv1x1Lu::new(p / "invconv", channels)),
        PermutationChoice::Invconv => s.push(InvConv1x1::new(p / "invconv", channels)),
        PermutationChoice::Reverse => s.push(Permutation::reverse(p / "permutation", channels)),
        PermutationChoice::Shuffle => s.push(Permutation::shuffle(p / "permutation", channels)),
    }
    let kind = match cfg.coupling {
        CouplingChoice::Affine => CouplingKind::Affine,
        CouplingChoice::Additive => CouplingKind::Additive,
    };
    s.push(Coupling::with_conv_net(p / "coupling", kind, Mask::Channel { flip: false }, channels, cfg.width));
    Ok(s)
}

impl DensityModel for Glow {
    fn flow(&self) -> &dyn Flow {
        &self.flow
    }
    fn event_shape(&self) -> Vec<i64> {
        self.cfg.image_shape.to_vec()
    }
    fn n_classes(&self) -> Option<i64> {
        self.cfg.n_classes
    }
    fn describe(&self) -> String {
        let c = &self.cfg;
        format!(
            "Glow: image {:?}, L={} levels, K={} steps, width {}, {:?} coupling, {:?} permutation, learn_top={}, classes={:?}",
            c.image_shape, c.levels, c.steps, c.width, c.coupling, c.permutation, c.learn_top, c.n_classes
        )
    }
}
