//! Tensors a user hands in on the command line (`eval --tensors`, `sample --eps`), each given as
//! `FILE.safetensors:KEY`, checked for dtype, rank and shape before anything indexes them. Every
//! error names the flag, the file, the key and what was found.
use crate::io::read_safetensors;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// A tensor read from `FILE:KEY`, with where it came from (for messages).
pub struct UserTensor {
    pub tensor: Tensor,
    pub file: PathBuf,
    pub key: String,
    /// The flag it was given to, e.g. `--tensors`.
    pub flag: &'static str,
}

impl UserTensor {
    /// `FLAG FILE:KEY` for messages.
    pub fn origin(&self) -> String {
        format!("{} {}:{}", self.flag, self.file.display(), self.key)
    }

    /// Checks that the tensor holds `B >= 1` points of `event_shape` (`[B, ...event_shape]`);
    /// `what` names them in the error ("input", "standard-normal noise").
    pub fn expect_points(&self, event_shape: &[i64], what: &str) -> Result<()> {
        let got = self.tensor.size();
        let want: Vec<String> = std::iter::once("B".to_string()).chain(event_shape.iter().map(|d| d.to_string())).collect();
        let want = format!("[{}]", want.join(", "));
        if got.len() != event_shape.len() + 1 || got[1..] != *event_shape {
            bail!("{}: expected {what} of shape {want}, got {got:?} ({})", self.origin(), kind_name(self.tensor.kind()));
        }
        if got[0] < 1 {
            bail!("{}: expected {what} of shape {want} with B >= 1, got {got:?} (no points)", self.origin());
        }
        Ok(())
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Float => "float32",
        Kind::Double => "float64",
        Kind::Half => "float16",
        Kind::BFloat16 => "bfloat16",
        Kind::Int64 => "int64",
        Kind::Int => "int32",
        Kind::Int8 => "int8",
        Kind::Uint8 => "uint8",
        Kind::Bool => "bool",
        _ => "a non-numeric dtype",
    }
}

/// Reads `FILE.safetensors:KEY` given to `flag` and checks that it is a floating-point tensor
/// (float16, bfloat16, float32 or float64) of finite values.
pub fn read_tensor_spec(flag: &'static str, spec: &str) -> Result<UserTensor> {
    let (file, key) = spec.rsplit_once(':').with_context(|| format!("{flag} {spec}: expected FILE.safetensors:KEY"))?;
    if file.is_empty() || key.is_empty() {
        bail!("{flag} {spec}: expected FILE.safetensors:KEY");
    }
    let (tensors, _) = read_safetensors(Path::new(file)).with_context(|| format!("{flag} {spec}"))?;
    let Some(t) = tensors.get(key) else {
        let have: Vec<String> = tensors.iter().map(|(k, t)| format!("{k} {:?}", t.size())).collect();
        bail!("{flag} {spec}: {file} has no tensor {key:?} (it has: {})", if have.is_empty() { "none".to_string() } else { have.join(", ") });
    };
    let ut = UserTensor { tensor: t.shallow_clone(), file: PathBuf::from(file), key: key.to_string(), flag };
    if !matches!(t.kind(), Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16) {
        bail!("{}: expected a floating-point tensor (float32 or float64), got {} {:?}", ut.origin(), kind_name(t.kind()), t.size());
    }
    if !bool::try_from(t.f_isfinite()?.f_all()?)? {
        bail!("{}: holds NaN or Inf values (shape {:?})", ut.origin(), t.size());
    }
    Ok(ut)
}
