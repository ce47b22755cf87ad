//! The TorchScript shim (src/ffi): a module built from Rust, with nested dotted names and
//! methods, saved, then opened by tch and by plain PyTorch (`torch.jit.load`).
//!
//! The Python half runs `$FLOWZOO_PYTHON` (else `python3`), which must import torch 2.11 (the
//! Makefile puts the venv's bin first on PATH).
use flowzoo::ffi::{torchscript_path, AttrKind, ScriptModule};
use std::process::Command;
use tch::{IValue, Kind, Tensor};

const W: [f32; 3] = [0.1, -0.2, 0.3];
const R: [f32; 3] = [0.5, 0.25, -1.0];

/// Root methods: `forward`/`inverse` go through methods defined on the submodule `a.0`
/// (design 2); the log-determinant and `sample` read `a.0`'s tensors directly through a
/// `getattr` chain written by `torchscript_path` (design 1).
fn build() -> anyhow::Result<ScriptModule> {
    let mut root = ScriptModule::new("flowzoo.TestFlow")?;
    let w = Tensor::from_slice(&W).set_requires_grad(true);
    let r = Tensor::from_slice(&R);
    root.register_parameter_path("a.0.weight", &w, true)?;
    root.register_buffer_path("a.0.running", &r)?;
    root.register_attribute_int("dim", 3)?;
    root.register_attribute_float("scale", 1.5)?;

    // Methods on the submodule itself, defined through a shared handle after it was registered.
    let mut step = root.submodule_path("a.0")?;
    step.define(
        r#"
def forward(self, x: Tensor) -> Tensor:
    return x * torch.exp(self.weight) + self.running

def inverse(self, z: Tensor) -> Tensor:
    return (z - self.running) * torch.exp(-self.weight)
"#,
    )?;
    drop(step);

    let step = torchscript_path("self", "a.0");
    assert_eq!(step, "getattr(self.a, \"0\")");
    let weight = torchscript_path("self", "a.0.weight");
    root.define(&format!(
        r#"
def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
    z = {step}.forward(x)
    logdet = {weight}.sum().expand([x.size(0)])
    return z, logdet

def inverse(self, z: Tensor) -> Tensor:
    return {step}.inverse(z)

def sample(self, n: int, temperature: float) -> Tensor:
    w = {weight}
    z = torch.randn([n, self.dim], dtype=w.dtype, device=w.device) * temperature
    return self.inverse(z)
"#
    ))?;
    Ok(root)
}

fn python() -> String {
    std::env::var("FLOWZOO_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn names_and_errors() -> anyhow::Result<()> {
    assert_eq!(
        torchscript_path("self", "levels.0.steps.3.coupling.net.0.weight"),
        "getattr(getattr(getattr(self.levels, \"0\").steps, \"3\").coupling.net, \"0\").weight"
    );
    assert_eq!(torchscript_path("self", "if.x"), "getattr(self, \"if\").x");

    let mut root = build()?;
    assert_eq!(root.class_name()?, "__torch__.flowzoo.TestFlow");
    assert_eq!(root.attr_kind("a")?, AttrKind::Module);
    assert_eq!(root.attr_kind("dim")?, AttrKind::Attribute);
    assert_eq!(root.attr_kind("forward")?, AttrKind::Method);
    assert_eq!(root.attr_kind("nope")?, AttrKind::None);
    let a0 = root.submodule("a")?.submodule("0")?;
    assert_eq!(a0.class_name()?, "__torch__.flowzoo.TestFlow_a_0");
    assert_eq!(a0.attr_kind("weight")?, AttrKind::Parameter);
    assert_eq!(a0.attr_kind("running")?, AttrKind::Buffer);

    // A TorchScript syntax error is an Err carrying libtorch's message, and the module is
    // still usable afterwards.
    let err = root
        .define("def broken(self, x: Tensor) -> Tensor:\n    return x +\n")
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("expected") && msg.contains("return x +"),
        "unexpected message: {msg}"
    );
    // A type error too.
    let err = root
        .define("def bad(self, x: Tensor) -> int:\n    return \"s\"\n")
        .unwrap_err();
    assert!(format!("{err:#}").contains("bad"), "{err:#}");
    // Unknown attribute.
    let err = root
        .define("def bad2(self, x: Tensor) -> Tensor:\n    return self.nothing\n")
        .unwrap_err();
    assert!(format!("{err:#}").contains("nothing"), "{err:#}");
    // A failed define leaves no trace: the names are free again and the module still saves.
    assert_eq!(root.attr_kind("bad")?, AttrKind::None);
    assert_eq!(root.attr_kind("bad2")?, AttrKind::None);
    root.define("def bad(self, x: Tensor) -> Tensor:\n    return x + 1.0\n")?;
    // Redefining an existing method is an error too.
    assert!(root
        .define("def bad(self, x: Tensor) -> Tensor:\n    return x\n")
        .is_err());
    assert_eq!(root.attr_kind("bad")?, AttrKind::Method);

    // Names: duplicates, dots, odd characters, clashes with a tensor on the way.
    let t = Tensor::zeros([2], (Kind::Float, tch::Device::Cpu));
    let err = root
        .register_parameter_path("a.0.weight", &t, true)
        .unwrap_err();
    assert!(format!("{err:#}").contains("already has"), "{err:#}");
    assert!(root.register_parameter("x.y", &t, true).is_err());
    assert!(root.register_parameter_path("a..b", &t, true).is_err());
    assert!(root.register_buffer_path("a.b-c", &t).is_err());
    assert!(root
        .register_parameter_path("a.0.weight.x", &t, true)
        .is_err());
    assert!(root.register_attribute_int("training", 1).is_err());
    assert!(root.submodule("missing").is_err());
    // A module cannot be registered inside itself, directly or not (save would recurse forever).
    let mut a = root.submodule("a")?;
    let err = a.register_module("loop", root.share()?).unwrap_err();
    assert!(format!("{err:#}").contains("cycle"), "{err:#}");
    assert!(root.register_module("self_again", root.share()?).is_err());
    // Sharing: a module registered first and filled afterwards is seen filled by the parent.
    let mut late = ScriptModule::new("flowzoo.Late")?;
    root.register_module("late", late.share()?)?;
    late.register_buffer("b", &t)?;
    assert_eq!(root.submodule("late")?.attr_kind("b")?, AttrKind::Buffer);
    assert!(ScriptModule::new("flowzoo.0bad").is_err());

    // run_method works on the module as built, and the failed calls above changed nothing.
    let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0, -1.0, 0.0, 0.5]).reshape([2, 3]);
    let out = root.run_method("inverse", &[IValue::Tensor(x.shallow_clone())])?;
    let IValue::Tensor(inv) = out else {
        anyhow::bail!("inverse returned {out:?}")
    };
    let w = Tensor::from_slice(&W);
    let r = Tensor::from_slice(&R);
    assert!(max_abs_diff(&inv, &((&x - &r) * (-&w).exp())) < 1e-6);
    let out = root.run_method("bad", &[IValue::Tensor(x.shallow_clone())])?;
    let IValue::Tensor(plus1) = out else {
        anyhow::bail!("bad returned {out:?}")
    };
    assert!(max_abs_diff(&plus1, &(&x + 1.0)) < 1e-6);
    Ok(())
}

#[test]
fn save_load_in_tch_and_python() -> anyhow::Result<()> {
    let root = build()?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("flow.pt");
    root.save(&path)?;
    drop(root);

    // (a) tch::CModule.
    let m = tch::CModule::load(&path)?;
    let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0, -1.0, 0.0, 0.5]).reshape([2, 3]);
    let w = Tensor::from_slice(&W);
    let r = Tensor::from_slice(&R);
    let out = m.forward_is(&[IValue::Tensor(x.shallow_clone())])?;
    let IValue::Tuple(parts) = out else {
        anyhow::bail!("forward returned {out:?}")
    };
    assert_eq!(parts.len(), 2);
    let (IValue::Tensor(z), IValue::Tensor(logdet)) = (&parts[0], &parts[1]) else {
        anyhow::bail!("forward returned {parts:?}")
    };
    assert!(max_abs_diff(z, &(&x * w.exp() + &r)) < 1e-6);
    assert_eq!(logdet.size(), vec![2]);
    assert!(max_abs_diff(logdet, &Tensor::from_slice(&[0.2f32, 0.2])) < 1e-6);
    let back = m.method_is("inverse", &[IValue::Tensor(z.shallow_clone())])?;
    let IValue::Tensor(back) = back else {
        anyhow::bail!("inverse returned {back:?}")
    };
    assert!(max_abs_diff(&back, &x) < 1e-5);
    let s = m.method_is("sample", &[IValue::Int(5), IValue::Double(0.7)])?;
    let IValue::Tensor(s) = s else {
        anyhow::bail!("sample returned {s:?}")
    };
    assert_eq!(s.size(), vec![5, 3]);
    // temperature 0: every sample is the inverse of z = 0.
    let s0 = m.method_is("sample", &[IValue::Int(2), IValue::Double(0.0)])?;
    let IValue::Tensor(s0) = s0 else {
        anyhow::bail!("sample returned {s0:?}")
    };
    let expect0 = (-&r * (-&w).exp()).expand([2, 3], false);
    assert!(max_abs_diff(&s0, &expect0) < 1e-6);
    let names: Vec<String> = m.named_parameters()?.into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, vec!["a.0.weight".to_string()]);

    // (b) plain PyTorch.
    let script = r#"
import sys, torch
m = torch.jit.load(sys.argv[1])
sd = m.state_dict()
assert list(sd.keys()) == ["a.0.weight", "a.0.running"], list(sd.keys())
params = dict(m.named_parameters())
assert list(params) == ["a.0.weight"], list(params)
assert all(p.requires_grad for p in m.parameters())
assert list(dict(m.named_buffers())) == ["a.0.running"]
assert m.dim == 3 and m.scale == 1.5
w = torch.tensor([0.1, -0.2, 0.3]); r = torch.tensor([0.5, 0.25, -1.0])
assert torch.allclose(sd["a.0.weight"], w) and torch.allclose(sd["a.0.running"], r)
x = torch.randn(4, 3)
z, ld = m(x)
assert torch.allclose(z, x * w.exp() + r, atol=1e-6)
assert torch.allclose(ld, w.sum().expand(4))
# gradients reach the nested parameter
(z.sum() + ld.sum()).backward()
assert getattr(m.a, "0").weight.grad is not None
m.eval(); assert not m.training
m = m.double()
assert m.state_dict()["a.0.weight"].dtype == torch.float64
xd = x.double()
z, ld = m(xd)
assert z.dtype == torch.float64 and ld.dtype == torch.float64
assert torch.allclose(m.inverse(z), xd, atol=1e-12)
s = m.sample(6, 0.5)
assert s.shape == (6, 3) and s.dtype == torch.float64
# a state_dict saved from it loads back by the same keys
m.load_state_dict({k: v * 0 for k, v in m.state_dict().items()})
assert float(getattr(m.a, "0").weight.abs().sum()) == 0.0
print("PYTHON_OK", torch.__version__)
"#;
    let py = python();
    let out = Command::new(&py)
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .map_err(|e| {
            anyhow::anyhow!("cannot run {py} (set FLOWZOO_PYTHON to the venv's python): {e}")
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("PYTHON_OK"),
        "python check failed ({py}):\n{stdout}\n{stderr}"
    );
    eprintln!("{}", stdout.trim());
    Ok(())
}
