//! `flowzoo bench --check`: a device's log-density against CPU float64 on the same weights.
use super::{log, BenchOptions};
use crate::config::Precision;
use crate::data::{bits_per_dim, dequantize, to_model_space};
use crate::flows::Ctx;
use crate::runtime::apply_precision;
use crate::session::Session;
use anyhow::{Context, Result};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

/// Log-densities of one batch from `sess` (on its device, in `precision`) against the same
/// weights in float64 on the CPU. The zero-initialised convs are perturbed first (same noise
/// on both sides) so every coupling and prior does real work.
pub(super) fn check_against_cpu_f64(sess: &Session, images: &Tensor, opts: &BenchOptions) -> Result<Value> {
    let cfg = &sess.cfg;
    let n_bits = cfg.data.n_bits;
    let n = images.size()[0].min(8);
    let images = images.f_narrow(0, 0, n)?;
    // Float64 reference on the CPU with a copy of the weights.
    let reference = Session::new(cfg, vec![], Device::Cpu)?;
    let mut ref_vs = reference.vs;
    ref_vs.copy(&sess.vs).context("copying weights to the CPU reference")?;
    ref_vs.double();
    let reference = Session { vs: ref_vs, ..reference };
    // Same perturbation on both sides: drawn once in float64 on the CPU.
    tch::manual_seed(opts.seed + 17);
    {
        let _g = tch::no_grad_guard();
        let ref_vars = reference.vs.variables();
        let dev_vars = sess.vs.variables();
        let mut keys: Vec<&String> = ref_vars.keys().collect();
        keys.sort();
        for k in keys {
            let (r, d) = (&ref_vars[k], &dev_vars[k]);
            if !r.requires_grad() {
                continue;
            }
            let noise = r.f_randn_like()?.f_mul_scalar(0.02)?;
            let _ = r.shallow_clone().f_add_(&noise)?;
            d.shallow_clone().f_copy_(&r.f_to_kind(d.kind())?.f_to_device(d.device())?)?;
        }
    }
    let _g = tch::no_grad_guard();
    tch::manual_seed(opts.seed + 23);
    let x64 = dequantize(&to_model_space(&images, n_bits, Kind::Double)?, n_bits)?;
    apply_precision(opts.precision)?;
    let lp_dev = sess
        .model
        .log_prob(&x64.f_to_kind(Kind::Float)?.f_to_device(sess.device())?, &sess.ctx_eval(None))?
        .f_to_kind(Kind::Double)?
        .f_to_device(Device::Cpu)?;
    apply_precision(Precision::Fp32)?;
    let lp_ref = reference.model.log_prob(&x64, &Ctx::eval())?; // float64, no low-precision conditioners
    let diff = lp_dev.f_sub(&lp_ref)?;
    let rel_norm = diff.f_norm()?.double_value(&[]) / lp_ref.f_norm()?.double_value(&[]);
    let rel_max = diff.f_abs()?.f_div(&lp_ref.f_abs()?)?.f_max()?.double_value(&[]);
    let dims = sess.model.dim();
    let bpd_dev = bits_per_dim(&lp_dev, dims, n_bits)?.f_mean(Kind::Double)?.double_value(&[]);
    let bpd_ref = bits_per_dim(&lp_ref, dims, n_bits)?.f_mean(Kind::Double)?.double_value(&[]);
    log(&format!(
        "check {} on {:?} vs CPU float64: relative error {rel_max:.3e} (max), {rel_norm:.3e} (norm); bits/dim {bpd_dev:.6} vs {bpd_ref:.6}",
        opts.precision.name(),
        sess.device()
    ));
    Ok(json!({
        "device": format!("{:?}", sess.device()), "precision": opts.precision.name(), "n": n,
        "rel_err_max": rel_max, "rel_err_norm": rel_norm,
        "bpd": bpd_dev, "bpd_cpu_f64": bpd_ref, "bpd_diff": bpd_dev - bpd_ref,
    }))
}
