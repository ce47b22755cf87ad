//! `flowzoo bench`: times flowzoo's library on the same work as `bench/bench_torch.py` times
//! the PyTorch reference, and prints the same JSON fields, so `bench/run.sh` can put the two
//! side by side; with `--check` also a device's log-density against CPU float64 on the same
//! weights (`check.rs`), with `--profile` the phases of a step (`profile.rs`). The precision
//! and TF32 switches it sets live in `crate::runtime`.
//!
//! What is timed (after ActNorm's data-dependent init on one batch and `warmup` untimed calls):
//! - `train_steps_per_s`: [`Trainer::train_step`] on a fixed batch of random uint8 images,
//!   dequantised with fresh noise every step (the dequantisation is part of the step);
//! - `log_prob_images_per_s`: `model.log_prob` under `no_grad` on a fixed dequantised batch;
//! - `sample_images_per_s`: `model.sample` at the temperature under `no_grad` (drawing the
//!   noise is part of each call).
//!
//! Each repeat times `steps` calls; the reported numbers are medians over `repeats`.
use crate::config::{Config, Precision};
use crate::data::{dequantize, to_model_space};
use crate::runtime::{apply_precision, libtorch_version};
use crate::session::Session;
use crate::train::Trainer;
use anyhow::{bail, Result};
use serde_json::{json, Value};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

mod check;
mod profile;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    Train,
    LogProb,
    Sample,
}

impl Metric {
    pub fn parse_list(s: &str) -> Result<Vec<Metric>> {
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                Ok(match p.trim() {
                    "train" => Metric::Train,
                    "log_prob" => Metric::LogProb,
                    "sample" => Metric::Sample,
                    other => bail!("unknown metric {other:?}: use train, log_prob, sample"),
                })
            })
            .collect()
    }
}

#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// libtorch intra-op threads (0: leave libtorch's default).
    pub threads: i32,
    pub repeats: usize,
    /// Timed calls per repeat.
    pub steps: usize,
    /// Untimed calls before each repeat.
    pub warmup: usize,
    pub device: Device,
    pub precision: Precision,
    pub temperature: f64,
    pub seed: i64,
    pub metrics: Vec<Metric>,
    /// Also check the device's log-density against CPU float64 on the same weights.
    pub check: bool,
    /// Also time the phases of a training step (dequantise, zero_grad, forward, backward,
    /// gradient norm and host sync, Adam) and of sampling (`profile` in the JSON).
    pub profile: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            threads: 2,
            repeats: 5,
            steps: 20,
            warmup: 2,
            device: Device::Cpu,
            precision: Precision::Fp32,
            temperature: 0.7,
            seed: 0,
            metrics: vec![Metric::Train, Metric::LogProb, Metric::Sample],
            check: false,
            profile: false,
        }
    }
}

pub(crate) fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

pub(crate) fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// CPU seconds used by this process so far (all threads); NaN where unavailable.
pub fn process_cpu_seconds() -> f64 {
    #[cfg(target_os = "linux")]
    {
        #[repr(C)]
        struct Timespec {
            tv_sec: i64,
            tv_nsec: i64,
        }
        extern "C" {
            fn clock_gettime(clk: std::ffi::c_int, tp: *mut Timespec) -> std::ffi::c_int;
        }
        const CLOCK_PROCESS_CPUTIME_ID: std::ffi::c_int = 2;
        let mut t = Timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes one timespec.
        if unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut t) } == 0 {
            return t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9;
        }
    }
    f64::NAN
}

/// (wall seconds, process CPU seconds) for `n` calls of `f` after `warmup` untimed ones.
fn timed(device: Device, warmup: usize, n: usize, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    for _ in 0..warmup {
        f()?;
    }
    sync(device);
    let (t0, c0) = (Instant::now(), process_cpu_seconds());
    for _ in 0..n {
        f()?;
    }
    sync(device);
    Ok((t0.elapsed().as_secs_f64(), process_cpu_seconds() - c0))
}

pub(crate) fn log(msg: &str) {
    eprintln!("[flowzoo bench] {msg}");
}

/// A model of `cfg` on `device`, ActNorm-initialised on one dequantised batch of `images`
/// (uint8, model's shape), ready to train.
fn initialised_trainer(cfg: &Config, device: Device, images: &Tensor) -> Result<Trainer> {
    let sess = Session::new(cfg, vec![], device)?;
    let tr = Trainer::new(sess, vec![])?;
    let n_bits = cfg.data.n_bits;
    let x = to_model_space(&images.f_to_device(device)?, n_bits, Kind::Float)?;
    tr.data_init(&dequantize(&x, n_bits)?, None)?;
    Ok(tr)
}

/// Runs the benchmark of `opts` on the model `cfg` describes; returns the JSON object that
/// `flowzoo bench` prints (the fields of `bench/bench_torch.py`'s output, plus `impl`).
pub fn run(cfg: &Config, opts: &BenchOptions) -> Result<Value> {
    if opts.repeats == 0 || opts.steps == 0 {
        bail!("--repeats and --steps must be >= 1");
    }
    let load_start = loadavg();
    crate::runtime::set_threads(opts.threads as i64)?;
    // ActNorm's data-dependent init in float32 whatever the precision timed, so every
    // precision times (and checks) the same model.
    apply_precision(Precision::Fp32)?;
    let device = opts.device;
    let (c, s, b, n_bits) = (cfg.data.channels, cfg.data.image_size, cfg.train.batch_size, cfg.data.n_bits);
    tch::manual_seed(opts.seed);
    let images = Tensor::f_randint(256, [b, c, s, s], (Kind::Uint8, Device::Cpu))?;
    let mut tr = initialised_trainer(cfg, device, &images)?;
    tr.reset_ema();
    apply_precision(opts.precision)?;
    tr.sess.compute_kind = crate::runtime::compute_kind(opts.precision);
    let n_params = tr.sess.parameter_count();
    let x = to_model_space(&images.f_to_device(device)?, n_bits, Kind::Float)?;
    log(&format!(
        "{} | {n_params} params | device {device:?} | precision {} | threads {}",
        tr.sess.model.describe(),
        opts.precision.name(),
        tch::get_num_threads()
    ));

    let mut runs = serde_json::Map::new();
    // Process CPU milliseconds per call (all threads): less sensitive to other processes than
    // wall time with one thread; inflated by OpenMP's spin-waiting with several.
    let mut cpu_ms: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    let mut medians = serde_json::Map::new();
    let mut last_loss = f64::NAN;
    if opts.metrics.contains(&Metric::Train) {
        let mut v = vec![];
        for r in 0..opts.repeats {
            let (dt, cpu) = timed(device, opts.warmup, opts.steps, || {
                let xd = dequantize(&x, n_bits)?;
                match tr.train_step(&xd, None)? {
                    crate::train::StepOutcome::Updated { loss, .. } | crate::train::StepOutcome::Skipped { loss, .. } => {
                        last_loss = loss
                    }
                }
                Ok(())
            })?;
            v.push(opts.steps as f64 / dt);
            cpu_ms.entry("train").or_default().push(cpu * 1e3 / opts.steps as f64);
            log(&format!("train repeat {r}: {:.3} steps/s (loss {last_loss:.4} bpd)", v[r]));
        }
        medians.insert("train_steps_per_s".into(), json!(median(&v)));
        runs.insert("train_steps_per_s".into(), json!(v));
    }
    let model = &tr.sess.model;
    if opts.metrics.contains(&Metric::LogProb) {
        let _g = tch::no_grad_guard();
        let x_deq = dequantize(&x, n_bits)?;
        let mut v = vec![];
        for r in 0..opts.repeats {
            let (dt, cpu) = timed(device, opts.warmup, opts.steps, || {
                let _ = model.log_prob(&x_deq, &tr.sess.ctx_eval(None))?;
                Ok(())
            })?;
            v.push((opts.steps as i64 * b) as f64 / dt);
            cpu_ms.entry("log_prob").or_default().push(cpu * 1e3 / opts.steps as f64);
            log(&format!("log_prob repeat {r}: {:.1} images/s", v[r]));
        }
        medians.insert("log_prob_images_per_s".into(), json!(median(&v)));
        runs.insert("log_prob_images_per_s".into(), json!(v));
    }
    if opts.metrics.contains(&Metric::Sample) {
        let _g = tch::no_grad_guard();
        let mut v = vec![];
        let mut last = None;
        for r in 0..opts.repeats {
            let (dt, cpu) = timed(device, opts.warmup, opts.steps, || {
                last = Some(model.sample(b, opts.temperature, &tr.sess.ctx_eval(None), (Kind::Float, device))?);
                Ok(())
            })?;
            v.push((opts.steps as i64 * b) as f64 / dt);
            cpu_ms.entry("sample").or_default().push(cpu * 1e3 / opts.steps as f64);
            log(&format!("sample repeat {r}: {:.1} images/s", v[r]));
        }
        if let Some(s) = last {
            if !bool::try_from(s.f_isfinite()?.f_all()?)? {
                log("warning: the last samples contain non-finite values");
            }
        }
        medians.insert("sample_images_per_s".into(), json!(median(&v)));
        runs.insert("sample_images_per_s".into(), json!(v));
    }

    let mut out = medians;
    out.insert("impl".into(), json!("flowzoo"));
    out.insert("threads".into(), json!(tch::get_num_threads()));
    out.insert("torch".into(), json!(libtorch_version().unwrap_or_else(|| "unknown".into())));
    out.insert("precision".into(), json!(opts.precision.name()));
    out.insert(
        "config".into(),
        json!({
            "image_size": s, "channels": c, "K": cfg.model.steps, "L": cfg.model.levels,
            "width": cfg.model.width, "batch": b, "n_bits": n_bits, "dtype": "float32",
            "repeats": opts.repeats, "steps": opts.steps, "warmup": opts.warmup,
            "temperature": opts.temperature, "device": format!("{device:?}"), "seed": opts.seed,
            "coupling": format!("{:?}", cfg.model.coupling), "permutation": format!("{:?}", cfg.model.permutation),
            "learn_top": cfg.model.learn_top, "optimizer": "flowzoo Adam(lr from config)", "grad_clip": cfg.train.grad_clip,
            "ema": cfg.train.ema, "n_params": n_params, "last_train_loss_bpd": last_loss,
        }),
    );
    if opts.profile {
        out.insert("profile".into(), profile::profile_phases(&mut tr, &x, opts)?);
    }
    if opts.check {
        out.insert("check".into(), check::check_against_cpu_f64(&tr.sess, &images, opts)?);
        apply_precision(opts.precision)?;
    }
    out.insert(
        "cpu_ms_per_call".into(),
        Value::Object(cpu_ms.iter().map(|(k, v)| (k.to_string(), json!(median(v)))).collect()),
    );
    out.insert("loadavg_1min".into(), json!([load_start, loadavg()]));
    out.insert("runs".into(), Value::Object(runs));
    Ok(Value::Object(out))
}
