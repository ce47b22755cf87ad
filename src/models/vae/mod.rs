//! A variational auto-encoder for images (Kingma & Welling 2014) with a flow posterior
//! (Rezende & Mohamed 2015; Kingma et al. 2016): prior `p(z) = N(0, I)`, a conv decoder giving
//! each pixel a discretised logistic ([`likelihood`]: why not a Bernoulli is said there), a
//! conv encoder giving a diagonal Gaussian and the context of the posterior's flow
//! ([`posterior`]). Parameter names: `encoder.*`, `decoder.*`, `posterior.layers.{i}.*`.
//!
//! As a [`DensityModel`], `log_prob(x)` is the ELBO of one posterior draw (a stochastic lower
//! bound on `log p(x)`) in model-space density units: `ELBO + D·n_bits·ln 2`, so that flowzoo's
//! bits/dim, `−(log_prob − D·ln 2^n_bits)/(D·ln 2)`, are the negative ELBO of the discrete pixels
//! in bits per dimension and training, evaluation and the sample grids of `flowzoo train` work
//! unchanged. A sample decodes a prior draw to the logistics' locations (their modes). The
//! importance-weighted bound (Burda et al. 2016) comes from [`LatentVariableModel::log_weights`].
//! A VAE has no bijection to noise: `to_noise`, `from_noise` and the export say so.
use super::{DensityModel, LatentVariableModel};
use crate::config::Config;
use crate::flows::{Base, Ctx, Flow, Sequential, StandardNormal};
use anyhow::{bail, Result};
use tch::{nn, Kind, Tensor};

pub mod likelihood;
pub mod nets;
pub mod posterior;

use likelihood::{bins, discretized_logistic_log_prob, sum_per_image};
use nets::{Decoder, Encoder};

pub struct Vae {
    pub encoder: Encoder,
    pub decoder: Decoder,
    /// The posterior's flow on top of the encoder's Gaussian (`None`: diagonal).
    pub posterior: Option<Sequential>,
    pub latent: i64,
    pub n_bits: i64,
    pub shape: [i64; 3],
    no_bijection: NotABijection,
    desc: String,
}

impl Vae {
    pub fn build(root: nn::Path, cfg: &Config) -> Result<Vae> {
        let (m, d) = (&cfg.model, &cfg.data);
        if d.image_size % 2 != 0 {
            bail!("VAE: data.image_size = {} must be even (the encoder halves it once)", d.image_size);
        }
        let shape = [d.channels, d.image_size, d.image_size];
        let encoder = Encoder::new(&root / "encoder", d.channels, d.image_size, m.width, m.latent, m.context);
        let decoder = Decoder::new(&root / "decoder", d.channels, d.image_size, m.width, m.latent);
        let posterior = posterior::posterior_flow(&root / "posterior", m)?;
        let flow_desc = match &posterior {
            None => String::new(),
            Some(f) => format!(" ({} layers, width {}, depth {}, context {})", f.len(), m.posterior_width, m.depth, m.context),
        };
        let desc = format!(
            "VAE: image {shape:?}, latent {}, conv width {}, posterior {:?}{flow_desc}, discretised logistic likelihood ({} bits)",
            m.latent, m.width, m.posterior, d.n_bits
        );
        Ok(Vae { encoder, decoder, posterior, latent: m.latent, n_bits: d.n_bits, shape, no_bijection: NotABijection, desc })
    }

    /// `D·n_bits·ln 2`: from the discrete pixels' log-probability to flowzoo's model-space units.
    fn to_model_units(&self) -> f64 {
        let d: i64 = self.shape.iter().product();
        d as f64 * self.n_bits as f64 * std::f64::consts::LN_2
    }

    /// `log p(x | z) + log p(z) − log q(z | x)` for `k` posterior draws per image, `[B, k]`, in
    /// nats of the discrete pixels.
    pub fn log_weights_discrete(&self, x: &Tensor, k: i64, ctx: &Ctx) -> Result<Tensor> {
        self.check_input(x)?;
        if k < 1 {
            bail!("VAE: the number of posterior draws must be >= 1, got {k}");
        }
        let b = x.size()[0];
        // Everything depends on the discrete pixels only: the encoder sees each pixel's bin
        // centre, so a dequantised image and its pixels get the same posterior.
        let bin = bins(x, self.n_bits)?;
        let levels = (1i64 << self.n_bits) as f64;
        let enc = self.encoder.forward(&bin.f_add_scalar(0.5)?.f_div_scalar(levels)?.f_sub_scalar(0.5)?.f_to_kind(x.kind())?)?;
        let (z, log_q) = posterior::sample_posterior(self.posterior.as_ref(), &enc.mu, &enc.log_sigma, &enc.h, k, ctx)?;
        let (loc, log_s) = self.decoder.forward(&z)?;
        let target = bin.f_repeat_interleave_self_int(k, Some(0), None)?;
        let log_px = sum_per_image(&discretized_logistic_log_prob(&target, &loc, &log_s, self.n_bits)?)?;
        let log_pz = StandardNormal.log_prob(&z, ctx)?;
        Ok(log_px.f_add(&log_pz)?.f_sub(&log_q)?.f_reshape([b, k])?)
    }
}

impl LatentVariableModel for Vae {
    fn log_weights(&self, x: &Tensor, k: i64, ctx: &Ctx) -> Result<Tensor> {
        Ok(self.log_weights_discrete(x, k, ctx)?.f_add_scalar(self.to_model_units())?)
    }
}

impl DensityModel for Vae {
    fn flow(&self) -> &dyn Flow {
        &self.no_bijection
    }
    fn base(&self) -> &dyn Base {
        &StandardNormal
    }
    fn event_shape(&self) -> Vec<i64> {
        self.shape.to_vec()
    }
    fn describe(&self) -> String {
        self.desc.clone()
    }

    /// The ELBO of one posterior draw per image (libtorch's generator), model-space units.
    fn log_prob(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        Ok(self.log_weights(x, 1, ctx)?.f_squeeze_dim(1)?)
    }

    fn to_noise(&self, _x: &Tensor, _ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        bail!("{}", NOT_A_BIJECTION)
    }
    fn from_noise(&self, _eps: &Tensor, _ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        bail!("{}", NOT_A_BIJECTION)
    }

    fn noise_dim(&self) -> i64 {
        self.latent
    }

    /// Decodes prior draws `z = eps` to the pixel logistics' locations, clamped to the range of
    /// model space.
    fn sample_from_noise(&self, eps: &Tensor, _ctx: &Ctx) -> Result<Tensor> {
        if eps.dim() != 2 || eps.size()[1] != self.latent {
            bail!("VAE: expected prior noise of shape [N, {}], got {:?}", self.latent, eps.size());
        }
        let (loc, _) = self.decoder.forward(&eps.f_to_kind(Kind::Float)?)?;
        let top = 0.5 - 1.0 / (1i64 << self.n_bits) as f64 / 2.0;
        Ok(loc.f_clamp(-0.5, top)?)
    }

    fn latent_variable(&self) -> Option<&dyn LatentVariableModel> {
        Some(self)
    }
}

const NOT_A_BIJECTION: &str = "a VAE has no invertible map between images and noise (its log_prob is the ELBO, its samples decode prior draws): this operation needs a flow";

/// What a VAE answers when asked for its bijection (the flow of a flow model): an error.
struct NotABijection;

impl Flow for NotABijection {
    fn forward(&self, _x: &Tensor, _ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        bail!("{}", NOT_A_BIJECTION)
    }
    fn inverse(&self, _y: &Tensor, _ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        bail!("{}", NOT_A_BIJECTION)
    }
    fn to_torchscript(&self, _ts: &mut crate::script::ScriptBuilder) -> Result<crate::script::ScriptFlow> {
        bail!("a VAE cannot be exported: flowzoo export writes flows (a bijection and its base), and a VAE has none")
    }
    fn layer_name(&self) -> String {
        "VAE".into()
    }
}
