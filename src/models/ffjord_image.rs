//! FFJORD on images (Grathwohl et al. 2019, the multi-scale `ODENVP` of their repository),
//! composed from the zoo. Per level `l < L − 1` on `[C, H, W]`:
//! `blocks × CNF(C, H, W) → squeeze → blocks × CNF(4C, H/2, W/2) → split` (half of the channels
//! leave the flow), and at the last level `blocks × CNF` on what is left. Every CNF has a conv
//! field ([`OdeNet::conv`]: concat-squash 3×3 convs with `model.cnf.hidden` channels) on the flat
//! state `[B, C·H·W]`, so the solvers, the trace (Hutchinson in training, exact for every
//! reported likelihood), the counters and the RNODE penalties are the vector FFJORD's.
//!
//! Differences from the paper's model: the images arrive through flowzoo's image pipeline
//! (`n_bits`, uniform dequantisation, shifted to `[−0.5, 0.5)`) instead of a logit transform, and
//! the factored-out half gets Glow's learned conditional prior ([`SplitPrior`], a zero-initialised
//! conv, so it starts as the paper's `N(0, I)`). `model.norm` puts an ActNorm or a batch norm after
//! every CNF (the paper's optional batch norm); `model.base = "diag_gaussian"` or
//! `model.conditional = true` (class labels from sub-folders) learn the top prior as Glow does.
//!
//! Config: `model.levels` (L: 2^(L−1) must divide the image size), `model.blocks` (CNFs per
//! stage), `model.norm`, `model.base`, `model.conditional` and `[model.cnf]` (the field's hidden
//! channels, activation, end time, solvers, trace, noise and RNODE weights; `layer_type` must be
//! "concatsquash").
//!
//! Parameter names: `levels.{l}.blocks.{k}.cnf.net.{i}.{linear,gate,hyper_bias}.*`,
//! `levels.{l}.blocks.{k}.cnf.sqrt_end_time`, `levels.{l}.blocks.{k}.norm.*` (blocks `0..blocks`
//! before the squeeze, `blocks..2·blocks` after it), `levels.{l}.split.*`, `prior.*`.
//!
//! ```
//! use flowzoo::config::Config;
//! use flowzoo::flows::Ctx;
//! use tch::{nn::VarStore, Device, Kind, Tensor};
//! let cfg = Config::from_toml_str(r#"
//!     [data]
//!     path = "data/digits"
//!     image_size = 8
//!     n_bits = 4
//!     [model]
//!     kind = "ffjord"
//!     levels = 2
//!     blocks = 1
//!     norm = "actnorm"
//!     [model.cnf]
//!     hidden = [16, 16]
//!     activation = "softplus"
//! "#, "ffjord_image.toml").unwrap();
//! let vs = VarStore::new(Device::Cpu);
//! let model = flowzoo::models::build(&cfg, vs.root(), 10).unwrap();
//! let x = Tensor::rand([4, 1, 8, 8], (Kind::Float, Device::Cpu)) - 0.5;
//! let _guard = tch::no_grad_guard();
//! let log_p = model.log_prob(&x, &Ctx::eval()).unwrap(); // exact trace, [4] nats
//! let samples = model.sample(4, 0.7, &Ctx::eval(), (Kind::Float, Device::Cpu)).unwrap();
//! ```
use super::FlowModel;
use crate::config::{BaseChoice, Config, NormChoice};
use crate::flows::{
    ActNorm, ActNormParam, Base, BatchNormFlow, Cnf, Flatten, Inverse, LayerType, LearnedPrior, OdeNet, Sequential, SplitPrior,
    Squeeze, StandardNormal,
};
use anyhow::{bail, Result};
use tch::nn;

/// Multi-scale FFJORD on images.
pub struct FfjordImage;

impl FfjordImage {
    pub fn build(root: nn::Path, cfg: &Config, n_classes: i64) -> Result<FlowModel> {
        let m = &cfg.model;
        let c = &m.cnf;
        c.validate()?;
        if c.layer_type != LayerType::ConcatSquash {
            bail!("FFJORD on images: model.cnf.layer_type = \"mlp\" is a field on vectors; images use concat-squash conv layers (\"concatsquash\")");
        }
        if m.levels < 1 || m.blocks < 1 {
            bail!("FFJORD on images: needs model.levels >= 1 and model.blocks >= 1 (got {}, {})", m.levels, m.blocks);
        }
        let s = cfg.data.image_size;
        let shape = [cfg.data.channels, s, s];
        let div = 1 << (m.levels - 1);
        if s % div != 0 {
            bail!("FFJORD on images: image size {s} must be divisible by 2^(levels-1) = {div} (model.levels = {})", m.levels);
        }
        let options = c.options();
        // `blocks` CNFs (each followed by its normalisation) on `[C, H, W]`, numbered from `first`.
        let stage = |seq: &mut Sequential, level: &nn::Path, first: i64, shape: [i64; 3]| -> Result<()> {
            for k in first..first + m.blocks {
                let p = level / "blocks" / k;
                let net = OdeNet::conv(&p / "cnf" / "net", shape, 0, &c.hidden, c.activation)?;
                let cnf = Cnf::with_net(&p / "cnf", net, c.time_length, c.train_time, options.clone())?;
                // The CNF's state is flat: the image is flattened for it and restored after.
                seq.push(Flatten { shape: shape.to_vec() });
                seq.push(cnf);
                seq.push(Inverse(Flatten { shape: shape.to_vec() }));
                match m.norm {
                    NormChoice::Batchnorm => seq.push(BatchNormFlow::new(&p / "norm", shape[0], 4)),
                    NormChoice::Actnorm => seq.push(ActNorm::new(&p / "norm", shape[0], 4, ActNormParam::Log)),
                    NormChoice::None => {}
                }
            }
            Ok(())
        };
        let shapes = super::realnvp::level_shapes(shape, m.levels);
        let top = *shapes.last().expect("levels >= 1");
        let mut inner = Sequential::new();
        stage(&mut inner, &(&root / "levels" / (m.levels - 1)), 0, top)?;
        inner.push(Flatten { shape: top.to_vec() });
        for l in (0..(m.levels - 1) as usize).rev() {
            let lp = &root / "levels" / l;
            let [c, h, w] = shapes[l];
            let mut level = Sequential::new();
            stage(&mut level, &lp, 0, [c, h, w])?;
            level.push(Squeeze);
            stage(&mut level, &lp, m.blocks, [4 * c, h / 2, w / 2])?;
            level.push(SplitPrior::new(&lp / "split", [4 * c, h / 2, w / 2], Box::new(inner)));
            inner = level;
        }
        let classes = m.conditional.then_some(n_classes);
        let top_dim: i64 = top.iter().product();
        let base: Box<dyn Base> = if m.base == BaseChoice::DiagGaussian || classes.is_some() {
            Box::new(LearnedPrior::new(&root / "prior", top, shape.iter().product::<i64>() - top_dim, m.learn_top, classes))
        } else {
            Box::new(StandardNormal)
        };
        let desc = format!(
            "FFJORD (images, multi-scale): image {shape:?}, {} levels, {} CNFs per stage, conv field {:?} ({:?}), T = {}{}, train {}, eval {}, trace {:?}, kinetic {} jacobian {}, norm {:?}, base {:?}{}",
            m.levels,
            m.blocks,
            c.hidden,
            c.activation,
            c.time_length,
            if c.train_time { " (learned)" } else { "" },
            super::ffjord::solver_text(&options.train_solver),
            super::ffjord::solver_text(&options.eval_solver),
            c.trace,
            c.kinetic_weight,
            c.jacobian_weight,
            m.norm,
            m.base,
            classes.map(|k| format!(", conditional on {k} classes")).unwrap_or_default()
        );
        Ok(FlowModel { event_shape: shape.to_vec(), flow: inner, base, n_classes: classes, desc })
    }
}
