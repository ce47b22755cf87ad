//! The run configuration: plain serde structs mirroring `configs/*.toml`.
//!
//! - Unknown or ill-typed keys and unknown choices are errors naming the key (and, for a file,
//!   its line); a choice's error lists the known values.
//! - [`Config::validate`] range-checks every key, for every data kind, naming the key (and the
//!   line in a file, the override with `--set`).
//! - `--set a.b=v` overrides any key ([`Config::with_overrides`]).
//! - `data.path` may hold `${VAR}` / `${VAR:-default}` and is looked up in the current
//!   directory, then beside the config file ([`Config::data_path`], `data_path.rs`).
//!
//! Plain data only: this module depends on no runtime, trainer or bench code (`crate::runtime`
//! turns [`DeviceChoice`] and [`Precision`] into libtorch devices and switches).
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

mod autoregressive;
pub mod cnf;
mod choices;
pub mod data_path;
mod overrides;
mod sections;
mod validate;

pub use autoregressive::{DegreesChoice, InverseChoice, MadeOrderChoice, StructureChoice};
pub use choices::*;
pub use cnf::CnfConfig;
pub use sections::{DataConfig, ModelConfig, TrainConfig};
pub use validate::{Invalid, MAX_LEVELS};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data: DataConfig,
    pub model: ModelConfig,
    pub train: TrainConfig,
    /// The folder of the file this config was read from, where a relative `data.path` is
    /// looked up after the current directory. Not a key: never written, never read.
    #[serde(skip)]
    pub file_dir: Option<PathBuf>,
}

impl Config {
    /// Parses TOML text; `origin` (a file name) is named in errors, with the line of the key.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config> {
        let cfg: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        if let Err(bad) = validate::check(&cfg) {
            return Err(match line_of(text, bad.key) {
                Some(line) => anyhow::anyhow!("{origin}, line {line}: {bad}"),
                None => anyhow::anyhow!("{origin}: {bad}"),
            });
        }
        Ok(cfg)
    }

    /// Reads a config file; a relative `data.path` in it is also looked up beside it.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
        let mut cfg = Self::from_toml_str(&text, &path.display().to_string())?;
        cfg.file_dir = Some(match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        });
        Ok(cfg)
    }

    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }

    /// Every key in its range and the keys consistent with each other; the error names the
    /// key (see [`Invalid`]).
    pub fn validate(&self) -> Result<()> {
        validate::check(self).map_err(anyhow::Error::new)
    }

    /// Sets `data.path` from the command line (`--data`): relative to the current directory
    /// only, not to the config file's folder.
    pub fn set_data_path(&mut self, path: &Path) {
        self.data.path = path.display().to_string();
        self.file_dir = None;
    }

    /// The data `data.path` names: variables expanded, a relative path found in the current
    /// directory or beside the config file; the error says every place it looked.
    pub fn data_path(&self) -> Result<PathBuf> {
        data_path::resolve(&self.data.path, self.file_dir.as_deref())
    }

    /// A copy with `data.path` replaced by where it was found, so the copy means the same
    /// from any directory where the found path does (what a run directory records).
    pub fn with_resolved_data_path(&self) -> Result<Config> {
        let mut c = self.clone();
        c.data.path = self.data_path()?.display().to_string();
        c.file_dir = None;
        Ok(c)
    }
}

/// The line (1-based) where `section.key` is set in TOML `text`, if it is: under a `[section]`
/// header, or as a dotted `section.key = ...` at the top level.
fn line_of(text: &str, dotted: &str) -> Option<usize> {
    let (section, key) = dotted.split_once('.')?;
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.split('#').next().unwrap_or("").trim();
        if let Some(h) = l.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            current = h.trim().to_string();
            continue;
        }
        let Some((lhs, _)) = l.split_once('=') else { continue };
        let lhs: String = lhs.split('.').map(|p| p.trim().trim_matches('"')).collect::<Vec<_>>().join(".");
        let full = if current.is_empty() { lhs } else { format!("{current}.{lhs}") };
        if full == format!("{section}.{key}") {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn line_of_finds_sections_and_dotted_keys() {
        let text = "# c\n[data]\nn_bits = 9 # x\n\n[train]\n lr=0\n";
        assert_eq!(super::line_of(text, "data.n_bits"), Some(3));
        assert_eq!(super::line_of(text, "train.lr"), Some(6));
        assert_eq!(super::line_of(text, "train.seed"), None);
        assert_eq!(super::line_of("train.lr = 1\n", "train.lr"), Some(1));
    }
}
