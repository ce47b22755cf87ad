//! The benchmark path and the optimisations it measures keep flowzoo's numerics: the flat Adam
//! is bit-for-bit the per-tensor update, cached inverse weights follow every weight change, and
//! `flowzoo bench` reports the fields bench/run.sh reads.
use flowzoo::bench::{self, BenchOptions, Metric};
use flowzoo::runtime::{self, apply_precision, Precision};
use flowzoo::config::Config;
use flowzoo::flows::{Ctx, Flow, InvConv1x1, InvConv1x1Lu};
use flowzoo::train::Adam;
use tch::{nn, Device, Kind, Tensor};

/// libtorch's generator and grad mode are process-wide: tests that draw take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// The flat-buffer Adam against the per-tensor formula it replaced, op for op (clipping scale
/// included): identical bits in the parameters and the saved moments.
#[test]
fn flat_adam_is_bitwise_the_per_tensor_update() {
    let _s = serial();
    tch::manual_seed(3);
    let o = (Kind::Float, Device::Cpu);
    let shapes = [vec![3, 4], vec![5], vec![2, 2, 3, 3], vec![7, 1], vec![300, 200]];
    let a: Vec<Tensor> = shapes.iter().map(|s| Tensor::randn(s.as_slice(), o).set_requires_grad(true)).collect();
    let b: Vec<Tensor> = a.iter().map(|t| t.detach().copy()).collect();
    let mut opt = Adam::new(a.iter().enumerate().map(|(i, t)| (format!("p{i}"), t.shallow_clone())).collect()).unwrap();
    let mut m: Vec<Tensor> = b.iter().map(|t| t.zeros_like()).collect();
    let mut v: Vec<Tensor> = b.iter().map(|t| t.zeros_like()).collect();
    let (b1, b2, eps, lr) = (0.9f64, 0.999f64, 1e-8, 1e-2);
    for step in 1..=20 {
        let grads: Vec<Tensor> = shapes.iter().map(|s| Tensor::randn(s.as_slice(), o)).collect();
        opt.zero_grad();
        let loss = a.iter().zip(&grads).map(|(p, g)| (p * g).sum(Kind::Float)).fold(Tensor::zeros([], o), |x, y| x + y);
        loss.backward();
        let norm = opt.grad_norm().unwrap().double_value(&[]);
        let want = grads.iter().map(|g| g.square().sum(Kind::Double).double_value(&[])).sum::<f64>().sqrt();
        assert!((norm - want).abs() < 1e-5 * want, "grad norm {norm} vs {want}");
        let scale = if step % 3 == 0 { 0.5 } else { 1.0 };
        opt.step(lr, scale).unwrap();
        let t = step as f64;
        let (bc1, bc2) = (1.0 - b1.powf(t), 1.0 - b2.powf(t));
        for i in 0..b.len() {
            let g = if scale != 1.0 { grads[i].f_mul_scalar(scale).unwrap() } else { grads[i].shallow_clone() };
            // m = β1 m + (1 − β1) g and v = β2 v + (1 − β2) g², as lerps; then
            // p −= (lr / bc1) · m / (√v / √bc2 + eps), written as p += m / t.
            m[i] = m[i].lerp(&g, 1.0 - b1);
            v[i] = v[i].lerp(&g.square(), 1.0 - b2);
            let c = -bc1 / lr;
            let t = v[i].sqrt().f_mul_scalar(c / bc2.sqrt()).unwrap().f_add_scalar(c * eps).unwrap();
            let _ = b[i].shallow_clone().f_addcdiv_(&m[i], &t).unwrap();
        }
    }
    for i in 0..a.len() {
        assert_eq!(max_diff(&a[i], &b[i]), 0.0, "parameter {i}");
    }
    let state: std::collections::BTreeMap<String, Tensor> = opt.state_tensors().into_iter().collect();
    for i in 0..a.len() {
        assert_eq!(max_diff(&state[&format!("m.p{i}")], &m[i]), 0.0, "m of {i}");
        assert_eq!(max_diff(&state[&format!("v.p{i}")], &v[i]), 0.0, "v of {i}");
    }
    // Restoring the state writes through to the flat buffers the next update reads.
    let mut fresh = Adam::new(b.iter().enumerate().map(|(i, t)| (format!("p{i}"), t.shallow_clone())).collect()).unwrap();
    fresh.load_state(&state, 20, "test").unwrap();
    let again: std::collections::BTreeMap<String, Tensor> = fresh.state_tensors().into_iter().collect();
    for (k, t) in &state {
        assert_eq!(max_diff(t, &again[k]), 0.0, "{k} after load_state");
    }
}

/// A parameter without a gradient is skipped, as before (the per-tensor fallback).
#[test]
fn adam_skips_parameters_without_gradient() {
    let _s = serial();
    let o = (Kind::Float, Device::Cpu);
    let used = Tensor::ones([3], o).set_requires_grad(true);
    let unused = Tensor::ones([2], o).set_requires_grad(true);
    let mut opt = Adam::new(vec![("a".into(), used.shallow_clone()), ("b".into(), unused.shallow_clone())]).unwrap();
    (&used * 2.0).sum(Kind::Float).backward();
    opt.step(0.1, 1.0).unwrap();
    assert!(max_diff(&used, &Tensor::ones([3], o)) > 0.05);
    assert_eq!(max_diff(&unused, &Tensor::ones([2], o)), 0.0);
}

/// Cached assembled / inverted 1×1-conv weights (no-grad calls) follow in-place weight changes
/// and weight copies; with gradients on, the inverse is part of the graph.
#[test]
fn cached_invconv_weights_follow_weight_changes() {
    let _s = serial();
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let lu = InvConv1x1Lu::new(vs.root() / "lu", 6);
    let plain = InvConv1x1::new(vs.root() / "plain", 6);
    let x = Tensor::randn([3, 6, 2, 2], (Kind::Float, Device::Cpu));
    let roundtrip = |f: &dyn Flow| {
        let _g = tch::no_grad_guard();
        let (y, _) = f.forward(&x, &Ctx::eval()).unwrap();
        let (back, _) = f.inverse(&y, &Ctx::eval()).unwrap();
        (y, max_diff(&back, &x))
    };
    for (name, f, params) in [
        ("lu", &lu as &dyn Flow, vec![lu.lower.shallow_clone(), lu.upper.shallow_clone(), lu.log_s.shallow_clone()]),
        ("plain", &plain as &dyn Flow, vec![plain.weight.shallow_clone()]),
    ] {
        let (y0, err) = roundtrip(f);
        assert!(err < 1e-5, "{name}: inverse error {err}");
        // Change every parameter in place (what an optimizer step does).
        {
            let _g = tch::no_grad_guard();
            for p in &params {
                let _ = p.shallow_clone().f_add_(&(p.randn_like() * 0.1)).unwrap();
            }
        }
        let (y1, err) = roundtrip(f);
        assert!(err < 1e-5, "{name}: inverse error {err} after an in-place update");
        assert!(max_diff(&y0, &y1) > 1e-3, "{name}: forward did not see the update");
    }
    // Weights copied in from another store.
    let mut other = nn::VarStore::new(Device::Cpu);
    let lu2 = InvConv1x1Lu::new(other.root() / "lu", 6);
    let _p2 = InvConv1x1::new(other.root() / "plain", 6);
    let (before, _) = roundtrip(&lu2);
    other.copy(&vs).unwrap();
    let (after, err) = roundtrip(&lu2);
    assert!(err < 1e-5 && max_diff(&before, &after) > 1e-3, "copied weights not seen (err {err})");
    // With gradients on, the inverse must carry gradients to the parameters.
    let (y, _) = lu.inverse(&x, &Ctx::eval()).unwrap();
    y.sum(Kind::Float).backward();
    assert!(lu.lower.grad().defined() && lu.lower.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
}

/// The flat Adam re-points the parameters at one buffer and updates it in one op: the
/// invertible convs' cached weights (keyed on each parameter's version counter) must still see
/// every update, and a gradient re-pointed elsewhere (as DDP's bucket views do) or parameters
/// re-pointed by `set_data` must still be read and written correctly.
#[test]
fn flat_adam_updates_are_seen_by_caches_and_survive_repointing() {
    let _s = serial();
    tch::manual_seed(4);
    let vs = nn::VarStore::new(Device::Cpu);
    let lu = InvConv1x1Lu::new(vs.root() / "lu", 6);
    let x = Tensor::randn([3, 6, 2, 2], (Kind::Float, Device::Cpu));
    let params: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    let mut opt = Adam::new(params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect()).unwrap();
    let cached = || {
        let _g = tch::no_grad_guard();
        lu.forward(&x, &Ctx::eval()).unwrap().0
    };
    let fresh = || lu.forward(&x, &Ctx::eval()).unwrap().0.detach();
    let mut seen = cached();
    for step in 0..4 {
        opt.zero_grad();
        lu.forward(&x, &Ctx::eval()).unwrap().0.square().sum(Kind::Float).backward();
        if step == 2 {
            // What DDP's gradient_as_bucket_view does: the gradient becomes another tensor.
            let mut g = lu.lower.grad();
            let moved = g.copy();
            let _ = g.f_zero_().unwrap();
            flowzoo::ffi::switches::set_grad(&lu.lower, &moved).unwrap();
        }
        if step == 3 {
            // A parameter re-pointed at its own storage: updated through the per-parameter path.
            let _g = tch::no_grad_guard();
            let copy = lu.upper.detach().copy();
            lu.upper.shallow_clone().set_data(&copy);
        }
        let _ = opt.grad_norm().unwrap();
        let before: Vec<Tensor> = params.iter().map(|(_, p)| p.detach().copy()).collect();
        opt.step(1e-2, 1.0).unwrap();
        for ((name, p), b) in params.iter().zip(&before) {
            assert!(max_diff(p, b) > 0.0, "step {step}: {name} was not updated");
        }
        let now = cached();
        assert_eq!(max_diff(&now, &fresh()), 0.0, "step {step}: the no-grad forward used a stale cached weight");
        assert!(max_diff(&now, &seen) > 0.0, "step {step}: the no-grad forward did not change");
        seen = now;
    }
}

fn tiny_config() -> Config {
    let mut c = Config::default();
    c.data.image_size = 8;
    c.data.channels = 1;
    c.data.n_bits = 4;
    c.model.levels = 2;
    c.model.steps = 2;
    c.model.width = 8;
    c.train.batch_size = 4;
    c
}

#[test]
fn bench_reports_the_fields_run_sh_reads_and_checks_against_f64() {
    let _s = serial();
    let opts = BenchOptions { threads: 1, repeats: 2, steps: 2, warmup: 1, check: true, profile: true, ..BenchOptions::default() };
    let out = bench::run(&tiny_config(), &opts).unwrap();
    for key in ["train_steps_per_s", "log_prob_images_per_s", "sample_images_per_s"] {
        let v = out[key].as_f64().unwrap_or(f64::NAN);
        assert!(v.is_finite() && v > 0.0, "{key}: {v}");
        assert_eq!(out["runs"][key].as_array().map(|a| a.len()), Some(2), "{key} runs");
    }
    assert_eq!(out["threads"], 1);
    assert_eq!(out["impl"], "flowzoo");
    assert!(out["torch"].as_str().is_some_and(|v| v.starts_with("2.")), "{}", out["torch"]);
    let rel = out["check"]["rel_err_max"].as_f64().unwrap();
    assert!(rel < 1e-4, "float32 vs float64 relative error {rel}");
    assert!(out["profile"]["forward_ms"].as_f64().unwrap() > 0.0);

    // Only the requested metrics.
    let only = BenchOptions { threads: 1, repeats: 1, steps: 1, warmup: 0, metrics: vec![Metric::LogProb], ..BenchOptions::default() };
    let out = bench::run(&tiny_config(), &only).unwrap();
    assert!(out.get("train_steps_per_s").is_none() && out["log_prob_images_per_s"].as_f64().is_some());
}

#[test]
fn precisions_parse_and_set_libtorch_switches() {
    let _s = serial();
    assert_eq!("fp32".parse::<Precision>().unwrap(), Precision::Fp32);
    assert_eq!("tf32".parse::<Precision>().unwrap(), Precision::Tf32);
    assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
    assert!("fp16".parse::<Precision>().is_err());
    assert!(Metric::parse_list("train,nope").is_err());
    assert_eq!(Metric::parse_list("").unwrap(), vec![]);
    apply_precision(Precision::Tf32).unwrap();
    assert!(runtime::allow_tf32_cublas());
    assert_eq!(runtime::compute_kind(Precision::Tf32), None);
    apply_precision(Precision::Bf16).unwrap();
    assert!(!runtime::allow_tf32_cublas());
    assert_eq!(runtime::compute_kind(Precision::Bf16), Some(Kind::BFloat16));
    apply_precision(Precision::Fp32).unwrap();
    assert!(!runtime::allow_tf32_cublas());
    assert_eq!(runtime::compute_kind(Precision::Fp32), None);
}
