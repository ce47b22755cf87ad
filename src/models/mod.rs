//! Models, each only a composition of the layer zoo, built from a config struct under a
//! `VarStore` path. A model is a flow onto standard-normal noise: `log p(x) = log N(f(x); 0, I)
//! + log|det f'(x)|`, and a sample at temperature `T` is `f⁻¹(T·ε)`.
use crate::flows::{Ctx, Flow};
use anyhow::Result;
use tch::{Kind, Tensor};

pub mod glow;
pub mod nice;
pub mod realnvp;

pub use glow::Glow;
pub use nice::Nice;
pub use realnvp::{RealNvp, RealNvpImage};

pub trait DensityModel {
    /// The whole bijection, data -> flat standard-normal latent `[B, D]`.
    fn flow(&self) -> &dyn Flow;
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

    /// Per-sample log-density in nats `[B]` of points in model space.
    fn log_prob(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        self.check_input(x)?;
        let (z, logdet) = self.flow().forward(x, ctx)?;
        Ok(standard_normal_log_prob(&z)?.f_add(&logdet)?)
    }

    /// `n` samples at `temperature` (scales every prior's std), drawn from libtorch's generator.
    fn sample(&self, n: i64, temperature: f64, ctx: &Ctx, like: (Kind, tch::Device)) -> Result<Tensor> {
        let eps = Tensor::f_randn([n, self.dim()], like)?.f_mul_scalar(temperature)?;
        Ok(self.flow().inverse(&eps, ctx)?.0)
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

/// A composition of the zoo over a fixed event shape: everything a model without behaviour of
/// its own needs (RealNVP and NICE are built as this).
pub struct FlowModel {
    pub event_shape: Vec<i64>,
    pub flow: crate::flows::Sequential,
    pub desc: String,
}

impl DensityModel for FlowModel {
    fn flow(&self) -> &dyn Flow {
        &self.flow
    }
    fn event_shape(&self) -> Vec<i64> {
        self.event_shape.clone()
    }
    fn describe(&self) -> String {
        self.desc.clone()
    }
}

/// `Σ log N(z; 0, 1)` over all but the batch dimension.
pub fn standard_normal_log_prob(z: &Tensor) -> Result<Tensor> {
    let b = z.size()[0];
    let d = (z.numel() as i64 / b.max(1)) as f64;
    let sq = z.f_reshape([b, -1])?.f_square()?.f_sum_dim_intlist(Some(&[1i64][..]), false, None)?;
    Ok(sq.f_mul_scalar(-0.5)?.f_sub_scalar(0.5 * d * (2.0 * std::f64::consts::PI).ln())?)
}

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

/// Builds the model a config names for data described by `info`.
pub fn build_for(cfg: &crate::config::Config, root: tch::nn::Path, info: &DataInfo) -> Result<Box<dyn DensityModel>> {
    use crate::config::DataKind;
    let n_classes = info.classes.len().max(1) as i64;
    let spec = || realnvp::VectorSpec { dim: info.columns.len() as i64, standardize: cfg.data.standardize };
    match (cfg.model.kind.as_str(), cfg.data.kind) {
        ("glow", DataKind::Images) => Ok(Box::new(Glow::new(root, &glow::GlowConfig::from_config(cfg, n_classes)?)?)),
        ("realnvp", DataKind::Images) => Ok(Box::new(RealNvpImage::build(root, cfg)?)),
        ("realnvp", DataKind::Tabular) => Ok(Box::new(RealNvp::build(root, cfg, &spec())?)),
        ("nice", DataKind::Tabular) => Ok(Box::new(Nice::build(root, cfg, &spec())?)),
        (kind, data) => anyhow::bail!("model.kind {kind:?} cannot model data.kind {data:?}"),
    }
}
