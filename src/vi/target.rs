//! The density a flow is fitted to: an unnormalised log-density `log p̃(x)` of points `[B, D]`.
//!
//! A [`Target`] is either a TorchScript module with a method `log_prob(x: Tensor[B, D]) ->
//! Tensor[B]` ([`ScriptTarget`], what `flowzoo fit --target FILE.pt` loads; saved from PyTorch
//! with `torch.jit.save`) or a Rust closure ([`FnTarget`]). Either way it is called through
//! [`target_log_prob`], which checks what came back (a tensor of shape `[B]`, floating point,
//! differentiable in `x` during training) and turns every failure into one message naming the
//! target and what is wrong.
use anyhow::{anyhow, bail, Result};
use std::path::{Path, PathBuf};
use tch::{Device, IValue, Kind, Tensor};

/// An unnormalised log-density on `R^D`.
pub trait Target {
    /// `log p̃` of each row of `x` (`[B, D]`): `[B]`, floating point, differentiable in `x`
    /// through autograd (the ELBO's reparameterisation gradient flows through it).
    fn log_prob(&self, x: &Tensor) -> Result<Tensor>;
    /// The target in messages: its file, or what the closure was called.
    fn name(&self) -> String;
}

/// A TorchScript module with a method `log_prob`, loaded through libtorch (no Python).
pub struct ScriptTarget {
    module: tch::CModule,
    path: PathBuf,
}

impl ScriptTarget {
    /// Loads `path` onto `device`. The module's own parameters are frozen (the flow is what is
    /// trained); a file that is not a TorchScript archive is an error naming it.
    pub fn load(path: &Path, device: Device) -> Result<ScriptTarget> {
        if !path.is_file() {
            bail!("target {}: no such file (a TorchScript module saved with torch.jit.save)", path.display());
        }
        let mut module = tch::CModule::load_on_device(path, device).map_err(|e| {
            anyhow!("target {}: not a TorchScript module libtorch can load (save it with torch.jit.save(torch.jit.script(module), path)): {}", path.display(), short_torch_message(&e.to_string()))
        })?;
        module.f_set_eval()?;
        for (_, p) in module.named_parameters()? {
            let _ = p.set_requires_grad(false);
        }
        Ok(ScriptTarget { module, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Target for ScriptTarget {
    fn log_prob(&self, x: &Tensor) -> Result<Tensor> {
        match self.module.method_is("log_prob", &[IValue::Tensor(x.shallow_clone())]) {
            Ok(IValue::Tensor(t)) => Ok(t),
            Ok(other) => bail!("log_prob returned {} instead of a tensor", ivalue_name(&other)),
            Err(e) => {
                let msg = e.to_string();
                if is_missing_method(&msg) {
                    bail!("the module has no method log_prob: define `def log_prob(self, x: torch.Tensor) -> torch.Tensor` on the module and mark it @torch.jit.export before torch.jit.save");
                }
                bail!("log_prob raised an error: {}", short_torch_message(&msg))
            }
        }
    }

    fn name(&self) -> String {
        format!("target {}", self.path.display())
    }
}

/// libtorch's words for a method the module does not have.
fn is_missing_method(msg: &str) -> bool {
    msg.contains("Method 'log_prob' is not defined") || msg.contains("has no attribute or method 'log_prob'") || (msg.contains("log_prob") && msg.contains("not defined"))
}

/// libtorch's message made short: the C++ frames it appends (`Exception raised from ...`) and
/// the serialized-code half of a TorchScript traceback cut, the innermost error first, then
/// where it happened in the module's source.
pub(crate) fn short_torch_message(msg: &str) -> String {
    let cut = msg.find("Exception raised from").map_or(msg, |i| &msg[..i]);
    let lines: Vec<&str> = cut.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()).collect();
    // The error itself: the last "...Error: ..." line (a TorchScript traceback ends with it).
    let error = lines.iter().rposition(|l| l.contains("Error: "));
    let source = lines.iter().position(|l| l.starts_with("Traceback of TorchScript, original code"));
    match (error, source) {
        (Some(e), Some(s)) => {
            let mut where_ = lines[s + 1..].to_vec();
            where_.retain(|l| !l.contains("Error: "));
            format!("{}
{}", lines[e].trim(), where_.join("\n"))
        }
        (Some(e), None) => lines[e].trim().to_string(),
        _ => lines.join("\n"),
    }
}

fn ivalue_name(v: &IValue) -> &'static str {
    match v {
        IValue::None => "None",
        IValue::Tuple(_) => "a tuple",
        IValue::GenericList(_) | IValue::TensorList(_) | IValue::DoubleList(_) | IValue::IntList(_) | IValue::BoolList(_) => "a list",
        IValue::Double(_) => "a float",
        IValue::Int(_) => "an int",
        IValue::Bool(_) => "a bool",
        IValue::String(_) => "a string",
        IValue::GenericDict(_) => "a dict",
        _ => "a non-tensor value",
    }
}

/// A closure as a target: `FnTarget::new("banana", |x| Ok(...))`.
pub struct FnTarget<F> {
    f: F,
    name: String,
}

impl<F: Fn(&Tensor) -> Result<Tensor>> FnTarget<F> {
    pub fn new(name: &str, f: F) -> Self {
        FnTarget { f, name: name.to_string() }
    }
}

impl<F: Fn(&Tensor) -> Result<Tensor>> Target for FnTarget<F> {
    fn log_prob(&self, x: &Tensor) -> Result<Tensor> {
        (self.f)(x)
    }
    fn name(&self) -> String {
        format!("target {}", self.name)
    }
}

pub(crate) fn kind_name(k: Kind) -> String {
    match k {
        Kind::Float => "float32".into(),
        Kind::Double => "float64".into(),
        Kind::Half => "float16".into(),
        Kind::BFloat16 => "bfloat16".into(),
        Kind::Int64 => "int64".into(),
        Kind::Int => "int32".into(),
        Kind::Int16 => "int16".into(),
        Kind::Int8 => "int8".into(),
        Kind::Uint8 => "uint8".into(),
        Kind::Bool => "bool".into(),
        other => format!("{other:?}"),
    }
}

/// `target.log_prob(x)`, checked: a `[B]` floating-point tensor (returned in `x`'s dtype, on
/// its device) that, when `x` requires grad, depends on `x` through autograd. Every failure is
/// one error naming the target and what it found. NaN/Inf values are returned as they are;
/// what to do with them is the caller's business (`crate::vi::elbo`).
pub fn target_log_prob(target: &dyn Target, x: &Tensor) -> Result<Tensor> {
    let size = x.size();
    let b = size[0];
    let lp = target.log_prob(x).map_err(|e| anyhow!("{}: {e:#}", target.name()))?;
    let what = |problem: String| anyhow!("{}: log_prob(x) on x of shape {size:?} {problem}", target.name());
    if !lp.is_floating_point() {
        return Err(what(format!("returned {} values: it must return floating-point log-densities (float32 or float64)", kind_name(lp.kind()))));
    }
    if lp.size() != [b] {
        let hint = if lp.size() == [b, 1] {
            " (squeeze the last dimension: .squeeze(-1))"
        } else if lp.dim() == 0 {
            " (a scalar: sum or mean over the batch? return one value per row instead)"
        } else if lp.size().len() == 2 && lp.size()[0] == b {
            " (per-coordinate terms? sum them over the last dimension: .sum(-1))"
        } else {
            ""
        };
        return Err(what(format!("returned shape {:?}: it must return shape [{b}], one log-density per row{hint}", lp.size())));
    }
    if x.requires_grad() && !lp.requires_grad() {
        return Err(what("returned a tensor that does not depend on x through autograd (does it detach, call .item() or go through numpy?): the ELBO's gradient needs d log p̃ / dx".into()));
    }
    Ok(lp.f_to_kind(x.kind())?.f_to_device(x.device())?)
}

/// Checks a target once before any training: it is called on three points (zeros, and ±0.5 in
/// every coordinate) of dimension `dim`, so a module without `log_prob`, with the wrong output
/// shape or dtype, or one that fails on any input fails here with its message.
pub fn probe_target(target: &dyn Target, dim: i64, kind: Kind, device: Device) -> Result<()> {
    let x = Tensor::f_stack(
        &[Tensor::f_zeros([dim], (kind, device))?, Tensor::f_full([dim], 0.5, (kind, device))?, Tensor::f_full([dim], -0.5, (kind, device))?],
        0,
    )?
    .f_set_requires_grad(true)?;
    target_log_prob(target, &x).map(|_| ())
}
