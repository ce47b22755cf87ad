//! n-bit quantisation, uniform dequantisation and bits/dim, with the conventions of OpenAI's
//! Glow and its PyTorch ports, so imported models report the same numbers.
use anyhow::Result;
use tch::{Kind, Tensor};

/// uint8 pixels `k` -> `floor(k / 2^(8 - n_bits)) / 2^n_bits - 0.5`, in `kind`.
pub fn to_model_space(pixels: &Tensor, n_bits: i64, kind: Kind) -> Result<Tensor> {
    let k = pixels.f_to_kind(Kind::Float)?;
    let k = if n_bits < 8 { k.f_div_scalar((1i64 << (8 - n_bits)) as f64)?.f_floor()? } else { k };
    Ok(k.f_div_scalar((1i64 << n_bits) as f64)?.f_sub_scalar(0.5)?.f_to_kind(kind)?)
}

/// Adds `U(0, 1/2^n_bits)` noise (draws from libtorch's global generator).
pub fn dequantize(x: &Tensor, n_bits: i64) -> Result<Tensor> {
    Ok(x.f_add(&x.f_rand_like()?.f_div_scalar((1i64 << n_bits) as f64)?)?)
}

/// Model space -> uint8 pixels showing the full range of the `n_bits` levels.
pub fn to_pixels(x: &Tensor, n_bits: i64) -> Result<Tensor> {
    let levels = (1i64 << n_bits) as f64;
    let k = x.f_add_scalar(0.5)?.f_mul_scalar(levels)?.f_floor()?.f_clamp(0.0, levels - 1.0)?;
    Ok(k.f_mul_scalar(255.0 / (levels - 1.0).max(1.0))?.f_round()?.f_to_kind(Kind::Uint8)?)
}

/// bits/dim of a discrete image from the continuous log-density of its dequantised version:
/// `-(log p(x) - D·ln(2^n_bits)) / (D·ln 2)`.
pub fn bits_per_dim(log_prob: &Tensor, dims: i64, n_bits: i64) -> Result<Tensor> {
    let d = dims as f64;
    let c = d * (n_bits as f64) * std::f64::consts::LN_2;
    Ok(log_prob.f_sub_scalar(c)?.f_neg()?.f_div_scalar(d * std::f64::consts::LN_2)?)
}

/// Same as [`bits_per_dim`] for one number.
pub fn nats_to_bpd(log_prob: f64, dims: i64, n_bits: i64) -> f64 {
    let d = dims as f64;
    -(log_prob - d * (n_bits as f64) * std::f64::consts::LN_2) / (d * std::f64::consts::LN_2)
}
