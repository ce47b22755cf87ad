//! TorchScript export: a trained flowzoo model as a module that plain PyTorch opens with
//! `torch.jit.load` (no flowzoo, no extra Python package), trains and saves again.
//!
//! # What the exported module has
//! * `forward(x, labels=None) -> (z, logabsdet)`: `z` is the flat standard-normal latent `[B, D]`
//!   of the model's flow (for Glow: level 0's factored-out half, level 1's, ..., then the top
//!   latent, each `(C, H, W)` row-major, see [`crate::models::glow`]), `logabsdet` is `[B]`;
//! * `inverse(z, labels=None) -> x`;
//! * `log_prob(x, labels=None) -> [B]`, nats, `log N(z; 0, I) + logabsdet`, every learned prior
//!   included (the priors are bijections of the flow, see [`crate::flows`]);
//! * `sample(n: int, temperature: float = 1.0, labels=None) -> x`, `inverse(temperature * randn)`,
//!   drawn from PyTorch's generator exactly as flowzoo draws it (same seed, same samples);
//! * for image models `bits_per_dim(x, labels=None) -> [B]`
//!   (`-(log_prob - D·n_bits·ln 2) / (D·ln 2)`, the run's `n_bits`), `preprocess(pixels,
//!   dequantize=True)` (uint8 pixels to model space, as flowzoo trains) and `to_pixels(x)`;
//! * `event_shape() -> List[int]` and int attributes `dim`, `n_classes` (0: unconditional),
//!   `n_bits` (0 for non-image models);
//! * every variable of the model registered under its flowzoo name: `state_dict()` keys are
//!   exactly the names in `weights.safetensors`; trainable variables are parameters
//!   (`requires_grad`), the others (`initialized`, permutations, LU's `p` and `sign_s`) buffers.
//!
//! The code creates every tensor with the dtype and device of an input or a parameter, so the
//! module works at any batch size, after `m.double()` and after `m.to("cuda")`. Class-conditional
//! models take `labels` (int64 class indices `[B]`); unconditional ones refuse them.
//!
//! # How a model is written
//! There is no tracing. [`ScriptBuilder`] wraps the root [`ScriptModule`] (`src/ffi`): it first
//! registers every variable of the model's `VarStore` under its dotted name, then asks the
//! model's flow to write itself: [`Flow::to_torchscript`] defines a layer's forward and inverse
//! as TorchScript methods and returns their names ([`ScriptFlow`]). A layer reaches its tensors
//! through [`ScriptBuilder::tensor`] (which finds the registered name of a tensor it holds);
//! composites (`Sequential`, `SplitPrior`) call their children's methods. Every method takes
//! `(x, cond)` where `cond` is the conditioning tensor (`Optional[Tensor]`, one-hot labels for a
//! class-conditional prior), like [`crate::flows::Ctx`]. All methods live on the root module
//! (names starting with `_`), so a composite can call any layer wherever its tensors live.
//! The model-level methods above are written once here, for every [`DensityModel`].
//!
//! A new layer (RealNVP's, MAF's, ...) only implements `to_torchscript`; a layer that does not
//! keeps the trait's default, and exporting a model that contains it fails with
//! "layer X cannot be exported to TorchScript yet". A layer's TorchScript must mirror its Rust
//! ops one for one: the Python tests compare the two to 1e-10 in float64.
//!
//! # Reference outputs (for tests)
//! `flowzoo export --model RUN --reference-in IN.safetensors --reference-out OUT.safetensors`
//! (hidden from `--help`) runs the Rust model on the inputs in `IN` and writes its outputs, so
//! tests can compare the exported module with the model it came from; see [`write_reference`].
use crate::io::tensors::named_variables;
use crate::io::{read_safetensors, write_safetensors, Checkpoint, RunDir};
use crate::models::DensityModel;
use crate::session::Session;
use crate::ffi::{torchscript_path, AttrKind, ScriptModule};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{Device, IValue, Kind, Tensor};

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
        self.module.define(source).with_context(|| format!("TorchScript source:\n{source}"))
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

    pub fn into_module(self) -> ScriptModule {
        self.module
    }
}

/// What the model-level methods need besides the flow.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    /// Class name of the module (`flowzoo.<class>`).
    pub class: String,
    /// Shape of one data point, e.g. `[C, H, W]`.
    pub event_shape: Vec<i64>,
    pub n_classes: Option<i64>,
    /// Bits per pixel of an image model (gives `bits_per_dim`, `preprocess`, `to_pixels`).
    pub n_bits: Option<i64>,
}

fn int_list(v: &[i64]) -> String {
    format!("[{}]", v.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

/// Builds the TorchScript module of `model` whose variables are `vars` (name, tensor).
pub fn build_module(model: &dyn DensityModel, vars: &[(String, Tensor)], spec: &ModelSpec) -> Result<ScriptModule> {
    let mut ts = ScriptBuilder::new(&spec.class)?;
    ts.register_variables(vars)?;
    let flow = model
        .flow()
        .to_torchscript(&mut ts)
        .with_context(|| format!("exporting {}", spec.class))?;
    define_model_methods(&mut ts, &flow, spec)?;
    Ok(ts.into_module())
}

fn define_model_methods(ts: &mut ScriptBuilder, flow: &ScriptFlow, spec: &ModelSpec) -> Result<()> {
    let shape = &spec.event_shape;
    let dim: i64 = shape.iter().product();
    let k = spec.n_classes.unwrap_or(0);
    let reference = ts.float_reference()?.to_string();
    ts.module.register_attribute_int("dim", dim)?;
    ts.module.register_attribute_int("n_classes", k)?;
    ts.module.register_attribute_int("n_bits", spec.n_bits.unwrap_or(0))?;
    let cls = &spec.class;
    let want = format!("[B, {}]", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "));
    let mut shape_test = format!("x.dim() == {}", shape.len() + 1);
    for (i, d) in shape.iter().enumerate() {
        shape_test += &format!(" and x.size({}) == {d}", i + 1);
    }
    let cond_fn = if k > 0 {
        format!(
            r#"def _labels_to_cond(self, labels: Optional[Tensor], like: Tensor) -> Optional[Tensor]:
    assert labels is not None, "flowzoo {cls}: this model is class-conditional: pass labels (int64 class indices [B] in 0..{km1})"
    lab = labels
    assert lab.dim() == 1 and lab.size(0) == like.size(0), "flowzoo {cls}: expected labels of shape [" + str(like.size(0)) + "], got " + str(lab.size())
    # dtype 4 is torch.int64 (the TorchScript compiler here knows no torch.int64).
    return torch.one_hot(lab.to(device=like.device, dtype=4), {k}).to(like.dtype)
"#,
            km1 = k - 1
        )
    } else {
        format!(
            r#"def _labels_to_cond(self, labels: Optional[Tensor], like: Tensor) -> Optional[Tensor]:
    assert labels is None, "flowzoo {cls}: this model is not class-conditional; labels must be None"
    return None
"#
        )
    };
    let ln2pi = (2.0 * std::f64::consts::PI).ln();
    let normal_const = ts_float(0.5 * dim as f64 * ln2pi)?;
    let sample_labels = if k > 0 {
        format!(
            "    if labels is None:\n        labels = torch.remainder(torch.arange(n, dtype=4, device=eps.device), {k})\n"
        )
    } else {
        String::new()
    };
    let mut src = format!(
        r#"def event_shape(self) -> List[int]:
    return {shape_list}

{cond_fn}
def forward(self, x: Tensor, labels: Optional[Tensor]=None) -> Tuple[Tensor, Tensor]:
    assert {shape_test}, "flowzoo {cls}: expected x of shape {want}, got " + str(x.size())
    return {fwd}

def inverse(self, z: Tensor, labels: Optional[Tensor]=None) -> Tensor:
    assert z.dim() == 2 and z.size(1) == {dim}, "flowzoo {cls}: expected z of shape [B, {dim}], got " + str(z.size())
    x, logabsdet = {inv}
    return x

def log_prob(self, x: Tensor, labels: Optional[Tensor]=None) -> Tensor:
    z, logabsdet = self.forward(x, labels)
    b = z.size(0)
    sq = torch.sum(z.reshape([b, -1]).square(), [1])
    return (sq * (-0.5) - {normal_const}) + logabsdet

def sample(self, n: int, temperature: float=1.0, labels: Optional[Tensor]=None) -> Tensor:
    ref = {reference}
    eps = torch.randn([n, {dim}], dtype=ref.dtype, device=ref.device) * temperature
{sample_labels}    return self.inverse(eps, labels)
"#,
        shape_list = int_list(shape),
        fwd = flow.call_forward("x", "self._labels_to_cond(labels, x)"),
        inv = flow.call_inverse("z", "self._labels_to_cond(labels, z)"),
    );
    if let Some(n_bits) = spec.n_bits {
        let d = dim as f64;
        let c = ts_float(d * (n_bits as f64) * std::f64::consts::LN_2)?;
        let dl = ts_float(d * std::f64::consts::LN_2)?;
        let levels = ts_float((1i64 << n_bits) as f64)?;
        let div = ts_float((1i64 << (8 - n_bits).max(0)) as f64)?;
        let scale = ts_float(255.0 / ((1i64 << n_bits) as f64 - 1.0).max(1.0))?;
        let floor = if n_bits < 8 { format!("k = torch.floor(k / {div})\n    ") } else { String::new() };
        src += &format!(
            r#"
def bits_per_dim(self, x: Tensor, labels: Optional[Tensor]=None) -> Tensor:
    lp = self.log_prob(x, labels)
    return (-(lp - {c})) / {dl}

def preprocess(self, pixels: Tensor, dequantize: bool=True) -> Tensor:
    ref = {reference}
    k = pixels.to(device=ref.device, dtype=6)  # torch.float32
    {floor}x = (k / {levels} - 0.5).to(ref.dtype)
    if dequantize:
        x = x + torch.rand_like(x) / {levels}
    return x

def to_pixels(self, x: Tensor) -> Tensor:
    k = torch.clamp(torch.floor((x + 0.5) * {levels}), 0.0, {levels} - 1.0)
    return torch.round(k * {scale}).to(dtype=0)  # torch.uint8
"#
        );
    }
    ts.define(&src)
}

/// The module's class for a `model.kind`: `glow` -> `Glow` (`__torch__.flowzoo.Glow` in PyTorch),
/// `realnvp` -> `RealNVP`, `nice` -> `NICE`; other kinds are capitalised.
pub fn class_name(kind: &str) -> String {
    let known = [("glow", "Glow"), ("realnvp", "RealNVP"), ("nice", "NICE"), ("maf", "MAF"), ("iaf", "IAF"), ("nsf", "NSF"), ("ffjord", "FFJORD")];
    if let Some((_, name)) = known.iter().find(|(k, _)| *k == kind) {
        return name.to_string();
    }
    let clean: String = kind.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let mut chars = clean.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() => c.to_ascii_uppercase().to_string() + chars.as_str(),
        _ => format!("Model_{clean}"),
    }
}

/// The model of a session as a TorchScript module (variables aliased, not copied).
pub fn session_module(sess: &Session) -> Result<ScriptModule> {
    let image = sess.model.event_shape().len() == 3;
    let spec = ModelSpec {
        class: class_name(sess.cfg.model.kind.as_str()),
        event_shape: sess.model.event_shape(),
        n_classes: sess.model.n_classes(),
        n_bits: image.then_some(sess.cfg.data.n_bits),
    };
    build_module(sess.model.as_ref(), &named_variables(&sess.vs), &spec)
}

/// What `flowzoo export` was asked to write.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    pub checkpoint: Checkpoint,
    /// The TorchScript module.
    pub torchscript: Option<PathBuf>,
    /// The exported weights as safetensors (the same names as the module's `state_dict()`).
    pub safetensors: Option<PathBuf>,
    /// Test hook: inputs for [`write_reference`] ...
    pub reference_in: Option<PathBuf>,
    /// ... and where its outputs go.
    pub reference_out: Option<PathBuf>,
}

/// `flowzoo export`: opens the run, writes what `opts` asks for; returns lines to print.
pub fn export_run(run_dir: &Path, opts: &ExportOptions) -> Result<Vec<String>> {
    if opts.torchscript.is_none() && opts.safetensors.is_none() && opts.reference_out.is_none() {
        bail!("nothing to export: pass --torchscript FILE.pt (and/or --safetensors FILE.safetensors)");
    }
    if opts.reference_in.is_some() != opts.reference_out.is_some() {
        bail!("--reference-in and --reference-out go together");
    }
    let run = RunDir::open(run_dir).with_context(|| format!("cannot export {}", run_dir.display()))?;
    let mut sess = Session::open(&run, opts.checkpoint, Device::Cpu)
        .with_context(|| format!("cannot export {}", run_dir.display()))?;
    let weights = run.checkpoint_path(opts.checkpoint);
    let mut lines = vec![];
    if let Some(path) = &opts.torchscript {
        let module = session_module(&sess)?;
        let check = self_check(&sess, &module).context("checking the exported module against the model")?;
        let bytes = module.save_to_vec()?;
        crate::io::atomic::atomic_write_bytes(path, &bytes)
            .with_context(|| format!("writing {}", path.display()))?;
        let vars = sess.vs.variables();
        let n_params = vars.values().filter(|t| t.requires_grad()).count();
        lines.push(format!(
            "wrote {} ({} from {}): {} parameters, {} buffers; max |log_prob difference| to the Rust model {:.2e} (float32)",
            path.display(),
            sess.model.describe(),
            weights.display(),
            n_params,
            vars.len() - n_params,
            check
        ));
    }
    if let Some(path) = &opts.safetensors {
        let mut meta = BTreeMap::new();
        meta.insert("format".to_string(), "flowzoo".to_string());
        meta.insert("source".to_string(), weights.display().to_string());
        write_safetensors(path, &named_variables(&sess.vs), &meta)?;
        lines.push(format!("wrote {} ({} tensors)", path.display(), sess.vs.variables().len()));
    }
    if let (Some(input), Some(output)) = (&opts.reference_in, &opts.reference_out) {
        write_reference(&mut sess, input, output)?;
        lines.push(format!("wrote reference outputs {}", output.display()));
    }
    Ok(lines)
}

/// Runs `log_prob` of the module (loaded back from its serialized bytes) and of the model on
/// the same two random points; fails when they disagree. Returns the largest difference.
fn self_check(sess: &Session, module: &ScriptModule) -> Result<f64> {
    let _g = tch::no_grad_guard();
    let m = module.to_cmodule()?;
    let mut shape = vec![2];
    shape.extend(sess.model.event_shape());
    let x = Tensor::f_rand(&shape[..], (sess.kind(), sess.device()))?.f_sub_scalar(0.5)?;
    let labels = sess.model.n_classes().map(|_| Tensor::from_slice(&[0i64, 0]));
    let mut args = vec![IValue::Tensor(x.shallow_clone())];
    if let Some(l) = &labels {
        args.push(IValue::Tensor(l.shallow_clone()));
    }
    let IValue::Tensor(lp_ts) = m.method_is("log_prob", &args)? else {
        bail!("log_prob of the exported module did not return a tensor");
    };
    let cond = match &labels {
        Some(l) => sess.one_hot(l)?,
        None => None,
    };
    let lp = sess.model.log_prob(&x, &crate::flows::Ctx::eval().with_cond(cond.as_ref()))?;
    let diff = lp_ts.f_sub(&lp)?.f_abs()?.f_max()?.f_double_value(&[])?;
    let scale = lp.f_abs()?.f_max()?.f_double_value(&[])?.max(1.0);
    if !(diff <= 1e-4 * scale) {
        bail!("the exported module's log_prob differs from the model's by {diff:e} (internal error)");
    }
    Ok(diff)
}

fn scalar_input(inputs: &BTreeMap<String, Tensor>, key: &str) -> Result<Option<f64>> {
    match inputs.get(key) {
        None => Ok(None),
        Some(t) if t.numel() == 1 => Ok(Some(t.f_to_kind(Kind::Double)?.f_reshape([1])?.f_double_value(&[0])?)),
        Some(t) => bail!("{key}: expected one number, got shape {:?}", t.size()),
    }
}

/// Test hook behind `flowzoo export --reference-in IN --reference-out OUT`: runs the Rust model
/// on the tensors of `IN` (a safetensors file) and writes its outputs to `OUT`.
///
/// Inputs: `x` `[B, *event_shape]`, float32 or float64 (the model runs in that dtype; float64
/// converts its weights); optional `labels` (int64 `[B]`, class-conditional models), `eps`
/// (`[N, D]`, latents to invert), and `sample_n`, `sample_temperature`, `sample_seed` (one number
/// each; optional `sample_labels` `[sample_n]`).
///
/// Outputs: `z`, `logabsdet` (the flow's forward), `log_prob`, `bits_per_dim` (image models),
/// `x_rec` (inverse of `z`), `inverse_eps` and `inverse_eps_logabsdet` (the flow's inverse of
/// `eps`), `sample` (after seeding libtorch's generator with `sample_seed`, as
/// `torch.manual_seed(seed); m.sample(n, temperature)` does).
pub fn write_reference(sess: &mut Session, input: &Path, output: &Path) -> Result<()> {
    use crate::flows::Ctx;
    let (inputs, _) = read_safetensors(input)?;
    let x = inputs
        .get("x")
        .ok_or_else(|| anyhow!("{}: no tensor \"x\"", input.display()))?
        .shallow_clone();
    let kind = x.kind();
    match kind {
        Kind::Float => {}
        Kind::Double => sess.vs.double(),
        k => bail!("{}: x must be float32 or float64, got {k:?}", input.display()),
    }
    sess.model.check_input(&x).context("reference input x")?;
    let _g = tch::no_grad_guard();
    let cond_of = |key: &str| -> Result<Option<Tensor>> {
        match (inputs.get(key), sess.model.n_classes()) {
            (Some(l), Some(_)) => Ok(sess.one_hot(l)?),
            (None, Some(_)) => bail!("{}: the model is class-conditional: {key} is needed", input.display()),
            (Some(_), None) => bail!("{}: {key} given but the model is not class-conditional", input.display()),
            (None, None) => Ok(None),
        }
    };
    let cond = cond_of("labels")?;
    let ctx = Ctx::eval().with_cond(cond.as_ref());
    let flow = sess.model.flow();
    let mut out: Vec<(String, Tensor)> = vec![];
    let (z, logdet) = flow.forward(&x, &ctx)?;
    let lp = sess.model.log_prob(&x, &ctx)?;
    if sess.model.event_shape().len() == 3 {
        let bpd = crate::data::bits_per_dim(&lp, sess.model.dim(), sess.cfg.data.n_bits)?;
        out.push(("bits_per_dim".into(), bpd));
    }
    let (x_rec, _) = flow.inverse(&z, &ctx)?;
    out.push(("z".into(), z));
    out.push(("logabsdet".into(), logdet));
    out.push(("log_prob".into(), lp));
    out.push(("x_rec".into(), x_rec));
    if let Some(eps) = inputs.get("eps") {
        let eps = eps.f_to_kind(kind)?;
        let cond = cond_of("eps_labels")?;
        let (xe, lde) = flow.inverse(&eps, &Ctx::eval().with_cond(cond.as_ref()))?;
        out.push(("inverse_eps".into(), xe));
        out.push(("inverse_eps_logabsdet".into(), lde));
    }
    if let Some(n) = scalar_input(&inputs, "sample_n")? {
        let t = scalar_input(&inputs, "sample_temperature")?.unwrap_or(1.0);
        let seed = scalar_input(&inputs, "sample_seed")?.unwrap_or(0.0);
        let cond = cond_of("sample_labels")?;
        tch::manual_seed(seed as i64);
        let s = sess.model.sample(n as i64, t, &Ctx::eval().with_cond(cond.as_ref()), (kind, sess.device()))?;
        out.push(("sample".into(), s));
    }
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "flowzoo-reference".to_string());
    write_safetensors(output, &out, &meta)
}
