//! The VAE's small conv encoder and decoder for `C × S × S` images (S even), `w` =
//! `model.width` channels, ELU activations:
//!
//! - encoder: conv 3×3 (C → w) → conv 3×3 stride 2 (w → w, S/2) → flatten → linear (→ 4w) →
//!   three heads: μ and log σ of the diagonal Gaussian over z (`model.latent` each) and the
//!   features h handed to the posterior flow as its context (`model.context`);
//! - decoder: linear (z → 4w) → linear (→ w·(S/2)²) → nearest ×2 upsampling → conv 3×3 (w → w)
//!   → conv 3×3 (w → 2C): the location μ and log-scale of each pixel's discretised logistic.
//!
//! Layers are tch's (`nn::conv2d`, `nn::linear`: PyTorch's default initialisation, names
//! `weight` and `bias`) called through the fallible `f_` ops, so a shape error is an `Err`.
use anyhow::Result;
use tch::{nn, Tensor};

fn conv(x: &Tensor, c: &nn::Conv2D, stride: i64) -> Result<Tensor> {
    Ok(x.f_conv2d(&c.ws, c.bs.as_ref(), [stride, stride], [1, 1], [1, 1], 1)?)
}

fn linear(x: &Tensor, l: &nn::Linear) -> Result<Tensor> {
    Ok(x.f_linear(&l.ws, l.bs.as_ref())?)
}

/// What the encoder says about one image.
pub struct Encoded {
    pub mu: Tensor,
    pub log_sigma: Tensor,
    /// The posterior flow's context `[B, context]`.
    pub h: Tensor,
}

pub struct Encoder {
    conv0: nn::Conv2D,
    conv1: nn::Conv2D,
    fc: nn::Linear,
    mu: nn::Linear,
    log_sigma: nn::Linear,
    h: nn::Linear,
}

impl Encoder {
    pub fn new(p: nn::Path, channels: i64, size: i64, width: i64, latent: i64, context: i64) -> Encoder {
        let cc = |stride| nn::ConvConfig { stride, padding: 1, ..Default::default() };
        let flat = width * (size / 2) * (size / 2);
        Encoder {
            conv0: nn::conv2d(&p / "conv0", channels, width, 3, cc(1)),
            conv1: nn::conv2d(&p / "conv1", width, width, 3, cc(2)),
            fc: nn::linear(&p / "fc", flat, 4 * width, Default::default()),
            mu: nn::linear(&p / "mu", 4 * width, latent, Default::default()),
            log_sigma: nn::linear(&p / "log_sigma", 4 * width, latent, Default::default()),
            h: nn::linear(&p / "h", 4 * width, context, Default::default()),
        }
    }

    /// `x` `[B, C, S, S]` in model space.
    pub fn forward(&self, x: &Tensor) -> Result<Encoded> {
        let b = x.size()[0];
        let t = conv(x, &self.conv0, 1)?.f_elu()?;
        let t = conv(&t, &self.conv1, 2)?.f_elu()?;
        let t = linear(&t.f_reshape([b, -1])?, &self.fc)?.f_elu()?;
        Ok(Encoded { mu: linear(&t, &self.mu)?, log_sigma: linear(&t, &self.log_sigma)?, h: linear(&t, &self.h)?.f_elu()? })
    }
}

pub struct Decoder {
    fc0: nn::Linear,
    fc1: nn::Linear,
    conv0: nn::Conv2D,
    conv1: nn::Conv2D,
    width: i64,
    size: i64,
    channels: i64,
}

impl Decoder {
    pub fn new(p: nn::Path, channels: i64, size: i64, width: i64, latent: i64) -> Decoder {
        let cc = nn::ConvConfig { padding: 1, ..Default::default() };
        let flat = width * (size / 2) * (size / 2);
        Decoder {
            fc0: nn::linear(&p / "fc0", latent, 4 * width, Default::default()),
            fc1: nn::linear(&p / "fc1", 4 * width, flat, Default::default()),
            conv0: nn::conv2d(&p / "conv0", width, width, 3, cc),
            conv1: nn::conv2d(&p / "conv1", width, 2 * channels, 3, cc),
            width,
            size,
            channels,
        }
    }

    /// `z` `[B, latent]` -> (location, log-scale), each `[B, C, S, S]`.
    pub fn forward(&self, z: &Tensor) -> Result<(Tensor, Tensor)> {
        let b = z.size()[0];
        let half = self.size / 2;
        let t = linear(z, &self.fc0)?.f_elu()?;
        let t = linear(&t, &self.fc1)?.f_elu()?.f_reshape([b, self.width, half, half])?;
        let t = t.f_upsample_nearest2d([self.size, self.size], None, None)?;
        let t = conv(&t, &self.conv0, 1)?.f_elu()?;
        let out = conv(&t, &self.conv1, 1)?;
        let parts = out.f_split(self.channels, 1)?;
        // A floor on the scale (s >= e^-7 ≈ 1/1100 of the [-½, ½) range) keeps the bin
        // probabilities' gradients finite when the decoder grows confident.
        Ok((parts[0].shallow_clone(), parts[1].f_clamp_min(-7.0)?))
    }
}
