//! Glow (Kingma & Dhariwal, 2018): L levels of [squeeze, K × (ActNorm, 1×1 conv, coupling),
//! split], a learned top prior. Parameter names:
//! `levels.{i}.steps.{k}.{actnorm,invconv,coupling.net}.*`, `levels.{i}.split.*`, `prior.*`.
//!
//! Latent order (the flat `[B, D]` the flow produces): level 0's factored-out half
//! (C, H, W row-major), level 1's, …, then the top latent. The base is the learned top prior
//! ([`LearnedPrior`], over the top latent's entries) or a standard normal.
use super::DensityModel;
use crate::config::{Config, CouplingChoice, GlowStyle, PermutationChoice};
use crate::flows::{
    ActNorm, ActNormParam, Additive, Affine, Base, ChannelHalves, ConvNet, Coupling, ElementwiseBijection, Flatten, Flow,
    InvConv1x1, InvConv1x1Lu, LearnedPrior, ParamLayout, Permutation, ScaleFn, Sequential, SplitPrior, Squeeze, StandardNormal,
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
    /// Layer conventions (see [`GlowConventions`]).
    pub style: GlowStyle,
}

/// The switches of flowzoo's own layers that a [`GlowStyle`] sets. The native style is exactly
/// y0ast/Glow-PyTorch's math (and OpenAI's, up to the squeeze order); `Rosinality` is
/// rosinality/glow-pytorch's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GlowConventions {
    /// ActNorm of the flow steps: `Log` (`bias`, `logs`) or `Linear` (`loc`, `scale`).
    pub actnorm: ActNormParam,
    /// Hidden convs of the coupling nets: no bias + ActNorm (`true`) or bias, no ActNorm.
    pub hidden_actnorm: bool,
    /// How the coupling net's output splits into (shift, scale).
    pub coupling_layout: ParamLayout,
    /// How a split prior's conv output splits into (mean, log-std).
    pub split_layout: ParamLayout,
    /// Border value of every zero-conv (coupling output, split and top priors).
    pub zero_pad: f64,
    /// The top prior's conv reads zeros with as many channels as the top latent (`C -> 2C`,
    /// rosinality) instead of twice as many (`2C -> 2C`).
    pub top_conv_from_c: bool,
    /// The last level uses the LU 1×1 conv whatever `permutation` says (rosinality never
    /// passes its `conv_lu` switch to the last block).
    pub last_level_lu: bool,
}

impl GlowConventions {
    pub fn of(style: GlowStyle) -> Self {
        match style {
            GlowStyle::Flowzoo => GlowConventions {
                actnorm: ActNormParam::Log,
                hidden_actnorm: true,
                coupling_layout: ParamLayout::Interleaved,
                split_layout: ParamLayout::Interleaved,
                zero_pad: 0.0,
                top_conv_from_c: false,
                last_level_lu: false,
            },
            GlowStyle::Rosinality => GlowConventions {
                actnorm: ActNormParam::Linear,
                hidden_actnorm: false,
                coupling_layout: ParamLayout::Contiguous,
                split_layout: ParamLayout::Contiguous,
                zero_pad: 1.0,
                top_conv_from_c: true,
                last_level_lu: true,
            },
        }
    }
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
            style: cfg.model.style,
        })
    }
}

pub struct Glow {
    pub cfg: GlowConfig,
    flow: Sequential,
    base: Box<dyn Base>,
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
        let conv = GlowConventions::of(cfg.style);
        let top = *shapes.last().expect("levels >= 1");
        let dim = c * h * w;
        let top_dim: i64 = top.iter().product();
        let base: Box<dyn Base> = if cfg.learn_top || cfg.n_classes.is_some() {
            let c_in = if conv.top_conv_from_c { top[0] } else { 2 * top[0] };
            let p = &root / "prior";
            Box::new(LearnedPrior::with_conv_input(p, top, dim - top_dim, cfg.learn_top, cfg.n_classes, c_in, conv.zero_pad))
        } else {
            Box::new(StandardNormal)
        };
        let mut inner = Sequential::new();
        inner.push(Flatten { shape: top.to_vec() });
        for i in (0..cfg.levels as usize).rev() {
            let lp = &root / "levels" / i;
            let shape = shapes[i];
            let mut level = Sequential::new();
            level.push(Squeeze);
            for k in 0..cfg.steps {
                let sp = &lp / "steps" / k;
                let last = i + 1 == cfg.levels as usize;
                level.layers.push(Box::new(step(&sp, cfg, &conv, shape[0], last)?));
            }
            if i + 1 < cfg.levels as usize {
                let mut split = SplitPrior::new(&lp / "split", shape, Box::new(inner));
                split.layout = conv.split_layout;
                split.prior.pad_value = conv.zero_pad;
                level.push(split);
            } else {
                level.layers.extend(inner.layers);
            }
            inner = level;
        }
        Ok(Glow { cfg: cfg.clone(), flow: inner, base })
    }
}

/// One flow step: ActNorm, permutation (1×1 conv), coupling.
fn step(p: &nn::Path, cfg: &GlowConfig, conv: &GlowConventions, channels: i64, last_level: bool) -> Result<Sequential> {
    let mut s = Sequential::new();
    let mut an = ActNorm::new(p / "actnorm", channels, 4, conv.actnorm);
    an.init_scale = cfg.actnorm_scale;
    s.push(an);
    let permutation = if last_level && conv.last_level_lu { PermutationChoice::InvconvLu } else { cfg.permutation };
    match permutation {
        PermutationChoice::InvconvLu => s.push(InvConv1x1Lu::new(p / "invconv", channels)),
        PermutationChoice::Invconv => s.push(InvConv1x1::new(p / "invconv", channels)),
        PermutationChoice::Reverse => s.push(Permutation::reverse(p / "permutation", channels)),
        PermutationChoice::Shuffle => s.push(Permutation::shuffle(p / "permutation", channels)),
        PermutationChoice::None => bail!("Glow needs a permutation (model.permutation = \"none\")"),
    }
    let transform: Box<dyn ElementwiseBijection> = match cfg.coupling {
        CouplingChoice::Affine => Box::new(Affine::new(ScaleFn::Sigmoid2, conv.coupling_layout)),
        CouplingChoice::Additive => Box::new(Additive),
    };
    let partition = Box::new(ChannelHalves::new(false));
    let (c_in, c_out) = Coupling::net_features(partition.as_ref(), transform.as_ref(), channels);
    let mut net = ConvNet::new(p / "coupling" / "net", c_in, cfg.width, c_out, conv.hidden_actnorm);
    net.out.pad_value = conv.zero_pad;
    s.push(Coupling::new(channels, partition, transform, Box::new(net))?);
    Ok(s)
}

impl DensityModel for Glow {
    fn flow(&self) -> &dyn Flow {
        &self.flow
    }
    fn base(&self) -> &dyn Base {
        self.base.as_ref()
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
            "Glow: image {:?}, L={} levels, K={} steps, width {}, {:?} coupling, {:?} permutation, learn_top={}, classes={:?}{}",
            c.image_shape,
            c.levels,
            c.steps,
            c.width,
            c.coupling,
            c.permutation,
            c.learn_top,
            c.n_classes,
            match c.style {
                GlowStyle::Flowzoo => "",
                GlowStyle::Rosinality => ", rosinality/glow-pytorch conventions",
            }
        )
    }
}
