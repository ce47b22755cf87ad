//! `flowzoo bench --profile`: the phases of a training step, timed one at a time.
use super::{log, median, sync, BenchOptions};
use crate::data::dequantize;
use crate::train::Trainer;
use anyhow::Result;
use serde_json::{json, Value};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Milliseconds per call of each phase of a training step, timed one phase at a time over
/// `steps` steps (medians over `repeats`), with the device synchronised around each phase.
pub(super) fn profile_phases(tr: &mut Trainer, x: &Tensor, opts: &BenchOptions) -> Result<Value> {
    let device = opts.device;
    let n_bits = tr.sess.cfg.data.n_bits;
    let dims = tr.sess.model.dim() as f64;
    let names = ["dequantize", "zero_grad", "forward", "backward", "grad_norm_sync", "adam_step", "sample"];
    let mut acc: Vec<Vec<f64>> = vec![vec![]; names.len()];
    let b = x.size()[0];
    for _ in 0..opts.repeats {
        let mut t = vec![0.0; names.len()];
        for _ in 0..opts.steps.max(1) + opts.warmup {
            let clock = |i: usize, t: &mut Vec<f64>, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
                sync(device);
                let t0 = Instant::now();
                f()?;
                sync(device);
                t[i] += t0.elapsed().as_secs_f64();
                Ok(())
            };
            let mut xd = None;
            clock(0, &mut t, &mut || {
                xd = Some(dequantize(x, n_bits)?);
                Ok(())
            })?;
            clock(1, &mut t, &mut || {
                tr.opt.zero_grad();
                Ok(())
            })?;
            let mut loss = None;
            let xd = xd.expect("set");
            clock(2, &mut t, &mut || {
                let lp = tr.sess.model.log_prob(&xd, &tr.sess.ctx_train(None))?;
                loss = Some(lp.f_mean(Kind::Float)?.f_neg()?.f_div_scalar(dims * std::f64::consts::LN_2)?.f_add_scalar(n_bits as f64)?);
                Ok(())
            })?;
            let loss = loss.expect("set");
            clock(3, &mut t, &mut || Ok(loss.f_backward()?))?;
            clock(4, &mut t, &mut || {
                let norm = tr.opt.grad_norm()?;
                let _ = Vec::<f64>::try_from(Tensor::f_stack(&[loss.f_detach()?.f_to_kind(Kind::Double)?, norm.f_to_kind(Kind::Double)?], 0)?.f_to_device(Device::Cpu)?)?;
                Ok(())
            })?;
            clock(5, &mut t, &mut || Ok(tr.opt.step(1e-4, 1.0)?))?;
            clock(6, &mut t, &mut || {
                let _g = tch::no_grad_guard();
                let _ = tr.sess.model.sample(b, opts.temperature, &tr.sess.ctx_eval(None), (Kind::Float, device))?;
                Ok(())
            })?;
        }
        for (a, v) in acc.iter_mut().zip(&t) {
            a.push(v * 1e3 / (opts.steps.max(1) + opts.warmup) as f64);
        }
    }
    let mut m = serde_json::Map::new();
    let mut line = String::from("phases (ms per call):");
    for (n, a) in names.iter().zip(&acc) {
        let v = median(a);
        line += &format!(" {n} {v:.2}");
        m.insert(format!("{n}_ms"), json!(v));
    }
    log(&line);
    Ok(Value::Object(m))
}

