//! The VAE's approximate posterior `q(z | x)`: the encoder's diagonal Gaussian
//! `z₀ = μ(x) + σ(x)·ε`, then, for a flow posterior, `z = f⁻¹(z₀; h(x))` with every layer's
//! conditioner reading the encoder's features `h` as its context (`ctx.cond`; IAF's `h` in
//! Kingma et al. 2016). `log q(z | x) = log N(z₀; μ, σ) − log|det ∂z/∂z₀|`.
//!
//! The flow is used in its inverse direction, the direction every flowzoo model samples in, so
//! a layer whose one-pass direction is the inverse (IAF, which is `Inverse` of a MAF layer) goes
//! in as it is built. The ELBO needs `z` and `log q(z | x)` of the same draw, which that one
//! direction gives: an IAF posterior costs one MADE pass per layer, a MAF posterior `latent`
//! passes per layer (its one-pass direction, the density of a given `z`, is not what the ELBO
//! asks for). A new posterior is one arm in [`posterior_flow`] (and its word in
//! `config::PosteriorChoice`).
use crate::config::{DegreesChoice, InverseChoice, MaskChoice, ModelConfig, PermutationChoice, PosteriorChoice};
use crate::flows::{
    Affine, Autoregressive, Base, Coupling, Ctx, ElementwiseBijection, Flow, HiddenDegrees, Inverse, InverseMethod, Made, MadeOptions, MadeOrder, Permutation, Sequential,
    StandardNormal,
};
use crate::models::realnvp::vector_mask;
use anyhow::Result;
use tch::{nn, Tensor};

/// `model.posterior_layers` layers made by `layer(path, index)` under `p / "layers" / i`.
fn stack(p: nn::Path, m: &ModelConfig, layer: impl Fn(nn::Path, i64) -> Result<Box<dyn Flow>>) -> Result<Option<Sequential>> {
    let mut flow = Sequential::new();
    for i in 0..m.posterior_layers {
        flow.layers.push(layer(&p / "layers" / i, i)?);
    }
    Ok(Some(flow))
}

/// The posterior's flow, `None` for the diagonal Gaussian alone.
pub fn posterior_flow(p: nn::Path, m: &ModelConfig) -> Result<Option<Sequential>> {
    match m.posterior {
        PosteriorChoice::Diagonal => Ok(None),
        // Affine couplings on alternating features of z, each followed by a reversal; the masks
        // are RealNVP's (`vector_mask`: the roles swap every layer); the MLP conditioners read
        // the context.
        PosteriorChoice::Realnvp => stack(p, m, |q, i| {
            let mut s = Sequential::new();
            let mask = vector_mask(MaskChoice::Alternating, i, m.latent, PermutationChoice::Reverse);
            s.push(Coupling::with_mlp(&q / "coupling", mask, Box::new(Affine::exp_tanh()), m.latent, m.context, m.posterior_width, m.depth, m.activation)?);
            s.push(Permutation::reverse(&q / "permutation", m.latent));
            Ok(Box::new(s))
        }),
        // IAF (Kingma et al. 2016): z_t = μ_t(z_{t−1}, h) + σ_t(z_{t−1}, h)·z_{t−1}, autoregressive
        // in z, one MADE pass per layer; MAF: the same layers the other way round.
        PosteriorChoice::Iaf => stack(p, m, |q, _| autoregressive_layer(q, m, true)),
        PosteriorChoice::Maf => stack(p, m, |q, _| autoregressive_layer(q, m, false)),
    }
}

/// One autoregressive layer of the posterior flow, then a reversal of z (Kingma et al. reverse
/// the ordering after each IAF step): a MADE in natural order with `model.depth` hidden layers
/// of `model.posterior_width` units (`model.made_degrees`, `model.residual` as for a MAF) whose
/// every hidden unit reads the encoder's `model.context` features, times an affine map; wrapped
/// in [`Inverse`] for an IAF, so that sampling is the MADE's one-pass direction. A MAF layer
/// samples with `model.inverse` ("sequential" or "jacobi"). The MADE's output layer starts at
/// zero, so a fresh posterior flow is the identity: the encoder's Gaussian.
fn autoregressive_layer(q: nn::Path, m: &ModelConfig, iaf: bool) -> Result<Box<dyn Flow>> {
    let affine = Affine::exp_tanh();
    let o = MadeOptions {
        features: m.latent,
        params_per_feature: affine.params_per_feature(),
        context_dim: m.context,
        hidden: m.posterior_width,
        layers: m.depth,
        order: MadeOrder::Natural,
        degrees: match m.made_degrees {
            DegreesChoice::Cyclic => HiddenDegrees::Cyclic,
            DegreesChoice::Random => HiddenDegrees::Random,
        },
        residual: m.residual,
        activation: m.activation,
    };
    let inverse_method = match m.inverse {
        InverseChoice::Sequential => InverseMethod::Sequential,
        InverseChoice::Jacobi => InverseMethod::Jacobi { tol: m.jacobi_tol },
    };
    let layer = Autoregressive::new(Made::new(&q / "made", &o)?, Box::new(affine), inverse_method)?;
    let mut s = Sequential::new();
    if iaf {
        s.push(Inverse(layer));
    } else {
        s.push(layer);
    }
    s.push(Permutation::reverse(&q / "permutation", m.latent));
    Ok(Box::new(s))
}

/// `k` draws from `q(z | x)` per image: `z` `[B·k, latent]` (image-major: the `k` draws of image
/// 0 first) and `log q(z | x)` `[B·k]`. `mu`, `log_sigma` and `h` are the encoder's `[B, ·]`.
pub fn sample_posterior(flow: Option<&Sequential>, mu: &Tensor, log_sigma: &Tensor, h: &Tensor, k: i64, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
    let rep = |t: &Tensor| -> Result<Tensor> { Ok(t.f_repeat_interleave_self_int(k, Some(0), None)?) };
    let (mu, log_sigma) = (rep(mu)?, rep(log_sigma)?);
    let eps = mu.f_randn_like()?;
    let z0 = mu.f_add(&eps.f_mul(&log_sigma.f_exp()?)?)?;
    let sum = |t: &Tensor| -> Result<Tensor> { Ok(t.f_sum_dim_intlist(Some(&[1i64][..]), false, None)?) };
    let log_q0 = StandardNormal.log_prob(&eps, ctx)?.f_sub(&sum(&log_sigma)?)?;
    match flow {
        None => Ok((z0, log_q0)),
        Some(f) => {
            let h = rep(h)?;
            let (z, ld) = f.inverse(&z0, &ctx.with_cond(Some(&h)))?;
            Ok((z, log_q0.f_sub(&ld)?))
        }
    }
}
