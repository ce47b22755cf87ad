//! The TorchScript writer the layers describe themselves to: a leaf module that depends only
//! on [`crate::ffi`], so the zoo can write its own TorchScript without knowing the exporter.
//!
//! There is no tracing. [`ScriptBuilder`] wraps the root [`ScriptModule`] (`src/ffi`): it first
//! registers every variable of the model's `VarStore` under its dotted name, then asks the
//! model's flow to write itself: a layer's `to_torchscript` defines its forward and inverse as
//! TorchScript methods and returns their names ([`ScriptFlow`]). A layer reaches its tensors
//! through [`ScriptBuilder::tensor`] (which finds the registered name of a tensor it holds);
//! composites call their children's methods. Every method takes `(x, cond)` where `cond` is the
//! conditioning tensor (`Optional[Tensor]`), like the zoo's `Ctx`. All methods live on the root
//! module (names starting with `_`), so a composite can call any layer wherever its tensors
//! live. [`crate::export`] then adds the model-level methods and writes the file.
//!
//! A layer's TorchScript must mirror its Rust ops one for one: the Python tests compare the two
//! to 1e-10 in float64. Every method source is also kept ([`ScriptBuilder::sources`]), so other
//! back ends can reuse the same per-layer description.
use crate::ffi::{torchscript_path, AttrKind, ScriptModule};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use tch::Tensor;

/// How to call a layer's exported forward and inverse: the names of two methods of the root
/// module, each `(self, x: Tensor, cond: Optional[Tensor]) -> Tuple[Tensor, Tensor]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptFlow {
    pub forward: String,
    pub inverse: String,
}

impl ScriptFlow {
    /// `self.<forward>(x, cond)`.
    pub fn call_forward(&self, x: &str, cond: &str) -> String {
        format!("self.{}({x}, {cond})", self.forward)
    }
    /// `self.<inverse>(y, cond)`.
    pub fn call_inverse(&self, y: &str, cond: &str) -> String {
        format!("self.{}({y}, {cond})", self.inverse)
    }
}

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

/// Builds one TorchScript module: registers the model's variables under their flowzoo names
/// and collects the methods the layers define (see the module docs).
pub struct ScriptBuilder {
    module: ScriptModule,
    /// Registered tensors by data pointer: how a layer's tensor finds its name.
    by_ptr: HashMap<usize, Registered>,
    /// Method sources already defined (bodies of parameter-free layers are shared).
    defined: HashMap<String, ScriptFlow>,
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
                self.float_ref = Some(torchscript_path("self", name));
            }
            self.by_ptr.insert(ptr, Registered { name: name.clone(), size: t.size() });
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

    /// A readable stem for a layer's methods: the common prefix of its tensors' names
    /// (`levels.0.steps.1.actnorm` -> `levels_0_steps_1_actnorm`), else `kind`.
    pub fn stem(&self, kind: &str, tensors: &[&Tensor]) -> String {
        let names: Vec<Vec<&str>> = tensors
            .iter()
            .filter_map(|t| self.tensor_name(t).ok())
            .map(|n| n.split('.').collect())
            .collect();
        let Some(first) = names.first() else { return kind.to_string() };
        let mut len = first.len().saturating_sub(1);
        for n in &names[1..] {
            len = len.min(first.iter().zip(n.iter()).take_while(|(a, b)| a == b).count());
            len = len.min(n.len().saturating_sub(1));
        }
        if len == 0 {
            kind.to_string()
        } else {
            first[..len].join("_")
        }
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

    /// Defines a layer's forward and inverse from their bodies: the forward body reads
    /// `x: Tensor` and `cond: Optional[Tensor]`, the inverse body `y` and `cond`; each ends with
    /// `return out, logabsdet`. Identical bodies (parameter-free layers) share their methods.
    pub fn define_flow(&mut self, stem: &str, forward_body: &str, inverse_body: &str) -> Result<ScriptFlow> {
        let key = format!("{forward_body}\n\u{0}\n{inverse_body}");
        if let Some(f) = self.defined.get(&key) {
            return Ok(f.clone());
        }
        let f = self.fresh_name(stem, "fwd")?;
        let i = self.fresh_name(stem, "inv")?;
        let src = format!(
            "def {f}(self, x: Tensor, cond: Optional[Tensor]) -> Tuple[Tensor, Tensor]:\n{}\n\n\
             def {i}(self, y: Tensor, cond: Optional[Tensor]) -> Tuple[Tensor, Tensor]:\n{}\n",
            indent(forward_body),
            indent(inverse_body)
        );
        self.define(&src)?;
        let flow = ScriptFlow { forward: f, inverse: i };
        self.defined.insert(key, flow.clone());
        Ok(flow)
    }

    /// Defines a helper method `(self, <params>) -> <ret>` with `body`; returns its name.
    pub fn define_function(&mut self, stem: &str, suffix: &str, params: &str, ret: &str, body: &str) -> Result<String> {
        let name = self.fresh_name(stem, suffix)?;
        let sep = if params.is_empty() { "" } else { ", " };
        self.define(&format!("def {name}(self{sep}{params}) -> {ret}:\n{}\n", indent(body)))?;
        Ok(name)
    }

    /// The expression of a floating-point variable (for the dtype and device of new tensors).
    pub fn float_reference(&self) -> Result<&str> {
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

