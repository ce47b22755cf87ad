//! Helpers shared by the TorchScript tests (`tests/export.rs`, and those of the autoregressive
//! and spline families).
#![allow(dead_code)]
use flowzoo::flows::{Ctx, Flow};
use flowzoo::io::tensors::named_variables;
use flowzoo::script::ScriptBuilder;
use tch::{nn::VarStore, IValue, Kind, Tensor};

/// libtorch's generator is global: tests that seed it and compare seeded draws take turns.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    RNG.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

pub fn tensor(v: IValue) -> Tensor {
    match v {
        IValue::Tensor(t) => t,
        other => panic!("expected a tensor, got {other:?}"),
    }
}

pub fn pair(v: IValue) -> (Tensor, Tensor) {
    match v {
        IValue::Tuple(mut p) if p.len() == 2 => {
            let b = tensor(p.pop().unwrap());
            (tensor(p.pop().unwrap()), b)
        }
        other => panic!("expected a pair of tensors, got {other:?}"),
    }
}

pub fn opt(t: Option<&Tensor>) -> IValue {
    t.map_or(IValue::None, |t| IValue::Tensor(t.shallow_clone()))
}

/// Exports `flow` alone (methods `forward`/`inverse` taking `(x, cond)`) and compares it with
/// the flow on `x`, in float64: outputs and log-dets to 1e-10. Returns the module.
pub fn check_flow_script(what: &str, vs: &VarStore, flow: &dyn Flow, x: &Tensor, cond: Option<&Tensor>) -> tch::CModule {
    let mut ts = ScriptBuilder::new("Test").unwrap();
    ts.register_variables(&named_variables(vs)).unwrap();
    let f = flow.to_torchscript(&mut ts).unwrap_or_else(|e| panic!("{what}: {e:#}"));
    ts.define(&format!(
        "def forward(self, x: Tensor, cond: Optional[Tensor]) -> Tuple[Tensor, Tensor]:\n    return {}\n\n\
         def inverse(self, y: Tensor, cond: Optional[Tensor]) -> Tuple[Tensor, Tensor]:\n    return {}\n",
        f.call_forward("x", "cond"),
        f.call_inverse("y", "cond")
    ))
    .unwrap();
    let m = ts.module().to_cmodule().unwrap();
    let ctx = Ctx::eval().with_cond(cond);
    let _g = tch::no_grad_guard();
    let (y, ld) = flow.forward(x, &ctx).unwrap();
    let (ys, lds) = pair(m.method_is("forward", &[IValue::Tensor(x.shallow_clone()), opt(cond)]).unwrap());
    let (xi, ldi) = flow.inverse(&y, &ctx).unwrap();
    let (xis, ldis) = pair(m.method_is("inverse", &[IValue::Tensor(y.shallow_clone()), opt(cond)]).unwrap());
    for (name, a, b) in [("forward", &ys, &y), ("forward logdet", &lds, &ld), ("inverse", &xis, &xi), ("inverse logdet", &ldis, &ldi)] {
        assert_eq!(a.kind(), Kind::Double, "{what} {name}");
        let d = max_diff(a, b);
        assert!(d < 1e-10, "{what}: {name} differs by {d:e}");
    }
    // A non-trivial layer: the check above is not comparing two identities.
    assert!(max_diff(&xi, x) < 1e-8, "{what}: the Rust inverse is off");
    assert!(y.size() != x.size() || max_diff(&y, x) > 1e-6, "{what}: the layer is the identity here; the check means little");
    m
}

/// Runs the flowzoo binary in the repository root.
pub fn flowzoo(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_flowzoo")).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().expect("run flowzoo")
}

/// Runs flowzoo, which must succeed; its stdout.
pub fn ok(args: &[&str]) -> String {
    let o = flowzoo(args);
    assert!(o.status.success(), "flowzoo {args:?} failed:\n{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// Runs flowzoo, which must fail cleanly: exit 1, `needle` in the message, no panic or backtrace.
pub fn fails(args: &[&str], needle: &str) {
    let o = flowzoo(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "flowzoo {args:?} should fail cleanly:\n{err}");
    assert!(err.contains(needle), "flowzoo {args:?}: expected {needle:?} in:\n{err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{err}");
}
