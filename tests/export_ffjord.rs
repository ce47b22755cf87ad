//! FFJORD's TorchScript (src/flows/cnf/script.rs, src/export/ode.rs): the continuous flow layer
//! against the Rust layer for every field, activation and solver (the adaptive Dormand–Prince
//! takes the same steps, so float64 agrees to 1e-10), Hutchinson's trace with the same probes,
//! the whole model with `*_ode` methods, the solver limits' messages, and `flowzoo export
//! --ode-solver`.
use flowzoo::config::Config;
use flowzoo::export;
use flowzoo::flows::ode::{Method, SolverOptions};
use flowzoo::flows::testing::perturb;
use flowzoo::flows::{Cnf, CnfOptions, Ctx, Flow, LayerType, Noise, OdeActivation, OdeNet, TraceChoice};
use flowzoo::io::tensors::named_variables;
use flowzoo::models::DataInfo;
use flowzoo::script::ScriptBuilder;
use flowzoo::session::Session;
use std::process::Command;
use tch::{nn::VarStore, CModule, Device, IValue, Kind, Tensor};

const F64: (Kind, Device) = (Kind::Double, Device::Cpu);

/// libtorch's generator is global: the tests that seed it run one at a time.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

fn pair(v: IValue) -> (Tensor, Tensor) {
    match v {
        IValue::Tuple(mut p) if p.len() == 2 => match (p.pop(), p.pop()) {
            (Some(IValue::Tensor(b)), Some(IValue::Tensor(a))) => (a, b),
            other => panic!("expected two tensors, got {other:?}"),
        },
        other => panic!("expected a pair, got {other:?}"),
    }
}

fn tensor(v: IValue) -> Tensor {
    match v {
        IValue::Tensor(t) => t,
        other => panic!("expected a tensor, got {other:?}"),
    }
}

fn opt(t: Option<&Tensor>) -> IValue {
    t.map_or(IValue::None, |t| IValue::Tensor(t.shallow_clone()))
}

/// A CNF on `d` features (with a `context` context), its parameters moved off their initial
/// values, in float64.
fn cnf(vs: &mut VarStore, kind: LayerType, act: OdeActivation, hidden: &[i64], context: i64, solver: SolverOptions, noise: Noise) -> Cnf {
    let d = 3;
    let net = OdeNet::with_layers(vs.root() / "cnf" / "net", kind, 2, d, context, hidden, act).unwrap();
    let options = CnfOptions { trace: TraceChoice::Hutchinson, noise, train_solver: solver.clone(), eval_solver: solver, ..CnfOptions::default() };
    let c = Cnf::with_net(vs.root() / "cnf", net, 0.8, true, options).unwrap();
    perturb(vs, 0.3);
    vs.double();
    c
}

/// The layer alone as a module: `forward`, `inverse`, `forward_ode`, `inverse_ode`.
/// The flow and its module agree on `forward` and `inverse`, values and log-dets, to 1e-10 (no
/// grad); returns the flow's forward `(y, log-det)`.
fn assert_module_matches(what: &str, c: &Cnf, m: &CModule, x: &Tensor, cond: Option<&Tensor>) -> (Tensor, Tensor) {
    let ctx = Ctx::eval().with_cond(cond);
    let (y, ld) = c.forward(x, &ctx).unwrap();
    let (ys, lds) = pair(m.method_is("forward", &[IValue::Tensor(x.shallow_clone()), opt(cond)]).unwrap());
    let (xi, ldi) = c.inverse(&y, &ctx).unwrap();
    let (xis, ldis) = pair(m.method_is("inverse", &[IValue::Tensor(y.shallow_clone()), opt(cond)]).unwrap());
    for (name, a, b) in [("forward", &ys, &y), ("forward logdet", &lds, &ld), ("inverse", &xis, &xi), ("inverse logdet", &ldis, &ldi)] {
        let d = max_diff(a, b);
        assert!(d < 1e-10, "{what}: {name} differs by {d:e}");
    }
    (y, ld)
}

fn module_of(vs: &VarStore, flow: &dyn Flow) -> CModule {
    let mut ts = ScriptBuilder::new("Test").unwrap();
    ts.register_variables(&named_variables(vs)).unwrap();
    let f = flow.to_torchscript(&mut ts).unwrap();
    let (fo, io) = (f.method("forward_ode").unwrap().to_string(), f.method("inverse_ode").unwrap().to_string());
    ts.define(&format!(
        "def forward(self, x: Tensor, cond: Optional[Tensor]) -> Tuple[Tensor, Tensor]:\n    return {}\n\n\
         def inverse(self, y: Tensor, cond: Optional[Tensor]) -> Tuple[Tensor, Tensor]:\n    return {}\n\n\
         def forward_ode(self, x: Tensor, cond: Optional[Tensor], solver: int, steps: int, hutchinson: bool) -> Tuple[Tensor, Tensor]:\n    return self.{fo}(x, cond, solver, steps, hutchinson)\n\n\
         def inverse_ode(self, y: Tensor, cond: Optional[Tensor], solver: int, steps: int) -> Tuple[Tensor, Tensor]:\n    return self.{io}(y, cond, solver, steps)\n",
        f.call_forward("x", "cond"),
        f.call_inverse("y", "cond")
    ))
    .unwrap();
    ts.module().to_cmodule().unwrap()
}

#[test]
fn the_layer_matches_its_torchscript_for_every_field_and_solver() {
    let _g = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(0);
    let dopri = SolverOptions::dopri5(1e-7, 1e-7);
    let max_norm = SolverOptions { norm: flowzoo::flows::ode::ErrorNorm::Max, ..SolverOptions::dopri5(1e-6, 1e-6) };
    let cases: Vec<(&str, LayerType, OdeActivation, Vec<i64>, i64, SolverOptions)> = vec![
        ("concat-squash tanh dopri5", LayerType::ConcatSquash, OdeActivation::Tanh, vec![8, 8], 0, dopri.clone()),
        ("concat-squash softplus dopri5 max norm", LayerType::ConcatSquash, OdeActivation::Softplus, vec![8], 0, max_norm),
        ("concat-squash elu rk4 with context", LayerType::ConcatSquash, OdeActivation::Elu, vec![8, 8, 8], 2, SolverOptions::fixed(Method::Rk4, 7)),
        ("concat-squash, one layer, euler", LayerType::ConcatSquash, OdeActivation::Tanh, vec![], 0, SolverOptions::fixed(Method::Euler, 5)),
        ("mlp softplus dopri5", LayerType::Mlp, OdeActivation::Softplus, vec![8, 8], 0, dopri),
        ("mlp tanh rk4 with context", LayerType::Mlp, OdeActivation::Tanh, vec![8], 2, SolverOptions::fixed(Method::Rk4, 4)),
    ];
    for (what, kind, act, hidden, context, solver) in cases {
        let mut vs = VarStore::new(Device::Cpu);
        let c = cnf(&mut vs, kind, act, &hidden, context, solver, Noise::Rademacher);
        let m = module_of(&vs, &c);
        let x = Tensor::randn([5, 3], F64);
        let cond = (context > 0).then(|| Tensor::randn([5, context], F64));
        let _ng = tch::no_grad_guard();
        let (y, ld) = assert_module_matches(what, &c, &m, &x, cond.as_ref());
        assert!(max_diff(&y, &x) > 1e-2 && ld.abs().max().double_value(&[]) > 1e-3, "{what}: a trivial flow");
        // Hutchinson: the same probes from the same seed give the same estimate (the Rust layer
        // uses it where training allows one).
        tch::manual_seed(5);
        let train = Ctx { train: true, stochastic_logdet: true, ..Ctx::default() }.with_cond(cond.as_ref());
        let (yh, ldh) = c.forward(&x, &train).unwrap();
        tch::manual_seed(5);
        let code = flowzoo::flows::cnf::solver_code(c.options.eval_solver.method);
        let args = [IValue::Tensor(x.shallow_clone()), opt(cond.as_ref()), IValue::Int(code), IValue::Int(c.options.eval_solver.steps), IValue::Bool(true)];
        let (yhs, ldhs) = pair(m.method_is("forward_ode", &args).unwrap());
        assert!(max_diff(&yh, &yhs) < 1e-10 && max_diff(&ldh, &ldhs) < 1e-10, "{what}: Hutchinson differs by {:e}", max_diff(&ldh, &ldhs));
        assert!(max_diff(&ldh, &ld) > 1e-6, "{what}: the estimate is not the exact trace");
    }
}

#[test]
fn the_solver_is_chosen_per_call_and_its_limits_are_named() {
    let _g = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(1);
    let mut vs = VarStore::new(Device::Cpu);
    let c = cnf(&mut vs, LayerType::ConcatSquash, OdeActivation::Tanh, &[8], 0, SolverOptions::dopri5(1e-8, 1e-8), Noise::Gaussian);
    let m = module_of(&vs, &c);
    let x = Tensor::randn([4, 3], F64);
    let _ng = tch::no_grad_guard();
    let (z, ld) = c.forward(&x, &Ctx::eval()).unwrap();
    let ode = |solver: i64, steps: i64| pair(m.method_is("forward_ode", &[IValue::Tensor(x.shallow_clone()), IValue::None, IValue::Int(solver), IValue::Int(steps), IValue::Bool(false)]).unwrap());
    // RK4 at 64 steps and Euler at 2000 approach the tight adaptive solution at their orders.
    let (z4, ld4) = ode(1, 64);
    assert!(max_diff(&z4, &z) < 1e-7 && max_diff(&ld4, &ld) < 1e-7, "rk4 {:e}", max_diff(&z4, &z));
    let (ze, _) = ode(2, 2000);
    let (ze2, _) = ode(2, 1000);
    let (e1, e2) = (max_diff(&ze, &z), max_diff(&ze2, &z));
    assert!(e1 < 1e-2 && (e2 / e1 - 2.0).abs() < 0.3, "euler is first order: {e2:e} at 1000 steps, {e1:e} at 2000");
    let (back, _) = pair(m.method_is("inverse_ode", &[IValue::Tensor(z.shallow_clone()), IValue::None, IValue::Int(0), IValue::Int(1)]).unwrap());
    assert!(max_diff(&back, &x) < 1e-6);
    let err = format!("{}", m.method_is("forward_ode", &[IValue::Tensor(x.shallow_clone()), IValue::None, IValue::Int(7), IValue::Int(3), IValue::Bool(false)]).unwrap_err());
    assert!(err.contains("is not 0 (dopri5), 1 (rk4) or 2 (euler)"), "{err}");
    // The adaptive solver's limits: the same messages as the Rust solver's.
    for (solver, want) in [
        (SolverOptions { max_steps: 3, ..SolverOptions::dopri5(1e-10, 1e-10) }, "reached max_steps = 3"),
        (SolverOptions { min_step: 0.5, ..SolverOptions::dopri5(1e-10, 1e-10) }, "fell below min_step = "),
    ] {
        let mut vs = VarStore::new(Device::Cpu);
        let c = cnf(&mut vs, LayerType::ConcatSquash, OdeActivation::Tanh, &[8], 0, solver, Noise::Rademacher);
        let rust = format!("{:#}", c.forward(&x, &Ctx::eval()).unwrap_err());
        let script = format!("{}", module_of(&vs, &c).method_is("forward", &[IValue::Tensor(x.shallow_clone()), IValue::None]).unwrap_err());
        assert!(rust.contains(want) && script.contains(want), "rust: {rust}\nscript: {script}");
    }
}

fn tiny(extra: &[&str]) -> Config {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sets: Vec<String> = ["model.cnf.hidden=[8, 8]", "model.cnf.eval_rtol=1e-8", "model.cnf.eval_atol=1e-8"].iter().map(|s| s.to_string()).collect();
    sets.extend(extra.iter().map(|s| s.to_string()));
    Config::load(&root.join("configs/ffjord_pinwheel.toml")).unwrap().with_overrides(&sets).unwrap()
}

#[test]
fn the_model_module_matches_the_model_with_every_solver() {
    let _g = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let cases: [(&str, &[&str]); 2] = [
        ("one block, dopri5", &[]),
        ("two blocks, batch norm, mlp, rk4", &["model.blocks=2", "model.norm=batchnorm", "model.cnf.layer_type=mlp", "model.cnf.eval_solver=rk4", "model.cnf.eval_steps=6"]),
    ];
    for (what, sets) in cases {
        let info = DataInfo { classes: vec![], columns: vec!["x".into(), "y".into()] };
        let mut sess = Session::new_for(&tiny(sets), info, Device::Cpu).unwrap();
        sess.set_standardization(&Tensor::from_slice(&[0.3f32, -0.2]), &Tensor::from_slice(&[1.5f32, 0.7])).unwrap();
        perturb(&sess.vs, 0.1);
        sess.vs.double();
        let m = export::session_module(&sess).unwrap_or_else(|e| panic!("{what}: {e:#}")).to_cmodule().unwrap();
        let _ng = tch::no_grad_guard();
        let x = Tensor::randn([6, 2], F64);
        let ctx = Ctx::eval();
        let lp = sess.model.log_prob(&x, &ctx).unwrap();
        let lps = tensor(m.method_is("log_prob", &[IValue::Tensor(x.shallow_clone())]).unwrap());
        assert!(max_diff(&lp, &lps) < 1e-10, "{what}: log_prob differs by {:e}", max_diff(&lp, &lps));
        let (z, _) = sess.model.to_noise(&x, &ctx).unwrap();
        let xr = tensor(m.method_is("inverse", &[IValue::Tensor(z.shallow_clone())]).unwrap());
        assert!(max_diff(&xr, &sess.model.from_noise(&z, &ctx).unwrap().0) < 1e-10, "{what}: inverse");
        tch::manual_seed(3);
        let s = sess.model.sample(4, 0.8, &ctx, F64).unwrap();
        tch::manual_seed(3);
        let ss = tensor(m.method_is("sample", &[IValue::Int(4), IValue::Double(0.8)]).unwrap());
        assert!(max_diff(&s, &ss) < 1e-10, "{what}: sample");
        // Per call: RK4 with many steps agrees with the default to its accuracy; Hutchinson's
        // estimate averages to the exact log-likelihood.
        let call = |method: &str, args: Vec<IValue>| tensor(m.method_is(method, &args).unwrap());
        let x_args = |solver: &str, steps: i64, trace: &str| {
            vec![IValue::Tensor(x.shallow_clone()), IValue::None, IValue::String(solver.into()), IValue::Int(steps), IValue::String(trace.into())]
        };
        let tight = call("log_prob_ode", x_args("dopri5", 1, "exact"));
        let lp4 = call("log_prob_ode", x_args("rk4", 100, "exact"));
        assert!(max_diff(&lp4, &tight) < 1e-6, "{what}: rk4 at 100 steps differs from dopri5 at 1e-8 by {:e}", max_diff(&lp4, &tight));
        let lp4 = call("log_prob_ode", x_args("rk4", 8, "exact"));
        let draws: Vec<Tensor> = (0..256).map(|_| call("log_prob_ode", x_args("rk4", 8, "hutchinson"))).collect();
        let h = Tensor::stack(&draws, 0);
        let (mean, se) = (h.mean_dim(0, false, Kind::Double), h.std_dim(0, true, false) / 16.0);
        let z_score = ((mean - &lp4).abs() / (se + 1e-12)).max().double_value(&[]);
        assert!(z_score < 5.0, "{what}: Hutchinson's mean is {z_score:.1} standard errors from the exact value");
        let bad = format!("{}", m.method_is("log_prob_ode", &x_args("midpoint", 4, "exact")).unwrap_err());
        assert!(bad.contains("solver must be"), "{bad}");
        let bad = format!("{}", m.method_is("log_prob_ode", &x_args("rk4", 4, "sketchy")).unwrap_err());
        assert!(bad.contains("trace must be"), "{bad}");
        // The tight adaptive solver inverts itself to its tolerance.
        let (z_tight, _) = pair(m.method_is("forward_ode", &x_args("dopri5", 1, "exact")).unwrap());
        let back = call("inverse_ode", vec![IValue::Tensor(z_tight), IValue::None, IValue::String("dopri5".into()), IValue::Int(1)]);
        assert!(max_diff(&back, &x) < 1e-6, "{what}: inverse_ode differs by {:e}", max_diff(&back, &x));
        assert_eq!(call("sample_ode", vec![IValue::Int(3), IValue::Double(1.0), IValue::None, IValue::String("euler".into()), IValue::Int(10)]).size(), [3, 2]);
    }
}

#[test]
fn export_ode_flags_choose_the_default_solver_and_are_checked() {
    // It draws from the global generator too (the other tests compare seeded draws).
    let _g = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let bin = env!("CARGO_BIN_EXE_flowzoo");
    let flowzoo = |args: &[&str]| Command::new(bin).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
    let mut args = vec!["train", "--config", "configs/ffjord_pinwheel.toml", "--out", run.to_str().unwrap(), "-q"];
    for s in ["model.cnf.hidden=[8]", "model.cnf.solver=rk4", "model.cnf.steps=4", "train.max_steps=2", "train.eval_every=2", "train.checkpoint_every=2", "train.threads=1", "train.device=cpu"] {
        args.extend(["--set", s]);
    }
    let o = flowzoo(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pt = d.path().join("m.pt");
    let o = flowzoo(&["export", "--model", run.to_str().unwrap(), "--torchscript", pt.to_str().unwrap(), "--ode-solver", "rk4", "--ode-steps", "5"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = CModule::load(&pt).unwrap();
    let x = Tensor::randn([3, 2], (Kind::Float, Device::Cpu));
    let lp = tensor(m.method_is("log_prob", &[IValue::Tensor(x.shallow_clone())]).unwrap());
    let lp5 = tensor(m.method_is("log_prob_ode", &[IValue::Tensor(x.shallow_clone()), IValue::None, IValue::String("rk4".into()), IValue::Int(5), IValue::String("exact".into())]).unwrap());
    assert_eq!(max_diff(&lp, &lp5), 0.0, "the default is RK4 with 5 steps");
    for (flags, want) in [(&["--ode-solver", "midpoint"][..], "known solvers are dopri5, rk4, euler"), (&["--ode-steps", "0"][..], "--ode-steps 0")] {
        let mut a = vec!["export", "--model", run.to_str().unwrap(), "--torchscript", pt.to_str().unwrap()];
        a.extend(flags);
        let o = flowzoo(&a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{err}");
    }
}


#[test]
fn the_conv_field_matches_its_torchscript() {
    let _g = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(6);
    // [2, 5, 5] with two convs: the Rust layer's 18 colours against the module's 50 one-hot images.
    let cases: [(&str, [i64; 3], Vec<i64>, OdeActivation, i64, SolverOptions); 3] = [
        ("softplus dopri5", [2, 4, 4], vec![5, 5], OdeActivation::Softplus, 0, SolverOptions::dopri5(1e-7, 1e-7)),
        ("tanh rk4, coloured trace", [2, 5, 5], vec![6], OdeActivation::Tanh, 0, SolverOptions::fixed(Method::Rk4, 5)),
        ("elu euler with context", [1, 5, 4], vec![4, 4], OdeActivation::Elu, 2, SolverOptions::fixed(Method::Euler, 6)),
    ];
    for (what, shape, hidden, act, context, solver) in cases {
        let mut vs = VarStore::new(Device::Cpu);
        let net = OdeNet::conv(vs.root() / "cnf" / "net", shape, context, &hidden, act).unwrap();
        let options = CnfOptions { trace: TraceChoice::Hutchinson, train_solver: solver.clone(), eval_solver: solver, ..CnfOptions::default() };
        let c = Cnf::with_net(vs.root() / "cnf", net, 0.8, true, options).unwrap();
        perturb(&vs, 0.3);
        vs.double();
        let m = module_of(&vs, &c);
        let x = Tensor::randn([3, shape.iter().product::<i64>()], F64);
        let cond = (context > 0).then(|| Tensor::randn([3, context], F64));
        let _ng = tch::no_grad_guard();
        let (_, ld) = assert_module_matches(what, &c, &m, &x, cond.as_ref());
        assert!(ld.abs().max().double_value(&[]) > 1e-3, "{what}: a trivial flow");
        tch::manual_seed(5);
        let train = Ctx { train: true, stochastic_logdet: true, ..Ctx::default() }.with_cond(cond.as_ref());
        let (_, ldh) = c.forward(&x, &train).unwrap();
        tch::manual_seed(5);
        let code = flowzoo::flows::cnf::solver_code(c.options.eval_solver.method);
        let args = [IValue::Tensor(x.shallow_clone()), opt(cond.as_ref()), IValue::Int(code), IValue::Int(c.options.eval_solver.steps), IValue::Bool(true)];
        let (_, ldhs) = pair(m.method_is("forward_ode", &args).unwrap());
        assert!(max_diff(&ldh, &ldhs) < 1e-10 && max_diff(&ldh, &ld) > 1e-6, "{what}: Hutchinson");
    }
}

#[test]
fn the_image_model_module_matches_the_model() {
    let _g = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let sets: Vec<String> = ["model.cnf.hidden=[4]", "model.norm=actnorm", "model.cnf.eval_solver=rk4", "model.cnf.eval_steps=3"].iter().map(|s| s.to_string()).collect();
    let cfg = Config::load(&root.join("configs/ffjord_digits.toml")).unwrap().with_overrides(&sets).unwrap();
    let info = DataInfo { classes: (0..10).map(|i| i.to_string()).collect(), columns: vec![] };
    let mut sess = Session::new_for(&cfg, info, Device::Cpu).unwrap();
    perturb(&sess.vs, 0.1);
    sess.vs.double();
    let m = export::session_module(&sess).unwrap().to_cmodule().unwrap();
    let _ng = tch::no_grad_guard();
    let x = Tensor::rand([4, 1, 8, 8], F64) - 0.5;
    let ctx = Ctx::eval();
    let lp = sess.model.log_prob(&x, &ctx).unwrap();
    let lps = tensor(m.method_is("log_prob", &[IValue::Tensor(x.shallow_clone())]).unwrap());
    assert!(max_diff(&lp, &lps) < 1e-10, "log_prob differs by {:e}", max_diff(&lp, &lps));
    tch::manual_seed(3);
    let s = sess.model.sample(3, 0.8, &ctx, F64).unwrap();
    tch::manual_seed(3);
    let ss = tensor(m.method_is("sample", &[IValue::Int(3), IValue::Double(0.8)]).unwrap());
    assert!(max_diff(&s, &ss) < 1e-10, "sample differs by {:e}", max_diff(&s, &ss));
    // The multi-scale chain has no per-call solver choice: only the flow contract's methods.
    assert!(m.method_is("log_prob_ode", &[IValue::Tensor(x.shallow_clone())]).is_err());
}
