//! TorchScript module building through the C++ shim (`src/ffi/jit_shim.cpp`).
//!
//! [`ScriptModule`] builds a `torch::jit::Module` directly (no tracing): tensors are registered
//! as real parameters and buffers, hyper-parameters as int/float attributes, and methods are
//! compiled from TorchScript source with [`ScriptModule::define`]. The result, written with
//! [`ScriptModule::save`], is an ordinary TorchScript archive that plain PyTorch opens with
//! `torch.jit.load`: `state_dict()`, `parameters()` (with `requires_grad`), `.double()`,
//! `.to(device)`, `.eval()` and every defined method work there.
//!
//! The C++ side is `src/ffi/jit_shim.cpp`, compiled by `build.rs` (`compile_jit_shim`) against
//! the headers of the libtorch we link. Every C++ exception is caught there and comes back
//! here as an `Err` carrying libtorch's message (e.g. a TorchScript syntax error with the
//! offending line); nothing aborts or panics.
//!
//! # Design: exact dotted `state_dict` keys, and methods that use the tensors
//!
//! A TorchScript attribute name cannot hold a dot, and `state_dict()` keys are the path of
//! submodule names joined by dots. So a flowzoo tensor named
//! `levels.0.steps.3.coupling.net.0.weight` is registered by
//! [`ScriptModule::register_parameter_path`] as parameter `weight` of the submodule reached
//! through the submodules `levels` → `0` → `steps` → `3` → `coupling` → `net` → `0`, each
//! created on first use (or reused). Numeric names such as `0` are fine as submodule names
//! (that is what `nn.Sequential` does). In Python the key is then exactly the dotted name.
//!
//! `torch::jit::Module` is a handle (it wraps an `intrusive_ptr` to the module object): a
//! [`ScriptModule`] obtained for a submodule ([`ScriptModule::submodule`],
//! [`ScriptModule::submodule_path`]) shares the object with its parent, so tensors, attributes
//! and methods added through it after it was registered are seen by the parent (checked by
//! `tests/ffi_jit.rs`). [`ScriptModule::register_module`] likewise keeps sharing.
//!
//! Methods reach nested tensors in either of two ways, both checked to compile, save, load in
//! Python and run:
//!  1. From a method of the root, by attribute chain, where a component that is not a Python
//!     identifier (e.g. `0`) goes through `getattr` with a string literal:
//!     `getattr(self.levels, "0").steps` (TorchScript accepts `getattr(module, "literal")`;
//!     PyTorch itself prints scripted `nn.Sequential` code this way). [`torchscript_path`]
//!     writes that expression for a dotted name. Bind it to a local once
//!     (`step = getattr(getattr(self.levels, "0").steps, "3")`) and use `step.weight`.
//!  2. By defining methods on the submodules themselves (`submodule_path("levels.0")?.define(..)`)
//!     and calling them from the root: `getattr(self.levels, "0").forward(x)`.
//!
//! # Limits
//!  * Name components are restricted to ASCII letters, digits and `_` (what flowzoo uses), so
//!    they serialize cleanly and fit in a `getattr` string literal.
//!  * A name can be registered once per module: a second registration of the same name (or a
//!    name equal to a method, or `training`, which every module gets) is an `Err`, never a
//!    silent overwrite.
//!  * The module keeps a detached alias of each tensor (same storage, no copy): in-place changes
//!    to the Rust tensor before [`ScriptModule::save`] show up in the saved file.
//!  * Define methods after registering the tensors and submodules they use: a method is
//!    type-checked when defined.
//!  * TorchScript source must use `Tensor`, `int`, `float`, `bool`, `List[..]`, `Tuple[..]`,
//!    `Optional[..]` annotations and `torch.*` builtins; module-level Python helpers do not
//!    exist. Use `dtype=`/`device=` of a parameter when creating tensors so that the loaded
//!    module still works after `.double()` or `.to("cuda")`.
//!  * [`ScriptModule::run_method`] runs on a copy (serialized in memory and loaded through
//!    `tch::CModule`); it is meant for tests, not for training.
//!  * A `ScriptModule` is not `Send`/`Sync`: build and save a module on one thread.
use anyhow::{anyhow, bail, Context, Result};
use std::ffi::{c_char, c_int, c_void, CStr, CString};

use super::jit_sys as sys;

/// Turns the shim's error convention (NULL = ok, else a malloc'd message) into a `Result`.
fn check(err: *mut c_char) -> Result<()> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string malloc'd by the shim; we own it.
    let msg = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    unsafe { sys::fzjit_string_free(err) };
    Err(anyhow!("{}", msg.trim_end()))
}

/// Takes ownership of a malloc'd string returned through an out pointer.
fn take_string(s: *mut c_char) -> String {
    if s.is_null() {
        return String::new();
    }
    // SAFETY: as in `check`.
    let out = unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned();
    unsafe { sys::fzjit_string_free(s) };
    out
}

fn cstring(s: &str, what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| anyhow!("{what} {s:?} contains a NUL byte"))
}

/// Python keywords (and TorchScript's reserved words) cannot follow a `.`; such components go
/// through `getattr` in [`torchscript_path`].
const KEYWORDS: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield",
];

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !KEYWORDS.contains(&s)
}

/// Checks one component of a (dotted) name: non-empty, ASCII letters, digits and `_` only.
fn check_component(component: &str, full: &str) -> Result<()> {
    if component.is_empty()
        || !component
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        bail!(
            "invalid TorchScript attribute name component {component:?} in {full:?}: \
             use non-empty ASCII letters, digits and '_' separated by '.'"
        );
    }
    Ok(())
}

fn split_path(dotted: &str) -> Result<Vec<&str>> {
    let parts: Vec<&str> = dotted.split('.').collect();
    for p in &parts {
        check_component(p, dotted)?;
    }
    Ok(parts)
}

/// The TorchScript expression that reaches the attribute at `dotted` from `base`:
/// `torchscript_path("self", "levels.0.steps.3.weight")` is
/// `getattr(getattr(self.levels, "0").steps, "3").weight`.
pub fn torchscript_path(base: &str, dotted: &str) -> String {
    let mut expr = base.to_string();
    for part in dotted.split('.') {
        if is_identifier(part) {
            expr = format!("{expr}.{part}");
        } else {
            expr = format!("getattr({expr}, \"{part}\")");
        }
    }
    expr
}

/// What a name denotes in a module (see [`ScriptModule::attr_kind`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttrKind {
    None,
    Module,
    Parameter,
    Buffer,
    Attribute,
    Method,
}

/// An owned handle to a `torch::jit::Module` (see the module docs for the sharing semantics).
pub struct ScriptModule {
    ptr: *mut c_void,
}

impl Drop for ScriptModule {
    fn drop(&mut self) {
        // SAFETY: ptr is a heap torch::jit::Module handle owned by self (never null).
        unsafe { sys::fzjit_module_free(self.ptr) }
    }
}

impl std::fmt::Debug for ScriptModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptModule")
            .field("class", &self.class_name().unwrap_or_default())
            .finish()
    }
}

impl ScriptModule {
    fn from_out(ptr: *mut c_void) -> Result<Self> {
        if ptr.is_null() {
            bail!("TorchScript shim returned a null module");
        }
        Ok(ScriptModule { ptr })
    }

    /// A new, empty module whose class is `name`, a dotted qualified name such as
    /// `flowzoo.Glow`; `__torch__.` is put in front unless already there (as Python does for
    /// its own classes). Each component must be a Python identifier.
    pub fn new(name: &str) -> Result<Self> {
        let qualname = if name.starts_with("__torch__.") {
            name.to_string()
        } else {
            format!("__torch__.{name}")
        };
        for part in qualname.split('.') {
            if !is_identifier(part) {
                bail!("invalid TorchScript class name {name:?}: {part:?} is not an identifier");
            }
        }
        let c = cstring(&qualname, "class name")?;
        let mut out = std::ptr::null_mut();
        check(unsafe { sys::fzjit_module_new(c.as_ptr(), &mut out) })
            .with_context(|| format!("creating TorchScript module {qualname}"))?;
        Self::from_out(out)
    }

    /// The module's qualified class name, e.g. `__torch__.flowzoo.Glow`.
    pub fn class_name(&self) -> Result<String> {
        let mut out = std::ptr::null_mut();
        check(unsafe { sys::fzjit_module_name(self.ptr, &mut out) })?;
        Ok(take_string(out))
    }

    /// A second handle to the same module object.
    pub fn share(&self) -> Result<ScriptModule> {
        let mut out = std::ptr::null_mut();
        check(unsafe { sys::fzjit_module_share(self.ptr, &mut out) })?;
        Self::from_out(out)
    }

    fn register_tensor(
        &mut self,
        name: &str,
        t: &tch::Tensor,
        requires_grad: bool,
        is_buffer: bool,
    ) -> Result<()> {
        if name.contains('.') {
            bail!("tensor name {name:?} contains '.': use register_parameter_path / register_buffer_path");
        }
        check_component(name, name)?;
        let c = cstring(name, "name")?;
        let err = unsafe {
            sys::fzjit_register_tensor(
                self.ptr,
                c.as_ptr(),
                t.as_ptr() as *const c_void,
                requires_grad as c_int,
                is_buffer as c_int,
            )
        };
        check(err).with_context(|| {
            format!(
                "registering {} {name:?} in {}",
                if is_buffer { "buffer" } else { "parameter" },
                self.describe()
            )
        })
    }

    fn describe(&self) -> String {
        self.class_name().unwrap_or_else(|_| "<module>".to_string())
    }

    /// Registers `t` as parameter `name` (a single component, no dot) of this module.
    pub fn register_parameter(
        &mut self,
        name: &str,
        t: &tch::Tensor,
        requires_grad: bool,
    ) -> Result<()> {
        self.register_tensor(name, t, requires_grad, false)
    }

    /// Registers `t` as buffer `name` (in `state_dict()`, not in `parameters()`).
    pub fn register_buffer(&mut self, name: &str, t: &tch::Tensor) -> Result<()> {
        self.register_tensor(name, t, false, true)
    }

    fn register_attribute(
        &mut self,
        name: &str,
        f: impl FnOnce(*mut c_void, *const c_char) -> *mut c_char,
    ) -> Result<()> {
        check_component(name, name)?;
        let c = cstring(name, "name")?;
        check(f(self.ptr, c.as_ptr()))
            .with_context(|| format!("registering attribute {name:?} in {}", self.describe()))
    }

    /// An `int` attribute (a hyper-parameter), read in methods as `self.name`.
    pub fn register_attribute_int(&mut self, name: &str, v: i64) -> Result<()> {
        self.register_attribute(name, |m, n| unsafe {
            sys::fzjit_register_attribute_int(m, n, v)
        })
    }

    /// A `float` attribute (a hyper-parameter), read in methods as `self.name`.
    pub fn register_attribute_float(&mut self, name: &str, v: f64) -> Result<()> {
        self.register_attribute(name, |m, n| unsafe {
            sys::fzjit_register_attribute_float(m, n, v)
        })
    }

    /// A `bool` attribute (a hyper-parameter), read in methods as `self.name`.
    pub fn register_attribute_bool(&mut self, name: &str, v: bool) -> Result<()> {
        self.register_attribute(name, |m, n| unsafe {
            sys::fzjit_register_attribute_bool(m, n, v as c_int)
        })
    }

    /// Registers `child` as submodule `name`: its tensors appear as `name.<key>` in
    /// `state_dict()`. The child object is shared, not copied.
    pub fn register_module(&mut self, name: &str, child: ScriptModule) -> Result<()> {
        check_component(name, name)?;
        let c = cstring(name, "name")?;
        check(unsafe { sys::fzjit_register_module(self.ptr, c.as_ptr(), child.ptr) })
            .with_context(|| format!("registering submodule {name:?} in {}", self.describe()))
    }

    /// What `name` (one component) denotes in this module.
    pub fn attr_kind(&self, name: &str) -> Result<AttrKind> {
        let c = cstring(name, "name")?;
        let mut k: c_int = 0;
        check(unsafe { sys::fzjit_attr_kind(self.ptr, c.as_ptr(), &mut k) })?;
        Ok(match k {
            0 => AttrKind::None,
            1 => AttrKind::Module,
            2 => AttrKind::Parameter,
            3 => AttrKind::Buffer,
            4 => AttrKind::Attribute,
            _ => AttrKind::Method,
        })
    }

    /// A shared handle to the existing submodule `name` (one component).
    pub fn submodule(&self, name: &str) -> Result<ScriptModule> {
        let c = cstring(name, "name")?;
        let mut out = std::ptr::null_mut();
        check(unsafe { sys::fzjit_child(self.ptr, c.as_ptr(), std::ptr::null(), &mut out) })?;
        Self::from_out(out)
    }

    /// Child `name`, created (and registered) when missing. A new child's class is named after
    /// its parent's class and its name, e.g. `__torch__.flowzoo.Glow_levels` then
    /// `__torch__.flowzoo.Glow_levels_0`.
    fn child_or_create(&self, name: &str) -> Result<ScriptModule> {
        let qualname = format!("{}_{}", self.class_name()?, name);
        let c = cstring(name, "name")?;
        let q = cstring(&qualname, "class name")?;
        let mut out = std::ptr::null_mut();
        check(unsafe { sys::fzjit_child(self.ptr, c.as_ptr(), q.as_ptr(), &mut out) })
            .with_context(|| {
                format!(
                    "getting or creating submodule {name:?} of {}",
                    self.describe()
                )
            })?;
        Self::from_out(out)
    }

    /// A shared handle to the submodule at `dotted` (e.g. `levels.0.steps.3`), creating the
    /// missing ones on the way. Use it to `define` methods on a submodule.
    pub fn submodule_path(&mut self, dotted: &str) -> Result<ScriptModule> {
        let parts = split_path(dotted)?;
        let mut cur = self.share()?;
        for p in parts {
            cur = cur.child_or_create(p)?;
        }
        Ok(cur)
    }

    /// The module that holds the last component of `dotted`, and that component.
    fn parent_of<'a>(&mut self, dotted: &'a str) -> Result<(ScriptModule, &'a str)> {
        let parts = split_path(dotted)?;
        let (last, dirs) = parts.split_last().expect("split gives at least one part");
        let mut cur = self.share()?;
        for p in dirs {
            cur = cur.child_or_create(p)?;
        }
        Ok((cur, last))
    }

    /// Registers `t` as a parameter whose `state_dict()` key is exactly `dotted`
    /// (e.g. `levels.0.steps.3.coupling.net.0.weight`), creating or reusing the intermediate
    /// submodules. In root methods, reach it with [`torchscript_path`]`("self", dotted)`.
    pub fn register_parameter_path(
        &mut self,
        dotted: &str,
        t: &tch::Tensor,
        requires_grad: bool,
    ) -> Result<()> {
        let (mut parent, last) = self.parent_of(dotted)?;
        parent
            .register_parameter(last, t, requires_grad)
            .with_context(|| format!("registering parameter {dotted:?}"))
    }

    /// Registers `t` as a buffer whose `state_dict()` key is exactly `dotted`.
    pub fn register_buffer_path(&mut self, dotted: &str, t: &tch::Tensor) -> Result<()> {
        let (mut parent, last) = self.parent_of(dotted)?;
        parent
            .register_buffer(last, t)
            .with_context(|| format!("registering buffer {dotted:?}"))
    }

    /// Compiles TorchScript source (one or more `def name(self, ...):` methods) into this
    /// module. A syntax or type error is an `Err` with libtorch's message.
    pub fn define(&mut self, source: &str) -> Result<()> {
        let c = cstring(source, "TorchScript source")?;
        check(unsafe { sys::fzjit_define(self.ptr, c.as_ptr()) })
            .with_context(|| format!("compiling TorchScript methods of {}", self.describe()))
    }

    /// Writes the module as a TorchScript archive (`torch.jit.load` opens it).
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        let s = path
            .to_str()
            .ok_or_else(|| anyhow!("path {} is not UTF-8", path.display()))?;
        let c = cstring(s, "path")?;
        check(unsafe { sys::fzjit_save_file(self.ptr, c.as_ptr()) })
            .with_context(|| format!("saving TorchScript module to {}", path.display()))
    }

    /// The TorchScript archive as bytes (what `save` would write).
    pub fn save_to_vec(&self) -> Result<Vec<u8>> {
        let mut ptr: *mut u8 = std::ptr::null_mut();
        let mut len: usize = 0;
        check(unsafe { sys::fzjit_save_bytes(self.ptr, &mut ptr, &mut len) })
            .context("serializing TorchScript module")?;
        if ptr.is_null() {
            bail!("TorchScript shim returned no bytes");
        }
        // SAFETY: ptr holds len bytes malloc'd by the shim; copied, then freed once.
        let v = unsafe { std::slice::from_raw_parts(ptr, len) }.to_vec();
        unsafe { sys::fzjit_bytes_free(ptr) };
        Ok(v)
    }

    /// A loaded copy of the module as a `tch::CModule` (serialized in memory and read back).
    pub fn to_cmodule(&self) -> Result<tch::CModule> {
        let bytes = self.save_to_vec()?;
        tch::CModule::load_data(&mut std::io::Cursor::new(bytes))
            .context("loading the serialized TorchScript module")
    }

    /// Runs `method` on a copy of the module (see [`ScriptModule::to_cmodule`]); for tests.
    pub fn run_method(&self, method: &str, inputs: &[tch::IValue]) -> Result<tch::IValue> {
        let m = self.to_cmodule()?;
        m.method_is(method, inputs)
            .with_context(|| format!("running TorchScript method {method:?}"))
    }

    /// libtorch's dump of the module (classes, attributes, methods' graphs), for debugging.
    pub fn dump(&self) -> Result<String> {
        let mut out = std::ptr::null_mut();
        check(unsafe { sys::fzjit_dump(self.ptr, &mut out) })?;
        Ok(take_string(out))
    }
}
