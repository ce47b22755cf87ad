//! The plain PyTorch back end: one self-contained `.py` file from the layers a
//! [`ScriptBuilder`] collected. It imports only `torch` (and `safetensors` inside `load`).
//!
//! - One `torch.nn.Module` class per layer kind, its constants as constructor arguments and
//!   attributes, its methods the layer's bodies with `self.<name>` for every placeholder. Two
//!   instances of a kind whose bodies differ (say, an ActNorm stored as log-scale or linear)
//!   become two classes (`ActNorm`, `ActNorm2`).
//! - The model class creates every variable at its flowzoo name (a table of names, shapes and
//!   dtypes), then places each layer module at its path, where it takes over the tensors
//!   already there, so `state_dict()` keys are exactly flowzoo's. Layers that hold no tensors
//!   (composites, squeezes) are not placed; every child is a plain reference
//!   (`object.__setattr__`), never a second registration.
use super::layer::{self, Layer, Method, Placeholder, ScriptFlow};
use super::{layer_path, Variable};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::fmt::Write;

/// TorchScript spellings of builtins and dtype codes, and their Python equivalents.
const SPELLINGS: &[(&str, &str)] = &[
    ("torch.linalg_slogdet(", "torch.linalg.slogdet("),
    ("torch.linalg_inv(", "torch.linalg.inv("),
    ("torch.log_sigmoid(", "F.logsigmoid("),
    ("torch.linear(", "F.linear("),
    ("torch.one_hot(", "F.one_hot("),
    ("torch.elu(", "F.elu("),
    ("torch.gelu(", "F.gelu("),
    ("torch.silu(", "F.silu("),
    ("torch.leaky_relu(", "F.leaky_relu("),
    ("torch.softplus(", "F.softplus("),
    ("torch.softmax(", "F.softmax("),
    ("torch.pad(", "F.pad("),
    ("dtype == 7", "dtype == torch.float64"),
    ("dtype=0)", "dtype=torch.uint8)"),
    ("dtype=4)", "dtype=torch.int64)"),
    ("dtype=4,", "dtype=torch.int64,"),
    ("dtype=6)", "dtype=torch.float32)"),
    ("dtype=6,", "dtype=torch.float32,"),
    ("dtype=7)", "dtype=torch.float64)"),
    ("dtype=7,", "dtype=torch.float64,"),
];

fn python_spelling(src: &str) -> String {
    let mut s = src.to_string();
    for (ts, py) in SPELLINGS {
        s = s.replace(ts, py);
    }
    s
}

fn is_identifier(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_') && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// `base.a.b` with `getattr(x, "0")` for components that are not identifiers.
fn attr_chain(base: &str, dotted: &str) -> String {
    dotted.split('.').filter(|p| !p.is_empty()).fold(base.to_string(), |acc, part| {
        if is_identifier(part) {
            format!("{acc}.{part}")
        } else {
            format!("getattr({acc}, \"{part}\")")
        }
    })
}

fn indent(body: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    body.lines().map(|l| if l.trim().is_empty() { String::new() } else { format!("{pad}{l}") }).collect::<Vec<_>>().join("\n")
}

/// A layer's methods as Python, placeholders resolved against the layer's own module.
fn render_methods(layer: &Layer, path: Option<&str>) -> Result<String> {
    let mut out = String::new();
    let own_names: Vec<&str> = layer.methods.iter().map(|m| m.name.as_str()).collect();
    let py_override = |m: &Method| layer.python_methods.iter().find(|p| p.name == m.name).cloned().unwrap_or_else(|| m.clone());
    let mut methods: Vec<Method> = layer.methods.iter().map(py_override).collect();
    for p in &layer.python_methods {
        if !own_names.contains(&p.name.as_str()) {
            methods.push(p.clone());
        }
    }
    for m in &methods {
        let name = |n: &str| -> Result<String> {
            if layer.const_value(n).is_some() {
                return Ok(format!("self.{n}"));
            }
            if let Some(full) = layer.tensor_full(n) {
                let rel = match path {
                    Some("") | None => full.to_string(),
                    Some(p) => full.strip_prefix(&format!("{p}.")).with_context(|| format!("tensor {full} is not under {p}"))?.to_string(),
                };
                return Ok(attr_chain("self", &rel));
            }
            bail!("`${n}` names no constant or tensor of layer {}", layer.kind)
        };
        let body = layer::substitute(&m.body, |p| match p {
            Placeholder::Name(n) => name(n),
            Placeholder::Call("self", f) => Ok(format!("self.{f}")),
            Placeholder::Call(c, f) if layer.child_of(c).is_some() => Ok(format!("self.{c}.{f}")),
            Placeholder::Call(c, f) => Ok(format!("{}.{f}", name(c)?)),
        })
        .with_context(|| format!("layer {} method {}", layer.kind, m.name))?;
        let sep = if m.params.is_empty() { "" } else { ", " };
        writeln!(out, "    def {}(self{sep}{}) -> {}:\n{}\n", m.name, m.params, m.ret, indent(&python_spelling(&body), 8))?;
    }
    Ok(out)
}

fn dtype_name(kind: tch::Kind) -> Result<&'static str> {
    Ok(match kind {
        tch::Kind::Float => "torch.float32",
        tch::Kind::Double => "torch.float64",
        tch::Kind::Int64 => "torch.int64",
        tch::Kind::Uint8 => "torch.uint8",
        tch::Kind::BFloat16 => "torch.bfloat16",
        tch::Kind::Half => "torch.float16",
        k => bail!("cannot write a {k:?} variable into Python"),
    })
}

/// The whole `.py` file for a model whose root layer (`add_root`) is the last of `layers`.
pub fn render(doc: &str, layers: &[(ScriptFlow, Layer)], variables: &[Variable]) -> Result<String> {
    let Some(((_, root), rest)) = layers.split_last() else { bail!("nothing to export") };
    // Classes: one per (kind, rendered methods).
    let mut classes: Vec<(String, String, Vec<(String, &'static str)>)> = vec![]; // (class name, methods, consts)
    let mut class_of: BTreeMap<usize, String> = BTreeMap::new();
    for (flow, l) in rest {
        let path = layer_path(l);
        let methods = render_methods(l, path.as_deref())?;
        let name = match classes.iter().find(|(n, m, _)| (n == &l.kind || n.starts_with(&l.kind) && n[l.kind.len()..].chars().all(|c| c.is_ascii_digit())) && *m == methods) {
            Some((n, _, _)) => n.clone(),
            None => {
                let taken = classes.iter().filter(|(n, _, _)| n == &l.kind || n.starts_with(&l.kind) && n[l.kind.len()..].chars().all(|c| c.is_ascii_digit())).count();
                let n = if taken == 0 { l.kind.clone() } else { format!("{}{}", l.kind, taken + 1) };
                classes.push((n.clone(), methods, l.consts.iter().map(|(k, c)| (k.clone(), c.python_type())).collect()));
                n
            }
        };
        class_of.insert(flow.id, name);
    }
    let root_class = root.kind.clone();
    let mut src = format!("\"\"\"{doc}\"\"\"\nimport os\nfrom typing import List, Optional, Tuple\n\nimport torch\nfrom torch import Tensor\n\nF = torch.nn.functional\n\n");
    for (name, methods, consts) in &classes {
        let args: String = consts.iter().map(|(k, t)| format!(", {k}: {t}")).collect();
        let sets: String = consts.iter().map(|(k, _)| format!("        self.{k} = {k}\n")).collect();
        write!(src, "\nclass {name}(torch.nn.Module):\n    def __init__(self{args}):\n        super().__init__()\n{sets}\n{methods}")?;
    }
    // The model class: tensors, layer instances, placement, links.
    let mut init = String::from("        _make_tensors(self, _TENSORS)\n");
    for (flow, l) in rest {
        let cls = &class_of[&flow.id];
        let mut args = vec![];
        for (k, c) in &l.consts {
            args.push(format!("{k}={}", c.literal()?));
        }
        writeln!(init, "        l{} = {cls}({})", flow.id, args.join(", "))?;
        if let Some(p) = layer_path(l) {
            if p.is_empty() {
                bail!("layer {} keeps tensors at the model's root; it cannot be placed", l.kind);
            }
            writeln!(init, "        _place(self, \"{p}\", l{})", flow.id)?;
        }
    }
    for (flow, l) in rest {
        for (name, child) in &l.children {
            if l.child_lists.iter().any(|(list, items)| name.starts_with(list.as_str()) && items.iter().any(|c| c.id == child.id)) {
                continue;
            }
            writeln!(init, "        _link(l{}, \"{name}\", l{})", flow.id, child.id)?;
        }
        for (list, items) in &l.child_lists {
            let refs: Vec<String> = items.iter().map(|c| format!("l{}", c.id)).collect();
            writeln!(init, "        _link(l{}, \"{list}\", [{}])", flow.id, refs.join(", "))?;
        }
    }
    for (name, child) in &root.children {
        writeln!(init, "        _link(self, \"{name}\", l{})", child.id)?;
    }
    for (k, c) in &root.consts {
        writeln!(init, "        self.{k} = {}", c.literal()?)?;
    }
    let methods = render_methods(root, Some(""))?;
    write!(src, "\nclass {root_class}(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n{init}\n{methods}")?;
    // The variable table and the helpers.
    src += "\n# name, shape, dtype, trainable (a parameter) or not (a buffer)\n_TENSORS = [\n";
    for v in variables {
        writeln!(src, "    (\"{}\", {:?}, {}, {}),", v.name, v.shape, dtype_name(v.kind)?, if v.trainable { "True" } else { "False" })?;
    }
    src += "]\n";
    src += &format!(
        r#"

def _container(root: torch.nn.Module, path: str) -> torch.nn.Module:
    m = root
    for part in path.split(".") if path else []:
        if part not in m._modules:
            m.add_module(part, torch.nn.Module())
        m = m._modules[part]
    return m


def _make_tensors(root: torch.nn.Module, table) -> None:
    for name, shape, dtype, trainable in table:
        parent, _, leaf = name.rpartition(".")
        owner = _container(root, parent)
        t = torch.zeros(shape, dtype=dtype)
        if trainable:
            owner.register_parameter(leaf, torch.nn.Parameter(t))
        else:
            owner.register_buffer(leaf, t)


def _place(root: torch.nn.Module, path: str, module: torch.nn.Module) -> None:
    """Puts a layer module at `path`, taking over the tensors and sub-modules already there."""
    parent, _, leaf = path.rpartition(".")
    owner = _container(root, parent)
    old = owner._modules.get(leaf)
    if old is not None:
        if type(old) is not torch.nn.Module:
            raise RuntimeError(f"two layers at {{path}}")
        module._parameters.update(old._parameters)
        module._buffers.update(old._buffers)
        module._modules.update(old._modules)
    owner._modules[leaf] = module


def _link(owner, name: str, target) -> None:
    """A reference to another layer that is not a second registration of its tensors."""
    object.__setattr__(owner, name, target)


def load(folder: str, device: str = "cpu") -> {root_class}:
    """The model with its trained weights from `folder` (this file's `weights.safetensors`)."""
    from safetensors.torch import load_file

    m = {root_class}()
    m.load_state_dict(load_file(os.path.join(folder, "weights.safetensors")))
    return m.to(device)
"#
    );
    Ok(src)
}
