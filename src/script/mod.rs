//! The writer the layers describe themselves to: a leaf module that depends only on
//! [`crate::ffi`], so the zoo can write its own export without knowing the exporter.
//!
//! Each layer describes itself once as a [`Layer`] (its kind, constants, tensors, child layers
//! and method bodies in TorchScript syntax with `$` placeholders, see [`layer`]) and hands it
//! to [`ScriptBuilder::add`]. Two back ends are written from that one description, so they stay
//! in step by construction:
//! - TorchScript: every method becomes a flat method of the root [`ScriptModule`] (names start
//!   with `_`), constants inlined, tensors read by their full registered path; the module is
//!   compiled as it grows, so an error names the offending source;
//! - plain PyTorch source ([`python`]): one `nn.Module` class per layer kind, constants as
//!   attributes, each layer's tensors owned by its module at the layer's path (so
//!   `state_dict()` keys are flowzoo's names), child layers referenced, not re-registered.
//!
//! A layer's methods must compute what its Rust code computes, op for op: the tests compare
//! both back ends with the Rust model.
pub mod layer;
pub mod python;

pub use layer::{Const, Layer, Method, ScriptFlow};

use crate::ffi::{torchscript_path, AttrKind, ScriptModule};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use tch::Tensor;

/// The error of a layer that has no TorchScript yet.
pub fn not_exportable(layer: &str) -> anyhow::Error {
    anyhow!("layer {layer} cannot be exported to TorchScript yet (it does not implement Flow::to_torchscript)")
}

/// The last path component of a type name: `flowzoo::flows::squeeze::Squeeze` -> `Squeeze`.
pub fn short_type_name(full: &str) -> String {
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base).to_string()
}

/// A float as a TorchScript literal that reads back as the same `f64`.
pub fn ts_float(v: f64) -> Result<String> {
    if !v.is_finite() {
        bail!("cannot write the non-finite constant {v} into TorchScript");
    }
    // `{:?}` is the shortest representation that round-trips, always with `.` or an exponent.
    let s = format!("{v:?}");
    Ok(if v < 0.0 { format!("({s})") } else { s })
}

/// TorchScript for `Σ t` over every dimension but the batch (`[B, ...] -> [B]`), as
/// [`crate::flows`]' `sum_per_sample` computes it.
pub fn ts_sum_per_sample(t: &str) -> String {
    format!("torch.sum(({t}).reshape([({t}).size(0), -1]), [1])")
}

/// TorchScript for a zero log-det `[B]` with the dtype and device of `x`.
pub fn ts_zero_logdet(x: &str) -> String {
    format!("torch.zeros([{x}.size(0)], dtype={x}.dtype, device={x}.device)")
}

/// TorchScript statements setting the int `var` to the number of positions a per-channel
/// parameter acts on (`H·W` for images, 1 for vectors), as `spatial_size` does.
pub fn ts_spatial_size(var: &str, x: &str) -> String {
    format!("{var} = 1\nfor _d in {x}.size()[2:]:\n    {var} = {var} * _d")
}

fn indent(body: &str) -> String {
    body.lines()
        .map(|l| if l.trim().is_empty() { String::new() } else { format!("    {l}") })
        .collect::<Vec<_>>()
        .join("\n")
}

struct Registered {
    name: String,
    size: Vec<i64>,
}

/// A registered variable, for the Python back end's tensor table.
#[derive(Clone, Debug)]
pub struct Variable {
    pub name: String,
    pub shape: Vec<i64>,
    pub kind: tch::Kind,
    pub trainable: bool,
}

/// Builds one TorchScript module: registers the model's variables under their flowzoo names
/// and collects the methods the layers define (see the module docs).
pub struct ScriptBuilder {
    module: ScriptModule,
    /// Registered tensors by data pointer: how a layer's tensor finds its name.
    by_ptr: HashMap<usize, Registered>,
    /// Parameter-free leaf layers already defined, by their description (shared).
    defined: HashMap<String, ScriptFlow>,
    /// Every layer added, in order (children before parents), for the Python back end.
    layers: Vec<(ScriptFlow, Layer)>,
    variables: Vec<Variable>,
    counter: usize,
    /// The first floating-point tensor registered: dtype/device reference for `sample`.
    float_ref: Option<String>,
    /// Every source compiled into the module, in order.
    sources: Vec<String>,
}

impl ScriptBuilder {
    /// An empty module of class `flowzoo.<class>`.
    pub fn new(class: &str) -> Result<Self> {
        Ok(ScriptBuilder {
            module: ScriptModule::new(&format!("flowzoo.{class}"))?,
            by_ptr: HashMap::new(),
            defined: HashMap::new(),
            counter: 0,
            float_ref: None,
            sources: vec![],
            layers: vec![],
            variables: vec![],
        })
    }

    /// Registers named tensors: those that require grad as parameters (trainable in PyTorch),
    /// the others as buffers. The module aliases their storage (no copy).
    pub fn register_variables(&mut self, vars: &[(String, Tensor)]) -> Result<()> {
        for (name, t) in vars {
            if t.numel() == 0 {
                bail!("variable {name} is empty; cannot export it");
            }
            if t.requires_grad() {
                self.module.register_parameter_path(name, t, true)?;
            } else {
                self.module.register_buffer_path(name, t)?;
            }
            let ptr = t.data_ptr() as usize;
            if let Some(prev) = self.by_ptr.get(&ptr) {
                bail!("variables {} and {name} share storage; cannot export", prev.name);
            }
            if self.float_ref.is_none() && t.is_floating_point() {
                self.float_ref = Some(name.clone());
            }
            self.by_ptr.insert(ptr, Registered { name: name.clone(), size: t.size() });
            self.variables.push(Variable { name: name.clone(), shape: t.size(), kind: t.kind(), trainable: t.requires_grad() });
        }
        Ok(())
    }

    /// The registered (dotted) name of a tensor a layer holds.
    pub fn tensor_name(&self, t: &Tensor) -> Result<&str> {
        match self.by_ptr.get(&(t.data_ptr() as usize)) {
            Some(r) if r.size == t.size() => Ok(&r.name),
            Some(r) => bail!(
                "a layer tensor of shape {:?} aliases variable {} of shape {:?}; layers must hold their variables themselves",
                t.size(),
                r.name,
                r.size
            ),
            None => bail!(
                "a layer tensor of shape {:?} is not a variable of the model (not in its VarStore)",
                t.size()
            ),
        }
    }

    /// The TorchScript expression that reads a tensor a layer holds, e.g.
    /// `getattr(getattr(self.levels, "0").steps, "1").actnorm.logs`.
    pub fn tensor(&self, t: &Tensor) -> Result<String> {
        Ok(torchscript_path("self", self.tensor_name(t)?))
    }

    /// A method name not used yet in the module: `_<stem>_<suffix>`.
    pub fn fresh_name(&mut self, stem: &str, suffix: &str) -> Result<String> {
        let clean: String = stem
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
            .collect();
        let mut name = format!("_{clean}_{suffix}");
        while self.module.attr_kind(&name)? != AttrKind::None {
            self.counter += 1;
            name = format!("_{clean}_{}_{suffix}", self.counter);
        }
        Ok(name)
    }

    /// Compiles methods into the root module (a syntax or type error names the method).
    pub fn define(&mut self, source: &str) -> Result<()> {
        self.module.define(source).with_context(|| format!("TorchScript source:\n{source}"))?;
        self.sources.push(source.to_string());
        Ok(())
    }

    /// Every method source defined so far, in definition order (callees before callers).
    pub fn sources(&self) -> &[String] {
        &self.sources
    }

    /// Adds a described layer: defines its methods as flat methods of the root (TorchScript)
    /// and records it for the Python back end. Returns how to call it.
    pub fn add(&mut self, layer: Layer) -> Result<ScriptFlow> {
        let leaf = layer.tensors.is_empty() && layer.children.is_empty();
        let key = format!("{layer:?}");
        if leaf {
            if let Some(f) = self.defined.get(&key) {
                return Ok(f.clone());
            }
        }
        let stem = match layer_path(&layer) {
            Some(p) if !p.is_empty() => p.replace('.', "_"),
            _ => layer.kind.to_lowercase(),
        };
        let mut methods = std::collections::BTreeMap::new();
        for m in &layer.methods {
            methods.insert(m.name.clone(), self.fresh_name(&stem, &m.name)?);
        }
        let flow = ScriptFlow { id: self.layers.len(), methods };
        let mut src = String::new();
        for m in &layer.methods {
            let body = render_ts(&layer, &flow, &m.body).with_context(|| format!("layer {} method {}", layer.kind, m.name))?;
            let sep = if m.params.is_empty() { "" } else { ", " };
            src += &format!("def {}(self{sep}{}) -> {}:\n{}\n\n", flow.methods[&m.name], m.params, m.ret, indent(&body));
        }
        self.define(&src).with_context(|| format!("layer {}", layer.kind))?;
        if leaf {
            self.defined.insert(key, flow.clone());
        }
        self.layers.push((flow.clone(), layer));
        Ok(flow)
    }

    /// Adds the model itself: its methods become the root module's own methods (`forward`,
    /// `log_prob`, ...), and in Python the model class. Call it last.
    pub fn add_root(&mut self, layer: Layer) -> Result<()> {
        let flow = ScriptFlow { id: self.layers.len(), methods: layer.methods.iter().map(|m| (m.name.clone(), m.name.clone())).collect() };
        let mut src = String::new();
        for m in &layer.methods {
            let body = render_ts(&layer, &flow, &m.body).with_context(|| format!("model method {}", m.name))?;
            let sep = if m.params.is_empty() { "" } else { ", " };
            src += &format!("def {}(self{sep}{}) -> {}:\n{}\n\n", m.name, m.params, m.ret, indent(&body));
        }
        self.define(&src)?;
        self.layers.push((flow, layer));
        Ok(())
    }

    /// The layers added so far with their handles, children before parents.
    pub fn layers(&self) -> &[(ScriptFlow, Layer)] {
        &self.layers
    }

    /// Every registered variable, in registration order.
    pub fn variables(&self) -> &[Variable] {
        &self.variables
    }

    /// The registered name of a floating-point variable (for the dtype and device of new
    /// tensors).
    pub fn float_reference_name(&self) -> Result<&str> {
        self.float_ref.as_deref().ok_or_else(|| anyhow!("the model has no floating-point variable"))
    }

    pub fn module(&self) -> &ScriptModule {
        &self.module
    }

    pub fn module_mut(&mut self) -> &mut ScriptModule {
        &mut self.module
    }

    pub fn into_module(self) -> ScriptModule {
        self.module
    }
}


/// The dotted prefix under which a layer's tensors live (the common prefix of their parent
/// paths); `None` for a layer without tensors.
pub fn layer_path(layer: &Layer) -> Option<String> {
    let parents: Vec<Vec<&str>> = layer
        .tensors
        .iter()
        .map(|(_, full)| {
            let parts: Vec<&str> = full.split('.').collect();
            parts[..parts.len().saturating_sub(1)].to_vec()
        })
        .collect();
    let first = parents.first()?;
    let mut len = first.len();
    for p in &parents[1..] {
        len = len.min(first.iter().zip(p.iter()).take_while(|(a, b)| a == b).count());
    }
    Some(first[..len].join("."))
}

/// A body with its placeholders filled in for the flat TorchScript module.
fn render_ts(layer: &Layer, own: &ScriptFlow, body: &str) -> Result<String> {
    let name = |n: &str| -> Result<String> {
        if let Some(c) = layer.const_value(n) {
            return c.literal();
        }
        if let Some(full) = layer.tensor_full(n) {
            return Ok(torchscript_path("self", full));
        }
        bail!("`${n}` names no constant or tensor of layer {}", layer.kind)
    };
    layer::substitute(body, |p| match p {
        layer::Placeholder::Name(n) => name(n),
        layer::Placeholder::Call("self", m) => Ok(format!("self.{}", own.method(m)?)),
        layer::Placeholder::Call(c, m) => match layer.child_of(c) {
            Some(child) => Ok(format!("self.{}", child.method(m)?)),
            None => Ok(format!("{}.{m}", name(c)?)),
        },
    })
}

impl Layer {
    /// A tensor the layer holds, under `alias` in its bodies (`$alias`).
    pub fn tensor(self, ts: &ScriptBuilder, alias: &str, t: &Tensor) -> Result<Self> {
        let name = ts.tensor_name(t)?.to_string();
        Ok(self.tensor_named(alias, &name))
    }
}

/// TorchScript asserting that `t` has `$channels` channels (dim 1), with the message the Rust
/// layers give (`check_channels`); the layer must define the constant `channels`.
pub fn ts_check_channels(layer: &str, t: &str) -> String {
    format!(
        "assert {t}.dim() >= 2 and {t}.size(1) == $channels, \"{layer}: expected input with \" + str($channels) + \" channels (dim 1), got \" + str({t}.size())\n"
    )
}
