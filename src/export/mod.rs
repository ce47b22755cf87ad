//! TorchScript export: a trained flowzoo model as a module that plain PyTorch opens with
//! `torch.jit.load` (no flowzoo, no extra Python package), trains and saves again.
//!
//! # What the exported module has
//! * `forward(x, labels=None) -> (z, logabsdet)`: `z` is the flat standard-normal latent `[B, D]`
//!   of the model's flow (for Glow: level 0's factored-out half, level 1's, ..., then the top
//!   latent, each `(C, H, W)` row-major, see [`crate::models::glow`]), `logabsdet` is `[B]`;
//! * `inverse(z, labels=None) -> x`;
//! * `log_prob(x, labels=None) -> [B]`, nats, `log N(z; 0, I) + logabsdet`, the base included
//!   (every base is a bijection onto standard-normal noise, see [`crate::flows::base`]);
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
//! models (a conditional Glow, a tabular `data.label_column`) take `labels` (int64 class indices
//! `[B]`); unconditional ones refuse them. A tabular model conditioned on `data.context_columns`
//! takes `context` in their place (the columns' raw values `[B, K]`, or `[K]` for every row,
//! standardised inside as flowzoo does), and has the int attribute `context_dim` (0 otherwise).
//!
//! # How a model is written
//! The layers write their own TorchScript through [`crate::script`] (each layer's
//! `to_torchscript`); this module registers the model's variables, asks the transform and the
//! base to write themselves, composes them into one flow onto noise, and adds the model-level
//! methods above (written once, for every [`DensityModel`]), then checks the result against the
//! Rust model and writes the file atomically.
//!
//! # Reference outputs (for tests)
//! `flowzoo export --model RUN --reference-in IN.safetensors --reference-out OUT.safetensors`
//! (hidden from `--help`) runs the Rust model on the inputs in `IN` and writes its outputs, so
//! tests can compare the exported module with the model it came from; see [`write_reference`].
use crate::io::tensors::named_variables;
use crate::io::{write_safetensors, Checkpoint, RunDir};
use crate::models::DensityModel;
use crate::session::Session;
use crate::ffi::ScriptModule;
use crate::script::{ts_float, Layer, ScriptBuilder, ScriptFlow};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, IValue, Tensor};

mod ode;
mod pysource;
mod reference;

pub use reference::write_reference;

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
    /// A model whose transform integrates ODEs (FFJORD): the default solver name and steps of
    /// the `*_ode` methods (see [`ode`]).
    pub ode: Option<(String, i64)>,
    /// A model conditioned on context columns: the methods take `context` instead of `labels`.
    pub context: Option<ContextSpec>,
}

/// The context of a model conditioned on `data.context_columns`.
#[derive(Clone, Debug)]
pub struct ContextSpec {
    /// The columns, in order (their count is the context's size).
    pub columns: Vec<String>,
    /// The registered names of the standardisation's mean and std, when it has one.
    pub standardize: Option<(String, String)>,
}

fn int_list(v: &[i64]) -> String {
    format!("[{}]", v.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

/// Describes `model` (whose variables are `vars`) to a [`ScriptBuilder`]: the TorchScript
/// module is compiled as it grows, and the builder holds every layer for the Python back end.
pub fn build_script(model: &dyn DensityModel, vars: &[(String, Tensor)], spec: &ModelSpec) -> Result<ScriptBuilder> {
    let mut ts = ScriptBuilder::new(&spec.class)?;
    ts.register_variables(vars)?;
    let (flow, transform, base) = model_flow(&mut ts, model).with_context(|| format!("exporting {}", spec.class))?;
    add_model_methods(&mut ts, &flow, (&transform, &base), spec)?;
    Ok(ts)
}

/// The TorchScript module of `model` whose variables are `vars` (name, tensor).
pub fn build_module(model: &dyn DensityModel, vars: &[(String, Tensor)], spec: &ModelSpec) -> Result<ScriptModule> {
    Ok(build_script(model, vars, spec)?.into_module())
}

/// The whole model as one flow onto standard-normal noise: the transform, then the base as a
/// bijection (as [`DensityModel::to_noise`] and [`DensityModel::from_noise`] compose them).
fn model_flow(ts: &mut ScriptBuilder, model: &dyn DensityModel) -> Result<(ScriptFlow, ScriptFlow, ScriptFlow)> {
    let transform = model.flow().to_torchscript(ts)?;
    let base = model.base().to_torchscript(ts).context("the base distribution")?;
    let f = "z, ld = $transform.forward(x, cond)\neps, ld_base = $base.forward(z, cond)\nreturn eps, ld + ld_base";
    let i = "z, ld_base = $base.inverse(y, cond)\nx, ld = $transform.inverse(z, cond)\nreturn x, ld + ld_base";
    let flow = ts.add(Layer::new("FlowToNoise").child("transform", &transform).child("base", &base).flow_methods(f, i))?;
    Ok((flow, transform, base))
}

/// The model-level methods (see the module docs), written once for every model, as the root
/// of the export.
fn add_model_methods(ts: &mut ScriptBuilder, flow: &ScriptFlow, (transform, base): (&ScriptFlow, &ScriptFlow), spec: &ModelSpec) -> Result<()> {
    let shape = &spec.event_shape;
    let dim: i64 = shape.iter().product();
    let k = spec.n_classes.unwrap_or(0);
    let reference = ts.float_reference_name()?.to_string();
    ts.module_mut().register_attribute_int("dim", dim)?;
    ts.module_mut().register_attribute_int("n_classes", k)?;
    ts.module_mut().register_attribute_int("n_bits", spec.n_bits.unwrap_or(0))?;
    let context_dim = spec.context.as_ref().map_or(0, |c| c.columns.len() as i64);
    ts.module_mut().register_attribute_int("context_dim", context_dim)?;
    let cls = &spec.class;
    let want = format!("[B, {}]", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "));
    let mut shape_test = format!("x.dim() == {}", shape.len() + 1);
    for (i, d) in shape.iter().enumerate() {
        shape_test += &format!(" and x.size({}) == {d}", i + 1);
    }
    // The conditioning argument: class labels, or a context of raw column values.
    let (arg, to_cond) = if spec.context.is_some() { ("context", "_context_to_cond") } else { ("labels", "_labels_to_cond") };
    let opt = format!("{arg}: Optional[Tensor]=None");
    let t2 = "Tuple[Tensor, Tensor]";
    let cond_fn = if let Some(c) = &spec.context {
        context_to_cond(cls, c)
    } else if k > 0 {
        format!(
            "assert labels is not None, \"flowzoo {cls}: this model is class-conditional: pass labels (int64 class indices [B] in 0..{km1})\"\n\
             lab = labels\n\
             assert lab.dim() == 1 and lab.size(0) == like.size(0), \"flowzoo {cls}: expected labels of shape [\" + str(like.size(0)) + \"], got \" + str(lab.size())\n\
             # dtype 4 is torch.int64 (the TorchScript compiler here knows no torch.int64).\n\
             return torch.one_hot(lab.to(device=like.device, dtype=4), {k}).to(like.dtype)",
            km1 = k - 1
        )
    } else {
        format!("assert labels is None, \"flowzoo {cls}: this model is not class-conditional; labels must be None\"\nreturn None")
    };
    let ln2pi = (2.0 * std::f64::consts::PI).ln();
    let normal_const = ts_float(0.5 * dim as f64 * ln2pi)?;
    let sample_labels = if k > 0 { format!("if labels is None:\n    labels = torch.remainder(torch.arange(n, dtype=4, device=eps.device), {k})\n") } else { String::new() };
    let mut root = Layer::new(cls)
        .tensor_named("ref", &reference)
        .int("dim", dim)
        .int("n_classes", k)
        .int("n_bits", spec.n_bits.unwrap_or(0))
        .int("context_dim", context_dim)
        .child("flow", flow)
        .method("event_shape", "", "List[int]", &format!("return {}", int_list(shape)))
        .method(to_cond, &format!("{arg}: Optional[Tensor], like: Tensor"), "Optional[Tensor]", &cond_fn)
        .method(
            "forward",
            &format!("x: Tensor, {opt}"),
            t2,
            &format!("assert {shape_test}, \"flowzoo {cls}: expected x of shape {want}, got \" + str(x.size())\nreturn $flow.forward(x, $self.{to_cond}({arg}, x))"),
        )
        .method(
            "inverse",
            &format!("z: Tensor, {opt}"),
            "Tensor",
            &format!(
                "assert z.dim() == 2 and z.size(1) == {dim}, \"flowzoo {cls}: expected z of shape [B, {dim}], got \" + str(z.size())\n\
                 x, logabsdet = $flow.inverse(z, $self.{to_cond}({arg}, z))\nreturn x"
            ),
        )
        .method(
            "log_prob",
            &format!("x: Tensor, {opt}"),
            "Tensor",
            &format!("z, logabsdet = $self.forward(x, {arg})\nb = z.size(0)\nsq = torch.sum(z.reshape([b, -1]).square(), [1])\nreturn (sq * (-0.5) - {normal_const}) + logabsdet"),
        )
        .method(
            "sample",
            &format!("n: int, temperature: float=1.0, {opt}"),
            "Tensor",
            &format!("ref = $ref\neps = torch.randn([n, {dim}], dtype=ref.dtype, device=ref.device) * temperature\n{sample_labels}return $self.inverse(eps, {arg})"),
        );
    if let Some((mean, std)) = spec.context.as_ref().and_then(|c| c.standardize.as_ref()) {
        root = root.tensor_named("context_mean", mean).tensor_named("context_std", std);
    }
    if let Some(n_bits) = spec.n_bits {
        let d = dim as f64;
        let c = ts_float(d * (n_bits as f64) * std::f64::consts::LN_2)?;
        let dl = ts_float(d * std::f64::consts::LN_2)?;
        let levels = ts_float((1i64 << n_bits) as f64)?;
        let div = ts_float((1i64 << (8 - n_bits).max(0)) as f64)?;
        let scale = ts_float(255.0 / ((1i64 << n_bits) as f64 - 1.0).max(1.0))?;
        let floor = if n_bits < 8 { format!("k = torch.floor(k / {div})\n") } else { String::new() };
        root = root
            .method("bits_per_dim", &format!("x: Tensor, {opt}"), "Tensor", &format!("lp = $self.log_prob(x, {arg})\nreturn (-(lp - {c})) / {dl}"))
            .method(
                "preprocess",
                "pixels: Tensor, dequantize: bool=True",
                "Tensor",
                &format!(
                    "ref = $ref\nk = pixels.to(device=ref.device, dtype=6)  # torch.float32\n{floor}x = (k / {levels} - 0.5).to(ref.dtype)\n\
                     if dequantize:\n    x = x + torch.rand_like(x) / {levels}\nreturn x"
                ),
            )
            .method(
                "to_pixels",
                "x: Tensor",
                "Tensor",
                &format!("k = torch.clamp(torch.floor((x + 0.5) * {levels}), 0.0, {levels} - 1.0)\nreturn torch.round(k * {scale}).to(dtype=0)  # torch.uint8"),
            );
    }
    if let Some((solver, steps)) = &spec.ode {
        root = ode::add_ode_methods(root, transform, base, &shape_test, &want, cls, dim, solver, *steps)?;
    }
    ts.add_root(root)
}

/// `_context_to_cond(context, like)`: the raw context `[B, K]` (or `[K]` / `[1, K]`, one for
/// every row) checked, cast to `like`'s dtype and device and standardised as
/// [`Session::cond_for`] does it, op for op.
fn context_to_cond(cls: &str, c: &ContextSpec) -> String {
    let k = c.columns.len();
    // Column names inside a TorchScript string literal.
    let names: String = c.columns.join(", ").chars().filter(|ch| !matches!(ch, '"' | '\\' | '\n' | '\r')).collect();
    let mut body = format!(
        "assert context is not None, \"flowzoo {cls}: this model is conditional on the context columns {names}: pass context, their values [B, {k}] (or [{k}] for every row)\"\n\
         c = context\n\
         if c.dim() == 1:\n    c = c.unsqueeze(0)\n\
         assert c.dim() == 2 and c.size(1) == {k} and (c.size(0) == like.size(0) or c.size(0) == 1), \"flowzoo {cls}: expected a context of shape [\" + str(like.size(0)) + \", {k}] ({names}), got \" + str(context.size())\n\
         c = c.expand([like.size(0), {k}]).to(device=like.device, dtype=like.dtype)\n"
    );
    body += if c.standardize.is_some() { "return (c - $context_mean) / $context_std" } else { "return c" };
    body
}

/// The plain PyTorch source of a model described to `ts` (see [`crate::script::python`]).
pub fn python_source(ts: &ScriptBuilder, description: &str) -> Result<String> {
    let doc = format!(
        "{description}\n\nWritten by flowzoo {} (`flowzoo export --python`): a self-contained PyTorch module with\nthe same methods and parameter names as the TorchScript export. `load(folder)` builds it and\nloads `weights.safetensors` from that folder.",
        env!("CARGO_PKG_VERSION")
    );
    crate::script::python::render(&doc, ts.layers(), ts.variables())
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

/// What the model-level methods of a session's model need.
pub fn session_spec(sess: &Session) -> ModelSpec {
    let image = sess.model.event_shape().len() == 3;
    ModelSpec {
        class: class_name(sess.cfg.model.kind.as_str()),
        event_shape: sess.model.event_shape(),
        n_classes: sess.model.n_classes(),
        n_bits: image.then_some(sess.cfg.data.n_bits),
        // The image FFJORD exports the flow contract only (the export's solver, exact trace):
        // its multi-scale chain has no per-call solver choice.
        ode: (sess.cfg.model.kind == crate::config::ModelKind::Ffjord && !image).then(|| (sess.cfg.model.cnf.eval_solver.name().to_string(), sess.cfg.model.cnf.eval_steps)),
        context: sess.context.as_ref().map(|c| ContextSpec {
            columns: c.columns.clone(),
            standardize: c.standardize.as_ref().map(|_| ("context_standardize.mean".to_string(), "context_standardize.std".to_string())),
        }),
    }
}

/// The model of a session as a TorchScript module (variables aliased, not copied).
pub fn session_module(sess: &Session) -> Result<ScriptModule> {
    build_module(sess.model.as_ref(), &named_variables(&sess.vs), &session_spec(sess))
}

/// What `flowzoo export` was asked to write.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    pub checkpoint: Checkpoint,
    /// The TorchScript module.
    pub torchscript: Option<PathBuf>,
    /// The exported weights as safetensors (the same names as the module's `state_dict()`).
    pub safetensors: Option<PathBuf>,
    /// A folder for the plain PyTorch export (`<kind>.py` and `weights.safetensors`).
    pub python: Option<PathBuf>,
    /// Where the exported module is checked against the model (`--device`); the files hold
    /// CPU tensors whatever it is (PyTorch moves them with `.to(...)`).
    pub device: Device,
    /// A model that integrates ODEs (FFJORD): the solver of the exported `forward`, `inverse`,
    /// `log_prob` and `sample` ("dopri5", "rk4" or "euler"; default the config's
    /// `model.cnf.eval_solver`) and the steps of a fixed-step one (default `eval_steps`). The
    /// check against the Rust model and the reference outputs use the same.
    pub ode_solver: Option<String>,
    pub ode_steps: Option<i64>,
    /// Test hook: inputs for [`write_reference`] ...
    pub reference_in: Option<PathBuf>,
    /// ... and where its outputs go.
    pub reference_out: Option<PathBuf>,
}

/// `flowzoo export`: opens the run, writes what `opts` asks for; returns lines to print.
pub fn export_run(run_dir: &Path, opts: &ExportOptions) -> Result<Vec<String>> {
    if opts.torchscript.is_none() && opts.safetensors.is_none() && opts.python.is_none() && opts.reference_out.is_none() {
        bail!("nothing to export: pass --torchscript FILE.pt and/or --python DIR (and/or --safetensors FILE.safetensors)");
    }
    if opts.reference_in.is_some() != opts.reference_out.is_some() {
        bail!("--reference-in and --reference-out go together");
    }
    let run = RunDir::open(run_dir).with_context(|| format!("cannot export {}", run_dir.display()))?;
    let overrides = ode::solver_overrides(&run, opts)?;
    let mut sess = Session::open_with(&run, opts.checkpoint, Device::Cpu, &overrides)
        .with_context(|| format!("cannot export {}", run_dir.display()))?;
    let weights = run.checkpoint_path(opts.checkpoint);
    let mut lines = vec![];
    if let Some(path) = &opts.torchscript {
        let module = session_module(&sess)?;
        // The check runs the module on `--device`: one built from a session there (the file is
        // the CPU one; `CModule::to` would also cast integer buffers, so it is not used).
        let check = if opts.device == Device::Cpu {
            self_check(&sess, &module)
        } else {
            let on_device = Session::open_with(&run, opts.checkpoint, opts.device, &overrides)?;
            self_check(&on_device, &session_module(&on_device)?)
        }
        .with_context(|| format!("checking the exported module against the model on {:?}", opts.device))?;
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
    if let Some(dir) = &opts.python {
        lines.push(pysource::write_python_export(&sess, dir, &weights)?);
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
    // A class 0 for both points, or a context of two random rows.
    let labels = match (&sess.context, sess.model.n_classes()) {
        (Some(c), _) => Some(Tensor::f_randn([2, c.dim()], (sess.kind(), sess.device()))?),
        (None, Some(_)) => Some(Tensor::from_slice(&[0i64, 0]).to_device(sess.device())),
        (None, None) => None,
    };
    let mut args = vec![IValue::Tensor(x.shallow_clone())];
    if let Some(l) = &labels {
        args.push(IValue::Tensor(l.shallow_clone()));
    }
    let IValue::Tensor(lp_ts) = m.method_is("log_prob", &args)? else {
        bail!("log_prob of the exported module did not return a tensor");
    };
    let cond = sess.cond_for(labels.as_ref(), 2, "checking the export")?;
    let lp = sess.model.log_prob(&x, &crate::flows::Ctx::eval().with_cond(cond.as_ref()))?;
    let diff = lp_ts.f_sub(&lp)?.f_abs()?.f_max()?.f_double_value(&[])?;
    let scale = lp.f_abs()?.f_max()?.f_double_value(&[])?.max(1.0);
    if !(diff <= 1e-4 * scale) {
        bail!("the exported module's log_prob differs from the model's by {diff:e} (internal error)");
    }
    Ok(diff)
}
