//! `flowzoo eval` of a VAE (any model with latent variables): the ELBO and the
//! importance-weighted bound `log (1/k) Σ_j p(x, z_j) / q(z_j | x)` (Burda et al. 2016) from the
//! same `k` posterior draws per image, in nats of the discrete pixels and in bits/dim. From the
//! same draws the bound is never below the ELBO (Jensen), and for `k = 1` they are equal.
use crate::data::{nats_to_bpd, to_model_space};
use crate::session::Session;
use anyhow::{bail, Result};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

/// Per-image means over the evaluated images.
#[derive(Clone, Debug, Serialize)]
pub struct BoundReport {
    pub n: usize,
    pub k: i64,
    /// `mean_j log w_j`, nats per image (discrete pixels).
    pub elbo_nats: f64,
    /// `log mean_j exp(log w_j)`, nats per image.
    pub iw_bound_nats: f64,
    /// `iw_bound_nats − elbo_nats` (>= 0).
    pub gap_nats: f64,
    pub elbo_bpd: f64,
    pub iw_bound_bpd: f64,
    /// Standard errors of the two means over the images.
    pub elbo_stderr: f64,
    pub iw_bound_stderr: f64,
}

/// Per-image `(ELBO, importance-weighted bound)` in nats of the discrete pixels, from `k` draws
/// per image, for uint8 `pixels`, `batch` images at a time (the draws seeded with `seed`).
pub fn bounds_per_image(sess: &Session, pixels: &Tensor, k: i64, batch: i64, seed: i64) -> Result<(Vec<f64>, Vec<f64>)> {
    let Some(lv) = sess.model.latent_variable() else { bail!("the model has no latent variables: its log_prob is exact, there is no bound to report") };
    if k < 1 || batch < 1 {
        bail!("--k and --batch must be >= 1 (got {k} and {batch})");
    }
    let _g = tch::no_grad_guard();
    tch::manual_seed(seed);
    let n = pixels.size()[0];
    let d: i64 = sess.model.event_shape().iter().product();
    let to_discrete = d as f64 * sess.cfg.data.n_bits as f64 * std::f64::consts::LN_2;
    // Rows per decoder pass stay near 32k whatever k is.
    let piece = k.min(4096);
    let per_pass = (32768 / piece).clamp(1, batch);
    let (mut elbo, mut iw) = (vec![], vec![]);
    let mut start = 0;
    while start < n {
        let len = per_pass.min(n - start);
        let x = to_model_space(&pixels.f_narrow(0, start, len)?.f_to_device(sess.device())?, sess.cfg.data.n_bits, sess.kind())?;
        let mut parts = vec![];
        let mut done = 0;
        while done < k {
            let m = piece.min(k - done);
            parts.push(lv.log_weights(&x, m, &sess.ctx_eval(None))?.f_to_kind(Kind::Double)?);
            done += m;
        }
        let lw = Tensor::f_cat(&parts, 1)?.f_sub_scalar(to_discrete)?;
        let e = lw.f_mean_dim(Some(&[1i64][..]), false, None)?;
        let b = lw.f_logsumexp(&[1i64][..], false)?.f_sub_scalar((k as f64).ln())?;
        elbo.extend(Vec::<f64>::try_from(&e.f_to_device(Device::Cpu)?)?);
        iw.extend(Vec::<f64>::try_from(&b.f_to_device(Device::Cpu)?)?);
        start += len;
    }
    Ok((elbo, iw))
}

fn mean_stderr(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, (var / n).sqrt())
}

/// The [`BoundReport`] of uint8 `pixels`.
pub fn bound_report(sess: &Session, pixels: &Tensor, k: i64, batch: i64, seed: i64) -> Result<BoundReport> {
    let (elbo, iw) = bounds_per_image(sess, pixels, k, batch, seed)?;
    if elbo.is_empty() {
        bail!("no images to evaluate");
    }
    let d: i64 = sess.model.event_shape().iter().product();
    let bits = sess.cfg.data.n_bits;
    // nats of the discrete pixels -> bits/dim: nats_to_bpd takes model-space units.
    let bpd = |nats: f64| nats_to_bpd(nats + d as f64 * bits as f64 * std::f64::consts::LN_2, d, bits);
    let ((e, es), (b, bs)) = (mean_stderr(&elbo), mean_stderr(&iw));
    Ok(BoundReport {
        n: elbo.len(),
        k,
        elbo_nats: e,
        iw_bound_nats: b,
        gap_nats: b - e,
        elbo_bpd: bpd(e),
        iw_bound_bpd: bpd(b),
        elbo_stderr: es,
        iw_bound_stderr: bs,
    })
}
