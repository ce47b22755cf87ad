//! Models, each only a composition of the layer zoo, built from a config struct under a
//! `VarStore` path. A model is a transform `f` plus a [`Base`] distribution: `log p(x) =
//! log p_base(f(x)) + log|det f'(x)|`. Every base is a bijection `b` onto standard-normal
//! noise, so the whole model is one flow `b∘f` onto `N(0, I)` ([`DensityModel::to_noise`]) and
//! a sample at temperature `T` is `f⁻¹(b⁻¹(T·ε))`.
//!
//! # Adding a model
//! One file here with a config struct and a `build` that composes the zoo (no layer code of
//! its own), returning a [`FlowModel`] or a struct implementing [`DensityModel`]; then one arm
//! in [`build_for`] and a `model.kind` value in the config.
use crate::flows::{Base, Ctx, Flow};
use anyhow::Result;
use tch::{Kind, Tensor};

pub mod ffjord;
pub mod ffjord_image;
pub mod glow;
pub mod maf;
pub mod nice;
pub mod nsf;
pub mod realnvp;
pub mod vae;

pub use ffjord::Ffjord;
pub use ffjord_image::FfjordImage;
pub use glow::Glow;
pub use maf::Maf;
pub use nsf::Nsf;
pub use nice::Nice;
pub use realnvp::{RealNvp, RealNvpImage};
pub use vae::Vae;

pub trait DensityModel: Send {
    /// The transform, data -> flat latent `[B, D]`.
    fn flow(&self) -> &dyn Flow;
    /// The base distribution of the latent.
    fn base(&self) -> &dyn Base;
    /// Shape of one data point, e.g. `[C, H, W]`.
    fn event_shape(&self) -> Vec<i64>;
    /// Number of classes for a class-conditional model.
    fn n_classes(&self) -> Option<i64> {
        None
    }
    /// Human-readable architecture summary.
    fn describe(&self) -> String;

    fn dim(&self) -> i64 {
        self.event_shape().iter().product()
    }

    /// Data -> standard-normal noise `[B, D]` through the transform and the base, with the
    /// total log-det.
    fn to_noise(&self, x: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        let (z, ld) = self.flow().forward(x, ctx)?;
        let (eps, ld_base) = self.base().to_noise(&z, ctx)?;
        Ok((eps, ld.f_add(&ld_base)?))
    }

    /// Standard-normal noise `[N, D]` -> data, with the total log-det `log|det dx/dε|`.
    fn from_noise(&self, eps: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        let (z, ld_base) = self.base().from_noise(eps, ctx)?;
        let (x, ld) = self.flow().inverse(&z, ctx)?;
        Ok((x, ld.f_add(&ld_base)?))
    }

    /// Per-sample log-density in nats `[B]` of points in model space.
    fn log_prob(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        self.check_input(x)?;
        let (eps, logdet) = self.to_noise(x, ctx)?;
        Ok(standard_normal_log_prob(&eps)?.f_add(&logdet)?)
    }

    /// `n` samples at `temperature` (scales every prior's std), drawn from libtorch's generator.
    fn sample(&self, n: i64, temperature: f64, ctx: &Ctx, like: (Kind, tch::Device)) -> Result<Tensor> {
        let eps = Tensor::f_randn([n, self.noise_dim()], like)?.f_mul_scalar(temperature)?;
        self.sample_from_noise(&eps, ctx)
    }

    /// Size of the standard-normal noise one sample is made from: `dim()` for a flow, the
    /// latent size for a VAE.
    fn noise_dim(&self) -> i64 {
        self.dim()
    }

    /// The sample made from standard-normal noise `[N, noise_dim()]` (already scaled by the
    /// temperature): `from_noise` for a flow, the decoded prior draw for a VAE.
    fn sample_from_noise(&self, eps: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        Ok(self.from_noise(eps, ctx)?.0)
    }

    /// A model with latent variables, whose `log_prob` is a lower bound (the ELBO of a VAE):
    /// its importance weights. `None` for a flow, whose `log_prob` is exact.
    fn latent_variable(&self) -> Option<&dyn LatentVariableModel> {
        None
    }

    /// `n` reparameterised samples (gradients reach every parameter) with their log-density
    /// `log q(x)`, at temperature 1: what a variational objective needs.
    fn rsample_with_log_prob(&self, n: i64, ctx: &Ctx, like: (Kind, tch::Device)) -> Result<(Tensor, Tensor)> {
        let eps = Tensor::f_randn([n, self.dim()], like)?;
        let (x, ld) = self.from_noise(&eps, ctx)?;
        Ok((x, standard_normal_log_prob(&eps)?.f_sub(&ld)?))
    }

    /// The conditional flow-matching loss (a scalar) on data `x`, for models that have one
    /// (FFJORD with one block); the objective `train.objective = "flow_matching"` calls it.
    fn flow_matching_loss(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let _ = (x, ctx);
        anyhow::bail!("{}: this model has no flow-matching objective (only FFJORD with model.blocks = 1 does)", self.describe())
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let want = self.event_shape();
        let got = x.size();
        if got.len() != want.len() + 1 || got[1..] != want[..] {
            anyhow::bail!("expected input of shape [B, {}], got {got:?}", want.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "));
        }
        Ok(())
    }
}

/// A model `p(x) = ∫ p(x | z) p(z) dz` with an approximate posterior `q(z | x)`.
pub trait LatentVariableModel {
    /// `log w_ij = log p(x_i, z_ij) − log q(z_ij | x_i)` for `k` draws `z_ij ~ q(· | x_i)` (from
    /// libtorch's generator), `[B, k]`, in the units of `log_prob` (so `mean_j log w_ij` is
    /// `log_prob`'s ELBO and `log mean_j exp(log w_ij)` the importance-weighted bound).
    fn log_weights(&self, x: &Tensor, k: i64, ctx: &Ctx) -> Result<Tensor>;
}

/// A composition of the zoo over a fixed event shape: everything a model without behaviour of
/// its own needs (RealNVP and NICE are built as this).
pub struct FlowModel {
    pub event_shape: Vec<i64>,
    pub flow: crate::flows::Sequential,
    pub base: Box<dyn Base>,
    pub n_classes: Option<i64>,
    pub desc: String,
}

impl DensityModel for FlowModel {
    fn flow(&self) -> &dyn Flow {
        &self.flow
    }
    fn base(&self) -> &dyn Base {
        self.base.as_ref()
    }
    fn n_classes(&self) -> Option<i64> {
        self.n_classes
    }
    fn event_shape(&self) -> Vec<i64> {
        self.event_shape.clone()
    }
    fn describe(&self) -> String {
        self.desc.clone()
    }
}

pub use crate::flows::standard_normal_log_prob;

/// What a model needs to know about its data beyond the config.
#[derive(Clone, Debug, Default)]
pub struct DataInfo {
    /// Class names (images: sub-folder names), in label order.
    pub classes: Vec<String>,
    /// Column names of tabular data, in order (their count is the dimension).
    pub columns: Vec<String>,
}

/// Builds the model a config names, with its variables under `root`, for image data with
/// `n_classes` classes (used by class-conditional models).
pub fn build(cfg: &crate::config::Config, root: tch::nn::Path, n_classes: i64) -> Result<Box<dyn DensityModel>> {
    let classes = (0..n_classes.max(1)).map(|i| i.to_string()).collect();
    build_for(cfg, root, &DataInfo { classes, columns: vec![] })
}

/// Builds the model a config names for data described by `info`. A tabular model conditioned
/// on `data.context_columns` reads a context of that many values; one conditioned on
/// `data.label_column` reads the one-hot label of `info.classes` (its classes).
pub fn build_for(cfg: &crate::config::Config, root: tch::nn::Path, info: &DataInfo) -> Result<Box<dyn DensityModel>> {
    use crate::config::{DataKind, ModelKind};
    let n_classes = info.classes.len().max(1) as i64;
    let labelled = !cfg.data.label_column.is_empty();
    if labelled && info.classes.is_empty() {
        anyhow::bail!("data.label_column = {:?}: the model needs the label's classes", cfg.data.label_column);
    }
    let context_dim = if labelled { info.classes.len() as i64 } else { cfg.data.context_columns.len() as i64 };
    let spec = || realnvp::VectorSpec { dim: info.columns.len() as i64, standardize: cfg.data.standardize, context_dim };
    // A label-conditional tabular model takes class indices, as a class-conditional Glow does.
    let labels = |mut m: FlowModel| -> Box<dyn DensityModel> {
        m.n_classes = labelled.then_some(context_dim);
        Box::new(m)
    };
    match (cfg.model.kind, cfg.data.kind) {
        (ModelKind::Glow, DataKind::Images) => Ok(Box::new(Glow::new(root, &glow::GlowConfig::from_config(cfg, n_classes)?)?)),
        (ModelKind::Realnvp, DataKind::Images) => Ok(Box::new(RealNvpImage::build(root, cfg)?)),
        (ModelKind::Realnvp, DataKind::Tabular) => Ok(labels(RealNvp::build(root, cfg, &spec())?)),
        (ModelKind::Nice, DataKind::Tabular) => Ok(labels(Nice::build(root, cfg, &spec())?)),
        (ModelKind::Ffjord, DataKind::Images) => Ok(Box::new(FfjordImage::build(root, cfg, n_classes)?)),
        (ModelKind::Ffjord, DataKind::Tabular) => {
            let mut m = Ffjord::build(root, cfg, &spec())?;
            m.n_classes = labelled.then_some(context_dim);
            Ok(Box::new(m))
        }
        (ModelKind::Vae, DataKind::Images) => Ok(Box::new(Vae::build(root, cfg)?)),
        (ModelKind::Maf, DataKind::Tabular) => Ok(labels(Maf::build(root, cfg, &spec(), false)?)),
        (ModelKind::Iaf, DataKind::Tabular) => Ok(labels(Maf::build(root, cfg, &spec(), true)?)),
        (ModelKind::Nsf, DataKind::Tabular) => Ok(labels(Nsf::build(root, cfg, &spec())?)),
        (kind, data) => anyhow::bail!("model.kind {:?} cannot model data.kind {data:?}", kind.as_str()),
    }
}
