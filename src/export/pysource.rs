//! `flowzoo export --python DIR`: the model as plain PyTorch source (`DIR/<kind>.py`) with its
//! weights (`DIR/weights.safetensors`), for `torch.export`, `torch.compile`, AOTInductor and
//! ONNX. Written from the same layer descriptions as the TorchScript export.
use super::{build_script, python_source, session_spec};
use crate::io::tensors::named_variables;
use crate::io::write_safetensors;
use crate::session::Session;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// Writes the two files; returns a line saying what was written.
pub fn write_python_export(sess: &Session, dir: &Path, weights: &Path) -> Result<String> {
    if dir.exists() && !dir.is_dir() {
        anyhow::bail!("--python {}: not a folder", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let vars = named_variables(&sess.vs);
    let ts = build_script(sess.model.as_ref(), &vars, &session_spec(sess))?;
    let src = python_source(&ts, &sess.model.describe())?;
    let file = dir.join(format!("{}.py", module_name(sess.cfg.model.kind.as_str())));
    crate::io::atomic::atomic_write_bytes(&file, src.as_bytes()).with_context(|| format!("writing {}", file.display()))?;
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "flowzoo".to_string());
    meta.insert("source".to_string(), weights.display().to_string());
    let w = dir.join("weights.safetensors");
    write_safetensors(&w, &vars, &meta)?;
    Ok(format!(
        "wrote {} ({} lines, {} layer classes) and {} ({} tensors): `import {}; m = {}.load(\"{}\")`",
        file.display(),
        src.lines().count(),
        src.matches("\nclass ").count(),
        w.display(),
        vars.len(),
        module_name(sess.cfg.model.kind.as_str()),
        module_name(sess.cfg.model.kind.as_str()),
        dir.display()
    ))
}

/// A Python module name for a model kind (`glow`, `realnvp`, ...).
fn module_name(kind: &str) -> String {
    let clean: String = kind.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    if clean.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) {
        clean
    } else {
        format!("model_{clean}")
    }
}
