//! `flowzoo bench`: times flowzoo's library on the same work as `bench/bench_torch.py` times
//! the PyTorch reference, and prints the same JSON fields, so `bench/run.sh` can put the two
//! side by side. Also the precision switches for CUDA (fp32 / tf32 / bf16 conditioners) and a
//! check of a device's log-density against CPU float64 on the same weights.
//!
//! What is timed (after ActNorm's data-dependent init on one batch and `warmup` untimed calls):
//! - `train_steps_per_s`: [`Trainer::train_step`] on a fixed batch of random uint8 images,
//!   dequantised with fresh noise every step (the dequantisation is part of the step);
//! - `log_prob_images_per_s`: `model.log_prob` under `no_grad` on a fixed dequantised batch;
//! - `sample_images_per_s`: `model.sample` at the temperature under `no_grad` (drawing the
//!   noise is part of each call).
//!
//! Each repeat times `steps` calls; the reported numbers are medians over `repeats`.
use crate::config::Config;
use crate::data::{bits_per_dim, dequantize, to_model_space};
use crate::flows::Ctx;
use crate::train::{Session, Trainer};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::str::FromStr;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Arithmetic precision on CUDA.
///
/// - `Fp32`: IEEE float32 everywhere (cuDNN and cuBLAS TF32 off; note that libtorch and
///   PyTorch allow TF32 in cuDNN convolutions by default, so this is stricter than the default).
/// - `Tf32`: float32 storage, TF32 tensor-core math in cuDNN convolutions and cuBLAS matmuls.
/// - `Bf16`: the coupling conditioner networks run their convolutions in bfloat16 (what
///   `torch.autocast(dtype=bfloat16)` does to them: conv inputs and weights cast to bf16); the
///   flow itself (ActNorm, 1×1 convs, the coupling transform, log-dets, split and top priors)
///   stays in IEEE float32.
///
/// On the CPU the TF32 switches do nothing; bf16 conditioners run through oneDNN's bf16 path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Fp32,
    Tf32,
    Bf16,
}

impl FromStr for Precision {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "fp32" | "float32" => Precision::Fp32,
            "tf32" => Precision::Tf32,
            "bf16" | "bfloat16" => Precision::Bf16,
            _ => bail!("unknown precision {s:?}: use fp32, tf32 or bf16"),
        })
    }
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }

    /// Sets libtorch's process-wide TF32 switches for this precision (through the C++ shim).
    pub fn apply(self) -> Result<()> {
        crate::ffi::switches::set_allow_tf32(self == Precision::Tf32)
    }

    /// The dtype conditioner networks compute in at this precision (`Ctx::compute_kind`).
    pub fn compute_kind(self) -> Option<Kind> {
        match self {
            Precision::Bf16 => Some(Kind::BFloat16),
            _ => None,
        }
    }
}

/// libtorch's cuBLAS TF32 switch (a read-back, for the record).
pub fn allow_tf32_cublas() -> bool {
    crate::ffi::switches::allow_tf32_cublas()
}

/// The version of the libtorch this process runs on, read from the `torch/version.py` next to
/// the loaded `libtorch_cpu.so` (PyTorch wheels), e.g. "2.11.0+cu130".
pub fn libtorch_version() -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let lib = maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| p.ends_with("/libtorch_cpu.so"))?;
    let torch_dir = std::path::Path::new(lib).parent()?.parent()?;
    let text = std::fs::read_to_string(torch_dir.join("version.py")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("__version__ = "))
        .map(|v| v.trim().trim_matches(|c| c == '\'' || c == '"').to_string())
}

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

fn median(v: &[f64]) -> f64 {
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

fn sync(device: Device) {
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

/// Seconds for `n` calls of `f` after `warmup` untimed ones.
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

fn log(msg: &str) {
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
    if opts.threads > 0 {
        tch::set_num_threads(opts.threads);
    }
    // ActNorm's data-dependent init in float32 whatever the precision timed, so every
    // precision times (and checks) the same model.
    Precision::Fp32.apply()?;
    let device = opts.device;
    let (c, s, b, n_bits) = (cfg.data.channels, cfg.data.image_size, cfg.train.batch_size, cfg.data.n_bits);
    tch::manual_seed(opts.seed);
    let images = Tensor::f_randint(256, [b, c, s, s], (Kind::Uint8, Device::Cpu))?;
    let mut tr = initialised_trainer(cfg, device, &images)?;
    tr.reset_ema();
    opts.precision.apply()?;
    tr.sess.compute_kind = opts.precision.compute_kind();
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
                model.log_prob(&x_deq, &tr.sess.ctx_eval(None))?;
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
        out.insert("profile".into(), profile_phases(&mut tr, &x, opts)?);
    }
    if opts.check {
        out.insert("check".into(), check_against_cpu_f64(&tr.sess, &images, opts)?);
        opts.precision.apply()?;
    }
    out.insert(
        "cpu_ms_per_call".into(),
        Value::Object(cpu_ms.iter().map(|(k, v)| (k.to_string(), json!(median(v)))).collect()),
    );
    out.insert("loadavg_1min".into(), json!([load_start, loadavg()]));
    out.insert("runs".into(), Value::Object(runs));
    Ok(Value::Object(out))
}

/// Milliseconds per call of each phase of a training step, timed one phase at a time over
/// `steps` steps (medians over `repeats`), with the device synchronised around each phase.
fn profile_phases(tr: &mut Trainer, x: &Tensor, opts: &BenchOptions) -> Result<Value> {
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
                tr.sess.model.sample(b, opts.temperature, &tr.sess.ctx_eval(None), (Kind::Float, device))?;
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

/// Log-densities of one batch from `sess` (on its device, in `precision`) against the same
/// weights in float64 on the CPU. The zero-initialised convs are perturbed first (same noise
/// on both sides) so every coupling and prior does real work.
fn check_against_cpu_f64(sess: &Session, images: &Tensor, opts: &BenchOptions) -> Result<Value> {
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
            r.shallow_clone().f_add_(&noise)?;
            d.shallow_clone().f_copy_(&r.f_to_kind(d.kind())?.f_to_device(d.device())?)?;
        }
    }
    let _g = tch::no_grad_guard();
    tch::manual_seed(opts.seed + 23);
    let x64 = dequantize(&to_model_space(&images, n_bits, Kind::Double)?, n_bits)?;
    opts.precision.apply()?;
    let lp_dev = sess
        .model
        .log_prob(&x64.f_to_kind(Kind::Float)?.f_to_device(sess.device())?, &sess.ctx_eval(None))?
        .f_to_kind(Kind::Double)?
        .f_to_device(Device::Cpu)?;
    Precision::Fp32.apply()?;
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
