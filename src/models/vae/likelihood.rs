//! The discretised logistic likelihood of `n_bits` pixels (Salimans et al. 2017, PixelCNN++;
//! Kingma et al. 2016 use it for the IAF VAE on CIFAR-10).
//!
//! Why this one and not a Bernoulli: the pixels flowzoo models are `n_bits` grey levels, not
//! binary (the bundled digits have 17 levels), and this is a likelihood of exactly those
//! discrete values, so a VAE's bits/dim compare directly with a flow's on the same data and
//! `n_bits` (a flow's density at dequantised points bounds the same discrete likelihood).
//!
//! Pixel value `k ∈ {0, …, K−1}`, `K = 2^n_bits`, sits in model space in the bin
//! `[k/K − ½, (k+1)/K − ½)` (the dequantisation flowzoo uses). With a logistic of location μ and
//! scale s, `P(k) = σ((upper − μ)/s) − σ((lower − μ)/s)`, the first and last bins extended to
//! ∓∞ so that the K probabilities sum to 1. Written as
//! `log σ(a) + log σ(−b) + log(1 − e^{b−a})`, which is finite for every μ and s (in float32 too:
//! see the width term).
use anyhow::Result;
use tch::{Kind, Tensor};

/// The bin index of model-space values `x` (dequantised or not), as float: `floor((x + ½)·K)`
/// clamped to `[0, K−1]`.
pub fn bins(x: &Tensor, n_bits: i64) -> Result<Tensor> {
    let k = (1i64 << n_bits) as f64;
    Ok(x.f_add_scalar(0.5)?.f_mul_scalar(k)?.f_floor()?.f_clamp(0.0, k - 1.0)?)
}

/// `log P(bin)` per element for bins `bin` (as from [`bins`]), locations `mu` and log-scales
/// `log_s` of the same shape.
pub fn discretized_logistic_log_prob(bin: &Tensor, mu: &Tensor, log_s: &Tensor, n_bits: i64) -> Result<Tensor> {
    let k = (1i64 << n_bits) as f64;
    let inv_s = log_s.f_neg()?.f_exp()?;
    let lower = bin.f_div_scalar(k)?.f_sub_scalar(0.5)?;
    let a = lower.f_add_scalar(1.0 / k)?.f_sub(mu)?.f_mul(&inv_s)?;
    let b = lower.f_sub(mu)?.f_mul(&inv_s)?;
    let log_cdf_a = a.f_log_sigmoid()?;
    let log_sf_b = b.f_neg()?.f_log_sigmoid()?;
    // log(1 − e^{b−a}) with b − a = −w, w = 1/(K s) > 0. For a wide logistic (small w) it is
    // log w − w/2 (+ O(w²)), taken from log_s directly: e^{−log_s} underflows to 0 in float32
    // once log_s > ~88, and log(1 − e^0) would be −∞. The direct branch reads w clamped to where
    // it is used, so that neither branch's gradient is infinite.
    let log_w = log_s.f_neg()?.f_sub_scalar(k.ln())?;
    let w = log_w.f_exp()?;
    let direct = w.f_clamp_min(1e-3)?.f_neg()?.f_expm1()?.f_neg()?.f_log()?;
    let series = log_w.f_sub(&w.f_mul_scalar(0.5)?)?;
    let log_width = direct.f_where_self(&w.f_gt(1e-3)?, &series)?;
    let middle = log_cdf_a.f_add(&log_sf_b)?.f_add(&log_width)?;
    let first = bin.f_le(0.5)?;
    let last = bin.f_ge(k - 1.5)?;
    Ok(middle.f_where_self(&first.f_logical_not()?, &log_cdf_a)?.f_where_self(&last.f_logical_not()?, &log_sf_b)?)
}

/// `Σ log P` over every dimension but the batch.
pub fn sum_per_image(t: &Tensor) -> Result<Tensor> {
    let b = t.size()[0];
    Ok(t.f_reshape([b, -1])?.f_sum_dim_intlist(Some(&[1i64][..]), false, Some(Kind::Float))?)
}
