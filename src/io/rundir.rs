//! A run directory: everything one training run writes, and what eval/sample/export read.
//!
//! ```text
//! RUN/config.toml           the full resolved config
//! RUN/weights.safetensors   last checkpoint's weights    } written together at each
//! RUN/optimizer.safetensors last optimizer state         } checkpoint, each atomically;
//! RUN/state.json            step, best test bpd, ...     } state.json last
//! RUN/best.safetensors      weights with the best test bits/dim so far
//! RUN/metrics.csv, RUN/curves.png, RUN/samples/*.png
//! ```
use super::atomic::atomic_write_bytes;
use crate::config::Config;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunState {
    /// Optimizer steps completed.
    pub step: i64,
    /// Best evaluation score so far, lower is better: test bits/dim (images) or validation
    /// negative log-likelihood in nats (tabular).
    pub best_test_bpd: Option<f64>,
    pub best_step: Option<i64>,
    /// Steps skipped because the loss or a gradient was NaN/Inf.
    pub skipped_steps: i64,
    /// Class names (sub-folder names) in label order.
    pub classes: Vec<String>,
    /// Column names of tabular data (their count is the model's dimension).
    #[serde(default)]
    pub columns: Vec<String>,
    /// Wall-clock seconds spent training, summed over resumes.
    pub train_seconds: f64,
    pub flowzoo_version: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checkpoint {
    /// `best.safetensors` when it exists, else the last weights.
    Best,
    Last,
}

#[derive(Clone, Debug)]
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    pub fn create(path: &Path) -> Result<RunDir> {
        std::fs::create_dir_all(path.join("samples")).with_context(|| format!("cannot create run directory {}", path.display()))?;
        Ok(RunDir { path: path.to_path_buf() })
    }

    /// An existing run; errors name what is missing.
    pub fn open(path: &Path) -> Result<RunDir> {
        if !path.is_dir() {
            bail!("run directory {} does not exist", path.display());
        }
        let run = RunDir { path: path.to_path_buf() };
        for f in [run.config_path(), run.state_path()] {
            if !f.is_file() {
                bail!("{} is not a complete run directory: {} is missing", path.display(), f.display());
            }
        }
        Ok(run)
    }

    pub fn config_path(&self) -> PathBuf {
        self.path.join("config.toml")
    }
    pub fn state_path(&self) -> PathBuf {
        self.path.join("state.json")
    }
    pub fn weights_path(&self) -> PathBuf {
        self.path.join("weights.safetensors")
    }
    pub fn best_path(&self) -> PathBuf {
        self.path.join("best.safetensors")
    }
    pub fn optimizer_path(&self) -> PathBuf {
        self.path.join("optimizer.safetensors")
    }
    pub fn metrics_path(&self) -> PathBuf {
        self.path.join("metrics.csv")
    }
    pub fn samples_dir(&self) -> PathBuf {
        self.path.join("samples")
    }

    pub fn checkpoint_path(&self, which: Checkpoint) -> PathBuf {
        match which {
            Checkpoint::Best if self.best_path().is_file() => self.best_path(),
            _ => self.weights_path(),
        }
    }

    pub fn load_config(&self) -> Result<Config> {
        Config::load(&self.config_path())
    }

    pub fn save_config(&self, cfg: &Config) -> Result<()> {
        atomic_write_bytes(&self.config_path(), cfg.to_toml()?.as_bytes())
    }

    pub fn load_state(&self) -> Result<RunState> {
        let p = self.state_path();
        let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a valid state file (truncated?)", p.display()))
    }

    pub fn save_state(&self, state: &RunState) -> Result<()> {
        atomic_write_bytes(&self.state_path(), serde_json::to_string_pretty(state)?.as_bytes())
    }
}
