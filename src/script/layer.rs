//! A layer's self-description, from which both back ends write their code: the TorchScript
//! module (flat methods on the root, constants inlined, tensors by their full path) and the
//! plain PyTorch source (one class per layer kind, constants as attributes, tensors owned by
//! the layer's module).
//!
//! A method body is TorchScript source (a subset of Python) with placeholders:
//! - `$name` — a constant ([`Layer::int`], [`Layer::float`], ...) or a tensor alias
//!   ([`Layer::tensor`]);
//! - `$child.method(...)` — a method of a child layer ([`Layer::child`]);
//! - `$self.method(...)` — another method of this layer.
//!
//! Write builtins as TorchScript spells them (`torch.linear`, `dtype=4`): the Python back end
//! maps them to their Python spelling.
use anyhow::{bail, Result};
use std::collections::BTreeMap;

/// A constant of a layer: inlined in TorchScript, an attribute (and a constructor argument)
/// of the layer's class in Python.
#[derive(Clone, Debug, PartialEq)]
pub enum Const {
    Int(i64),
    Float(f64),
    Bool(bool),
    Ints(Vec<i64>),
}

impl Const {
    /// The literal in both languages.
    pub fn literal(&self) -> Result<String> {
        Ok(match self {
            Const::Int(v) => v.to_string(),
            Const::Float(v) => super::ts_float(*v)?,
            Const::Bool(b) => if *b { "True" } else { "False" }.to_string(),
            Const::Ints(v) => format!("[{}]", v.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
        })
    }

    /// Its Python type annotation.
    pub fn python_type(&self) -> &'static str {
        match self {
            Const::Int(_) => "int",
            Const::Float(_) => "float",
            Const::Bool(_) => "bool",
            Const::Ints(_) => "List[int]",
        }
    }
}

/// One method: `def <name>(self, <params>) -> <ret>:` and its body (placeholders allowed).
#[derive(Clone, Debug)]
pub struct Method {
    pub name: String,
    pub params: String,
    pub ret: String,
    pub body: String,
}

/// How to call a finished layer's methods: from TorchScript (flat methods of the root, by
/// name) and, for the Python back end, its instance number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptFlow {
    pub(crate) id: usize,
    /// Method name -> flat TorchScript name on the root module.
    pub(crate) methods: BTreeMap<String, String>,
}

impl ScriptFlow {
    /// The flat TorchScript name of `method`.
    pub fn method(&self, method: &str) -> Result<&str> {
        match self.methods.get(method) {
            Some(m) => Ok(m),
            None => bail!("layer has no exported method {method:?} (it has {:?})", self.methods.keys().collect::<Vec<_>>()),
        }
    }
    /// `self.<forward>(x, cond)` in TorchScript.
    pub fn call_forward(&self, x: &str, cond: &str) -> String {
        format!("self.{}({x}, {cond})", self.methods.get("forward").map_or("forward", String::as_str))
    }
    /// `self.<inverse>(y, cond)` in TorchScript.
    pub fn call_inverse(&self, y: &str, cond: &str) -> String {
        format!("self.{}({y}, {cond})", self.methods.get("inverse").map_or("inverse", String::as_str))
    }
}

/// A layer being described (see the module docs). Finish it with
/// [`ScriptBuilder::add`](super::ScriptBuilder::add).
#[derive(Clone, Debug)]
pub struct Layer {
    pub(crate) kind: String,
    pub(crate) consts: Vec<(String, Const)>,
    /// (alias, full registered name)
    pub(crate) tensors: Vec<(String, String)>,
    pub(crate) children: Vec<(String, ScriptFlow)>,
    /// Children the Python class keeps as a list attribute (TorchScript sees `name0`, `name1`, ...).
    pub(crate) child_lists: Vec<(String, Vec<ScriptFlow>)>,
    pub(crate) methods: Vec<Method>,
    /// Methods written differently in Python (a loop over a child list, say).
    pub(crate) python_methods: Vec<Method>,
}

impl Layer {
    /// A layer of class `kind` (the Python class name, e.g. `ActNorm`).
    pub fn new(kind: &str) -> Self {
        Layer {
            kind: kind.to_string(),
            consts: vec![],
            tensors: vec![],
            children: vec![],
            child_lists: vec![],
            methods: vec![],
            python_methods: vec![],
        }
    }

    fn constant(mut self, name: &str, c: Const) -> Self {
        self.consts.push((name.to_string(), c));
        self
    }
    pub fn int(self, name: &str, v: i64) -> Self {
        self.constant(name, Const::Int(v))
    }
    pub fn float(self, name: &str, v: f64) -> Self {
        self.constant(name, Const::Float(v))
    }
    pub fn bool(self, name: &str, v: bool) -> Self {
        self.constant(name, Const::Bool(v))
    }
    pub fn ints(self, name: &str, v: &[i64]) -> Self {
        self.constant(name, Const::Ints(v.to_vec()))
    }

    /// A tensor of the layer under `alias`, by its registered name (see
    /// [`ScriptBuilder::tensor_name`](super::ScriptBuilder::tensor_name)).
    pub fn tensor_named(mut self, alias: &str, full_name: &str) -> Self {
        self.tensors.push((alias.to_string(), full_name.to_string()));
        self
    }

    pub fn child(mut self, name: &str, child: &ScriptFlow) -> Self {
        self.children.push((name.to_string(), child.clone()));
        self
    }

    /// Children kept as the Python list attribute `name`; TorchScript bodies call them as
    /// `$name0`, `$name1`, ...
    pub fn children(mut self, name: &str, list: &[ScriptFlow]) -> Self {
        for (i, c) in list.iter().enumerate() {
            self.children.push((format!("{name}{i}"), c.clone()));
        }
        self.child_lists.push((name.to_string(), list.to_vec()));
        self
    }

    pub fn method(mut self, name: &str, params: &str, ret: &str, body: &str) -> Self {
        self.methods.push(Method { name: name.into(), params: params.into(), ret: ret.into(), body: body.into() });
        self
    }

    /// `forward(self, x, cond) -> (y, logabsdet)` and `inverse(self, y, cond) -> (x, logabsdet)`.
    pub fn flow_methods(self, forward_body: &str, inverse_body: &str) -> Self {
        let (p, r) = ("x: Tensor, cond: Optional[Tensor]", "Tuple[Tensor, Tensor]");
        self.method("forward", p, r, forward_body).method("inverse", &p.replace("x:", "y:"), r, inverse_body)
    }

    /// A method body for the Python back end only (replacing the shared one of that name).
    pub fn python_method(mut self, name: &str, params: &str, ret: &str, body: &str) -> Self {
        self.python_methods.push(Method { name: name.into(), params: params.into(), ret: ret.into(), body: body.into() });
        self
    }

    pub(crate) fn const_value(&self, name: &str) -> Option<&Const> {
        self.consts.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }
    pub(crate) fn tensor_full(&self, alias: &str) -> Option<&str> {
        self.tensors.iter().find(|(a, _)| a == alias).map(|(_, f)| f.as_str())
    }
    pub(crate) fn child_of(&self, name: &str) -> Option<&ScriptFlow> {
        self.children.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }
}

/// One placeholder found in a body.
pub(crate) enum Placeholder<'a> {
    /// `$name`
    Name(&'a str),
    /// `$child.method` (child `self` for own methods)
    Call(&'a str, &'a str),
}

fn ident_len(s: &str) -> usize {
    s.char_indices()
        .take_while(|(i, c)| c.is_ascii_alphabetic() || *c == '_' || (*i > 0 && c.is_ascii_digit()))
        .count()
}

/// Rewrites every placeholder of `body` with `f`; a `$` not followed by a name is an error.
pub(crate) fn substitute(body: &str, mut f: impl FnMut(Placeholder) -> Result<String>) -> Result<String> {
    let mut out = String::with_capacity(body.len());
    let mut rest = body;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let n = ident_len(after);
        if n == 0 {
            bail!("a `$` without a name in TorchScript source: {:?}", &rest[i..(i + 20).min(rest.len())]);
        }
        let name = &after[..n];
        let tail = &after[n..];
        let m = if tail.starts_with('.') { ident_len(&tail[1..]) } else { 0 };
        let is_call = m > 0 && tail[1 + m..].starts_with('(');
        if is_call {
            out.push_str(&f(Placeholder::Call(name, &tail[1..1 + m]))?);
            rest = &tail[1 + m..];
        } else {
            out.push_str(&f(Placeholder::Name(name))?);
            rest = tail;
        }
    }
    out.push_str(rest);
    Ok(out)
}
