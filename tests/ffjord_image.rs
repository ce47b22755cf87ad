//! FFJORD on images: the conv field's continuous flow (log-det against a brute-force Jacobian,
//! the coloured exact trace against the one-hot columns, invertibility, Hutchinson unbiased,
//! chunking), the multi-scale model (parameter names, finite log-density, sample -> noise round
//! trip), its config errors, and a tiny CLI run on the bundled digits.
use flowzoo::config::Config;
use flowzoo::flows::ode::{Method, SolverOptions};
use flowzoo::flows::testing::{brute_force_logdet, perturb};
use flowzoo::flows::*;
use flowzoo::models::DensityModel;
use std::process::Command;
use tch::{nn::VarStore, Device, Kind, Tensor};

const F64: (Kind, Device) = (Kind::Double, Device::Cpu);

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

fn options(solver: SolverOptions) -> CnfOptions {
    CnfOptions { train_solver: solver.clone(), eval_solver: solver, ..CnfOptions::default() }
}

/// A float64 CNF with a conv field on `shape`, every parameter moved off its initial value.
fn conv_cnf(vs: &mut VarStore, shape: [i64; 3], context: i64, hidden: &[i64], act: OdeActivation, opts: CnfOptions) -> Cnf {
    let net = OdeNet::conv(vs.root() / "cnf" / "net", shape, context, hidden, act).unwrap();
    let cnf = Cnf::with_net(vs.root() / "cnf", net, 0.7, true, opts).unwrap();
    perturb(vs, 0.2);
    vs.double();
    cnf
}

#[test]
fn the_conv_field_log_det_matches_the_brute_force_jacobian_and_inverts() {
    tch::manual_seed(1);
    // [2, 4, 4] with three convs: every pixel its own colour. [2, 5, 5] with two: 18 colours
    // of period 3 stand for the 50 basis vectors. The third case has a context.
    let cases: [([i64; 3], Vec<i64>, OdeActivation, i64, i64); 3] = [
        ([2, 4, 4], vec![6, 6], OdeActivation::Softplus, 0, 32),
        ([2, 5, 5], vec![6], OdeActivation::Tanh, 0, 18),
        ([1, 5, 4], vec![5], OdeActivation::Elu, 2, 9),
    ];
    for (shape, hidden, act, context, probes) in cases {
        let mut vs = VarStore::new(Device::Cpu);
        let cnf = conv_cnf(&mut vs, shape, context, &hidden, act, options(SolverOptions::dopri5(1e-9, 1e-9)));
        assert_eq!(cnf.net.trace_probes(), probes, "{shape:?}: colours of the exact trace");
        let d: i64 = shape.iter().product();
        let x = Tensor::randn([3, d], F64);
        let cond = (context > 0).then(|| Tensor::randn([3, context], F64));
        let ctx = Ctx::eval().with_cond(cond.as_ref());
        let (z, ld) = cnf.forward(&x, &ctx).unwrap();
        let brute = brute_force_logdet(&cnf, &x, &ctx).unwrap();
        assert!(max_abs(&(&ld - &brute)) < 1e-6, "{shape:?} {act:?}: log-det {ld:?} vs brute force {brute:?}");
        assert!(max_abs(&(&z - &x)) > 1e-2 && max_abs(&ld) > 1e-3, "{shape:?}: a trivial flow");
        let (x2, ld2) = cnf.inverse(&z, &ctx).unwrap();
        assert!(max_abs(&(&x2 - &x)) < 1e-6, "{shape:?}: inverse error {}", max_abs(&(&x2 - &x)));
        assert!(max_abs(&(&ld2 + &ld)) < 1e-6);
        if context > 0 {
            let other = Tensor::randn([3, context], F64);
            let (z_other, _) = cnf.forward(&x, &Ctx::eval().with_cond(Some(&other))).unwrap();
            assert!(max_abs(&(&z_other - &z)) > 1e-3, "the context must matter");
        }
    }
}

#[test]
fn coloured_trace_equals_the_one_hot_columns_and_chunks_do_not_matter() {
    tch::manual_seed(2);
    let mut vs = VarStore::new(Device::Cpu);
    // Fixed steps: both solves take the same grid, so the two traces meet to rounding.
    let opts = CnfOptions { trace: TraceChoice::Exact, jacobian_weight: 1.0, ..options(SolverOptions::fixed(Method::Rk4, 4)) };
    let cnf = conv_cnf(&mut vs, [2, 6, 6], 0, &[4], OdeActivation::Softplus, opts);
    assert_eq!(cnf.net.trace_probes(), 18);
    let x = Tensor::randn([600, 72], F64);
    let _g = tch::no_grad_guard();
    // Training with the Jacobian norm carries all 72 one-hot columns; evaluation the colours.
    let sink = Sink::new();
    let (_, ld_columns) = cnf.forward(&x, &Ctx::train().with_sink(&sink)).unwrap();
    let (_, ld_colours) = cnf.forward(&x, &Ctx::eval()).unwrap();
    assert!(max_abs(&(&ld_columns - &ld_colours)) < 1e-10, "{}", max_abs(&(&ld_columns - &ld_colours)));
    assert!(sink.penalties().iter().any(|(n, p)| n == "jacobian_norm" && p.min().double_value(&[]) > 0.0));
    // 600 rows × 36 pixels: 16384 / 21600 rows, one colour (or column) per chunk.
    let (_, small) = cnf.forward(&x.narrow(0, 0, 3), &Ctx::eval()).unwrap();
    assert!(max_abs(&(&ld_colours.narrow(0, 0, 3) - &small)) < 1e-10);
}

#[test]
fn hutchinson_with_the_conv_field_is_unbiased() {
    tch::manual_seed(3);
    for noise in [Noise::Rademacher, Noise::Gaussian] {
        let mut vs = VarStore::new(Device::Cpu);
        let opts = CnfOptions { trace: TraceChoice::Hutchinson, noise, ..options(SolverOptions::fixed(Method::Rk4, 6)) };
        let cnf = conv_cnf(&mut vs, [2, 4, 4], 0, &[6, 6], OdeActivation::Softplus, opts);
        let x = Tensor::randn([1, 32], F64).repeat([4000, 1]);
        let _g = tch::no_grad_guard();
        let (_, exact) = cnf.forward(&x.narrow(0, 0, 1), &Ctx::eval()).unwrap();
        let (_, est) = cnf.forward(&x, &Ctx { stochastic_logdet: true, ..Ctx::eval() }).unwrap();
        let (mean, sd) = (est.mean(Kind::Double).double_value(&[]), est.std(true).double_value(&[]));
        let se = sd / 4000f64.sqrt();
        let exact = exact.double_value(&[0]);
        assert!(sd > 1e-3, "{noise:?}: the estimate does not vary (sd {sd})");
        assert!((mean - exact).abs() < 4.0 * se, "{noise:?}: mean {mean} vs exact {exact} (standard error {se})");
    }
}

fn digits_config(extra: &[&str]) -> Config {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sets: Vec<String> = ["model.cnf.hidden=[4]", "model.cnf.eval_solver=rk4", "model.cnf.eval_steps=3", "model.cnf.solver=rk4", "model.cnf.steps=2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    sets.extend(extra.iter().map(|s| s.to_string()));
    Config::load(&root.join("configs/ffjord_digits.toml")).unwrap().with_overrides(&sets).unwrap()
}

#[test]
fn the_multi_scale_model_has_stable_names_and_round_trips() {
    tch::manual_seed(4);
    let cfg = digits_config(&["model.norm=none", "model.blocks=1", "model.cnf.eval_solver=dopri5", "model.cnf.eval_rtol=1e-9", "model.cnf.eval_atol=1e-9"]);
    let mut vs = VarStore::new(Device::Cpu);
    let model = flowzoo::models::build(&cfg, vs.root(), 10).unwrap();
    let mut names: Vec<String> = vs.variables().into_keys().collect();
    names.sort();
    let mut want = vec![];
    // Level 0: a CNF on [1, 8, 8], squeeze, a CNF on [4, 4, 4], split; level 1: a CNF on [2, 4, 4].
    for (level, block) in [(0, 0), (0, 1), (1, 0)] {
        let p = format!("levels.{level}.blocks.{block}.cnf");
        want.push(format!("{p}.sqrt_end_time"));
        for i in 0..2 {
            for q in ["linear.weight", "linear.bias", "gate.weight", "gate.bias", "hyper_bias.weight"] {
                want.push(format!("{p}.net.{i}.{q}"));
            }
        }
    }
    want.extend(["levels.0.split.conv.bias".to_string(), "levels.0.split.conv.weight".into(), "levels.0.split.logs".into()]);
    want.sort();
    assert_eq!(names, want);
    assert_eq!(vs.variables()["levels.0.blocks.1.cnf.net.0.linear.weight"].size(), [4, 4, 3, 3]);
    perturb(&vs, 0.1);
    vs.double();
    let _g = tch::no_grad_guard();
    let x = Tensor::rand([5, 1, 8, 8], F64) - 0.5;
    let lp = model.log_prob(&x, &Ctx::eval()).unwrap();
    assert_eq!(lp.size(), [5]);
    assert!(bool::try_from(lp.isfinite().all()).unwrap(), "{lp:?}");
    // Noise -> sample -> noise, with log-dets that cancel.
    let eps = Tensor::randn([4, 64], F64) * 0.8;
    let (s, ld_inv) = model.from_noise(&eps, &Ctx::eval()).unwrap();
    assert_eq!(s.size(), [4, 1, 8, 8]);
    let (eps2, ld) = model.to_noise(&s, &Ctx::eval()).unwrap();
    assert!(max_abs(&(&eps2 - &eps)) < 1e-6, "round trip error {}", max_abs(&(&eps2 - &eps)));
    assert!(max_abs(&(&ld + &ld_inv)) < 1e-6);
    assert!(max_abs(&ld) > 1e-3, "a trivial model");
}

fn err_of(extra: &[&str]) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let sets: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    format!("{:#}", Config::load(&root.join("configs/ffjord_digits.toml")).unwrap().with_overrides(&sets).unwrap_err())
}

#[test]
fn bad_image_settings_are_refused_by_name() {
    for (sets, key, hint) in [
        (vec!["model.cnf.layer_type=mlp"], "model.cnf.layer_type", "concat-squash conv"),
        (vec!["data.image_size=6", "model.levels=3"], "data.image_size", "2^(model.levels - 1) = 4"),
        (vec!["model.cnf.hidden=[0]"], "model.cnf.hidden", "between 1 and 65536"),
        (vec!["train.objective=flow_matching", "model.blocks=1", "model.norm=none"], "train.objective", "multi-scale"),
        (vec!["model.cnf.eval_rtol=-1"], "model.cnf", "rtol"),
    ] {
        let e = err_of(&sets);
        assert!(e.contains(key) && e.contains(hint), "{sets:?}: {e}");
    }
    // Eight pixels halve twice: three levels fit an 8×8 image (two squeezes), five do not.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(Config::load(&root.join("configs/ffjord_digits.toml")).unwrap().with_overrides(&["model.levels=3".to_string()]).is_ok());
    assert!(err_of(&["model.levels=5"]).contains("data.image_size"));
}

#[test]
fn the_cli_trains_evaluates_and_samples_a_tiny_image_ffjord() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let run_s = run.to_str().unwrap();
    let flowzoo = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_flowzoo")).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
        assert!(o.status.success(), "flowzoo {args:?}:\n{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let mut args = vec!["train", "--config", "configs/ffjord_digits.toml", "--out", run_s, "-q"];
    for s in [
        "model.cnf.hidden=[4]",
        "model.cnf.solver=rk4",
        "model.cnf.steps=2",
        "model.cnf.eval_solver=rk4",
        "model.cnf.eval_steps=2",
        "train.max_steps=3",
        "train.eval_every=3",
        "train.checkpoint_every=3",
        "train.sample_every=0",
        "train.threads=1",
        "train.device=cpu",
    ] {
        args.extend(["--set", s]);
    }
    let out = flowzoo(&args);
    assert!(out.contains("trained 3 steps"), "{out}");
    assert!(run.join("samples/final.png").is_file() && run.join("best.safetensors").is_file());
    let json: serde_json::Value = serde_json::from_str(&flowzoo(&["eval", "--model", run_s, "--json"])).unwrap();
    assert_eq!(json["n"], 360);
    let bpd = json["mean_bpd"].as_f64().expect("mean_bpd");
    assert!(bpd.is_finite() && bpd > 0.0, "test bits/dim {bpd}");
    let png = d.path().join("s.png");
    flowzoo(&["sample", "--model", run_s, "-n", "4", "-o", png.to_str().unwrap()]);
    assert!(png.is_file());
    let info = flowzoo(&["info", "--model", run_s]);
    assert!(info.contains("FFJORD (images, multi-scale)"), "{info}");
}
