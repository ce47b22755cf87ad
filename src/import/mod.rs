//! Bringing PyTorch Glow checkpoints into flowzoo run directories (`flowzoo import`; its flags
//! are in the binary's `src/cli/import.rs`). A top-level module beside `export`: it builds a
//! [`Session`] and writes a run, so it sits above `session` and `io` (it was once `io::import`,
//! a cycle io -> train -> io).
//!
//! An imported model is a native flowzoo Glow: y0ast/Glow-PyTorch's math is flowzoo's own
//! (`model.style = "flowzoo"`), and rosinality/glow-pytorch's is flowzoo's Glow with the switches
//! of `model.style = "rosinality"` set (see [`crate::models::glow::GlowConventions`]). Importing
//! is therefore only renaming (and reshaping) tensors:
//!
//! * [`y0ast`]: `flow.layers.{j}.*`, `learn_top_fn.*` (+ `prior_h`, checked to be zeros);
//! * [`rosinality`]: `blocks.{b}.flows.{f}.*`, `blocks.{b}.prior.*` (+ the LU masks, checked);
//! * [`import_state_dict`]: flowzoo's own names (a model exported with `flowzoo export`,
//!   fine-tuned in Python and saved with `torch.save(m.state_dict())` or `torch.jit.save`).
//!
//! Every variable of the flowzoo model must come from exactly one checkpoint tensor of the
//! right shape and kind, and every checkpoint tensor must be used: a missing key, an unexpected
//! key or a shape mismatch is an error naming the checkpoint's key with the expected and found
//! shapes. The run directory is built in a temporary sibling folder, checked by reopening it
//! and computing a log-likelihood, and only then renamed into place: on any error nothing is
//! left at `-o`.
use crate::config::Config;
use crate::io::pt::{read_weights, WeightsFile};
use crate::io::tensors::named_variables;
use crate::io::{write_safetensors, Checkpoint, RunDir, RunState};
use crate::session::Session;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

pub mod rosinality;
pub mod y0ast;

/// Where a flowzoo variable's value comes from.
pub enum Source {
    /// A checkpoint tensor: its key and the shape it has there (reshaped to the flowzoo shape).
    Key { key: String, shape: Vec<i64> },
    /// Not stored by the checkpoint; filled with a constant (ActNorm's `initialized` = 1).
    Fill(f64),
    /// Not stored by the checkpoint; the value the model is built with is the right one (the
    /// indices of a reversal permutation).
    Keep,
}

impl Source {
    pub fn key(key: impl Into<String>, shape: &[i64]) -> Source {
        Source::Key { key: key.into(), shape: shape.to_vec() }
    }
}

/// A checkpoint tensor with no flowzoo counterpart that must hold a known value (y0ast's
/// `prior_h` zeros, rosinality's LU masks): anything else would change the model.
pub struct Fixed {
    pub key: String,
    pub value: Tensor,
    pub what: &'static str,
}

/// How a checkpoint maps onto a flowzoo model.
pub struct KeyMap {
    /// One entry per flowzoo variable.
    pub sources: BTreeMap<String, Source>,
    pub fixed: Vec<Fixed>,
}

fn fmt_shape(s: &[i64]) -> String {
    format!("{s:?}")
}

/// Applies `map` to the checkpoint's tensors: flowzoo name -> tensor of the variable's shape and
/// kind. All problems are collected and reported together (the first 20), followed by `hint`.
pub fn convert(
    vars: &BTreeMap<String, Tensor>,
    map: &KeyMap,
    ckpt: &BTreeMap<String, Tensor>,
    origin: &str,
    hint: Option<String>,
) -> Result<BTreeMap<String, Tensor>> {
    let mut problems = vec![];
    let mut used: BTreeSet<&str> = BTreeSet::new();
    let mut out = BTreeMap::new();
    for (name, var) in vars {
        let Some(src) = map.sources.get(name) else {
            bail!("internal error: no source for flowzoo variable {name}");
        };
        match src {
            Source::Fill(v) => {
                out.insert(name.clone(), Tensor::f_full(var.size(), *v, (var.kind(), Device::Cpu))?);
            }
            Source::Keep => {
                out.insert(name.clone(), var.f_detach()?.f_to_device(Device::Cpu)?.copy());
            }
            Source::Key { key, shape } => {
                let Some(t) = ckpt.get(key) else {
                    problems.push(format!("missing key {key} (expected shape {})", fmt_shape(shape)));
                    continue;
                };
                used.insert(key.as_str());
                if t.size() != *shape {
                    problems.push(format!("key {key}: expected shape {}, found {}", fmt_shape(shape), fmt_shape(&t.size())));
                    continue;
                }
                let var_float = var.is_floating_point();
                let flag = name.ends_with(".initialized");
                if var_float && !flag && !t.is_floating_point() {
                    problems.push(format!("key {key}: expected a floating-point tensor, found {:?}", t.kind()));
                    continue;
                }
                if !var_float && t.is_floating_point() {
                    problems.push(format!("key {key}: expected an integer tensor ({:?}), found {:?}", var.kind(), t.kind()));
                    continue;
                }
                let v = t.f_reshape(var.size())?.f_to_kind(var.kind())?;
                if var_float && !bool::try_from(v.f_isfinite()?.f_all()?)? {
                    problems.push(format!("key {key}: holds NaN or Inf values"));
                    continue;
                }
                out.insert(name.clone(), v);
            }
        }
    }
    for f in &map.fixed {
        let Some(t) = ckpt.get(&f.key) else {
            problems.push(format!("missing key {} (expected shape {}, {})", f.key, fmt_shape(&f.value.size()), f.what));
            continue;
        };
        used.insert(f.key.as_str());
        if t.size() != f.value.size() {
            problems.push(format!("key {}: expected shape {}, found {}", f.key, fmt_shape(&f.value.size()), fmt_shape(&t.size())));
            continue;
        }
        let same = t.f_to_kind(Kind::Double)?.f_eq_tensor(&f.value.f_to_kind(Kind::Double)?)?.f_all()?;
        if !bool::try_from(same)? {
            problems.push(format!("key {}: expected {} (any other value changes the model; flowzoo cannot represent it)", f.key, f.what));
        }
    }
    for (k, t) in ckpt {
        if !used.contains(k.as_str()) {
            problems.push(format!("unexpected key {k} (shape {})", fmt_shape(&t.size())));
        }
    }
    if !problems.is_empty() {
        let n = problems.len();
        let mut msg = format!("{origin} does not match the model ({n} problem{}):", if n == 1 { "" } else { "s" });
        for p in problems.iter().take(20) {
            msg.push_str("\n  ");
            msg.push_str(p);
        }
        if n > 20 {
            msg.push_str(&format!("\n  ... and {} more", n - 20));
        }
        if let Some(h) = hint {
            msg.push_str("\nhint: ");
            msg.push_str(&h);
        }
        bail!(msg);
    }
    Ok(out)
}

/// The model's variables by name (on the CPU).
pub fn model_variables(sess: &Session) -> BTreeMap<String, Tensor> {
    named_variables(&sess.vs).into_iter().collect()
}

/// The class list of an unconditional imported model: what a run trained on a folder without
/// class sub-folders records (one unnamed class), so `train --resume --data DIR` accepts such a
/// folder.
pub fn unlabelled() -> Vec<String> {
    vec![String::new()]
}

/// What [`write_run`] reports.
pub struct Imported {
    pub out: PathBuf,
    pub description: String,
    pub parameters: i64,
    /// bits/dim of a mid-grey image, a smoke check that the model evaluates.
    pub check_bpd: f64,
}

/// Writes a complete run directory at `out` for `cfg` with `weights` (flowzoo names), as a
/// whole: built next to it under a temporary name, reopened and checked on the CPU, then renamed.
pub fn write_run(out: &Path, cfg: &Config, classes: Vec<String>, weights: &BTreeMap<String, Tensor>, source: &str) -> Result<Imported> {
    write_run_on(out, cfg, classes, weights, source, Device::Cpu)
}

/// [`write_run`] with the check (reopening the run and scoring an image) on `device`, so an
/// import for a GPU is checked where it will run.
pub fn write_run_on(out: &Path, cfg: &Config, classes: Vec<String>, weights: &BTreeMap<String, Tensor>, source: &str, device: Device) -> Result<Imported> {
    if out.exists() {
        let empty_dir = out.is_dir() && std::fs::read_dir(out).map(|mut d| d.next().is_none()).unwrap_or(false);
        if !empty_dir {
            bail!("{} already exists; choose another -o or remove it", out.display());
        }
    }
    let name = out.file_name().and_then(|n| n.to_str()).with_context(|| format!("-o {}: not a directory name", out.display()))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let tmp = parent.join(format!(".{name}.import-{}.tmp", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("cannot remove the stale {}", tmp.display()))?;
    }
    let result = (|| -> Result<Imported> {
        cfg.validate().context("the imported model's config")?;
        let run = RunDir::create(&tmp)?;
        let sess = Session::new(cfg, classes.clone(), Device::Cpu)?;
        crate::io::load_into_varstore(&sess.vs, weights, source)?;
        let mut meta = BTreeMap::new();
        meta.insert("step".to_string(), "0".to_string());
        meta.insert("format".to_string(), "flowzoo".to_string());
        meta.insert("imported_from".to_string(), source.to_string());
        let vars = named_variables(&sess.vs);
        write_safetensors(&run.weights_path(), &vars, &meta)?;
        write_safetensors(&run.best_path(), &vars, &meta)?;
        // A fresh optimizer state (and EMA = the weights), so `train --resume` fine-tunes.
        let mut opt = vec![];
        for (n, p) in vars.iter().filter(|(_, t)| t.requires_grad()) {
            opt.push((format!("m.{n}"), p.f_zeros_like()?));
            opt.push((format!("v.{n}"), p.f_zeros_like()?));
            opt.push((format!("ema.{n}"), p.f_detach()?.copy()));
        }
        let mut ometa = BTreeMap::new();
        ometa.insert("step".to_string(), "0".to_string());
        ometa.insert("adam_step".to_string(), "0".to_string());
        write_safetensors(&run.optimizer_path(), &opt, &ometa)?;
        run.save_config(cfg)?;
        let state = RunState { step: 0, classes, flowzoo_version: env!("CARGO_PKG_VERSION").into(), ..RunState::default() };
        run.save_state(&state)?;
        // Reopen it as eval would, and score one image.
        let check = Session::open(&RunDir::open(&tmp)?, Checkpoint::Best, device).context("reopening the imported run")?;
        let shape = check.model.event_shape();
        let mut full = vec![1];
        full.extend(&shape);
        let x = Tensor::f_full(&full[..], 1.0 / (1u64 << (cfg.data.n_bits + 1)) as f64, (check.kind(), device))?;
        let labels = check.model.n_classes().map(|_| Tensor::zeros([1], (Kind::Int64, Device::Cpu)));
        let scores = check.score_tensor(&x, labels.as_ref(), 1)?;
        let bpd = scores.bpd[0];
        if !bpd.is_finite() {
            bail!("the imported model gives a non-finite log-likelihood ({bpd}) on a mid-grey image; the checkpoint does not fit these conventions");
        }
        Ok(Imported { out: out.to_path_buf(), description: check.model.describe(), parameters: check.parameter_count(), check_bpd: bpd })
    })();
    match result {
        Ok(imp) => {
            std::fs::rename(&tmp, out).with_context(|| format!("cannot move {} to {}", tmp.display(), out.display())).map_err(|e| {
                let _ = std::fs::remove_dir_all(&tmp);
                e
            })?;
            Ok(imp)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e.context(format!("nothing was written to {}", out.display())))
        }
    }
}

/// Reads a weights file for import (`.pt` zip or `.safetensors`).
pub fn read_checkpoint(path: &Path) -> Result<WeightsFile> {
    read_weights(path)
}

/// `flowzoo import state-dict`: flowzoo-named weights saved from Python, in the architecture of
/// the run `like`.
pub fn import_state_dict(weights: &Path, like: &Path, out: &Path, device: Device) -> Result<(Imported, String)> {
    let like_run = RunDir::open(like)?;
    let cfg = like_run.load_config()?;
    let classes = like_run.load_state()?.classes;
    let file = read_checkpoint(weights)?;
    let sess = Session::new(&cfg, classes.clone(), Device::Cpu)?;
    let vars = model_variables(&sess);
    let sources = vars.iter().map(|(n, v)| (n.clone(), Source::key(n.clone(), &v.size()))).collect();
    let map = KeyMap { sources, fixed: vec![] };
    let hint = state_dict_hint(&vars, &file.tensors);
    let origin = format!("{} ({})", weights.display(), file.what);
    let converted = convert(&vars, &map, &file.tensors, &origin, hint)?;
    drop(sess);
    let source = format!("state-dict:{}", weights.display());
    let imp = write_run_on(out, &cfg, classes, &converted, &source, device)?;
    Ok((imp, file.what))
}

/// A common extra or missing prefix between the file's keys and the model's names.
fn state_dict_hint(vars: &BTreeMap<String, Tensor>, ckpt: &BTreeMap<String, Tensor>) -> Option<String> {
    let first_var = vars.keys().next()?;
    for k in ckpt.keys() {
        if k != first_var && k.ends_with(first_var.as_str()) {
            let prefix = &k[..k.len() - first_var.len()];
            if ckpt.keys().all(|k| k.starts_with(prefix)) {
                return Some(format!("every key of the file starts with {prefix:?}; save the model's own state_dict() (the module flowzoo exported), not a wrapper's"));
            }
        }
    }
    let y0ast = ckpt.keys().any(|k| k.starts_with("flow.layers."));
    let ros = ckpt.keys().any(|k| k.starts_with("blocks."));
    if y0ast {
        return Some("this looks like a y0ast/Glow-PyTorch checkpoint: use `flowzoo import y0ast`".into());
    }
    if ros {
        return Some("this looks like a rosinality/glow-pytorch checkpoint: use `flowzoo import rosinality`".into());
    }
    Some("`--like` must name the run whose model was exported (same architecture)".into())
}

/// Parses `levels.{i}.steps.{k}.REST` / `levels.{i}.split.REST` names.
pub(crate) fn parse_level(name: &str) -> Option<(i64, LevelPart<'_>)> {
    let rest = name.strip_prefix("levels.")?;
    let (i, rest) = rest.split_once('.')?;
    let i: i64 = i.parse().ok()?;
    if let Some(r) = rest.strip_prefix("steps.") {
        let (k, r) = r.split_once('.')?;
        return Some((i, LevelPart::Step(k.parse().ok()?, r)));
    }
    rest.strip_prefix("split.").map(|r| (i, LevelPart::Split(r)))
}

pub(crate) enum LevelPart<'a> {
    Step(i64, &'a str),
    Split(&'a str),
}

/// `i` in `PREFIX{i}.` for every key that has it.
pub(crate) fn indices(keys: &BTreeMap<String, Tensor>, prefix: &str) -> BTreeSet<i64> {
    keys.keys().filter_map(|k| k.strip_prefix(prefix)?.split('.').next()?.parse().ok()).collect()
}

