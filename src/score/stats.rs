//! Score statistics of a run's own data, saved beside its weights (`score_stats.json`), so that
//! typicality (which needs the training mean) and thresholds need no second pass over the data.
//!
//! Two splits are summarised: the training split (a seeded subset of at most
//! `StatsOptions::max_train` inputs: the mean needs no more) and the held-out split: the test
//! split for images, the validation split for tabular runs (the splits the trainer evaluates;
//! a tabular test split stays untouched for reporting). Each summary holds the mean, the
//! standard deviation and the quantiles at every 0.1% (levels `i/1000`, `i = 0..=1000`,
//! numpy's default linear interpolation). A threshold at false-positive rate `α` is the
//! held-out quantile at `1 − α` (interpolated between the stored levels): about a fraction `α`
//! of held-out in-distribution inputs score above it, so "score > threshold" flags an input.
use super::{measure_pixels, measure_rows, MeasureOptions, Measurements, NllUnit, ScoreKind};
use crate::config::DataKind;
use crate::rng::seeded_permutation;
use crate::data::tabular::{load_table, split_table};
use crate::data::{load_split, ImageSet};
use crate::io::atomic::atomic_write_bytes;
use crate::io::{Checkpoint, RunDir};
use crate::session::Session;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// Spacing of the stored quantile levels.
pub const QUANTILE_STEP: f64 = 0.001;
const N_QUANTILES: usize = 1001;
const FORMAT: u32 = 1;

/// Mean, standard deviation and quantiles of one score on one split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub mean: f64,
    /// Sample standard deviation (n − 1).
    pub std: f64,
    /// Quantiles at levels `i · QUANTILE_STEP`, `i = 0..=1000` (f32: ample for scores, and half
    /// the file).
    pub quantiles: Vec<f32>,
}

impl Summary {
    pub fn of(values: &[f64]) -> Result<Summary> {
        if values.is_empty() {
            bail!("no scores to summarise");
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            bail!("score {i} is not finite ({})", values[i]);
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let quantiles = (0..N_QUANTILES).map(|i| sorted_quantile(&sorted, i as f64 * QUANTILE_STEP) as f32).collect();
        Ok(Summary { mean, std: var.sqrt(), quantiles })
    }

    /// The quantile at level `q` in [0, 1], interpolated linearly between the stored levels.
    pub fn quantile(&self, q: f64) -> f64 {
        let pos = q.clamp(0.0, 1.0) / QUANTILE_STEP;
        let lo = (pos.floor() as usize).min(N_QUANTILES - 1);
        let hi = (lo + 1).min(N_QUANTILES - 1);
        let (a, b) = (self.quantiles[lo] as f64, self.quantiles[hi] as f64);
        a + (pos - lo as f64) * (b - a)
    }
}

/// numpy's default ("linear", type 7) quantile of sorted values.
fn sorted_quantile(sorted: &[f64], q: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// The summaries of every score kind on one split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitStats {
    /// Inputs summarised.
    pub n: usize,
    /// By score name (`nll`, `typicality`, `complexity`).
    pub scores: BTreeMap<String, Summary>,
}

/// What `score_stats.json` holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreStats {
    pub format: u32,
    pub unit: NllUnit,
    /// The weights summarised: "best" or "last", the step in their file's metadata, and an
    /// FNV-1a 64 checksum of that file, so stale statistics are recognised.
    pub checkpoint: String,
    pub weights_step: Option<i64>,
    pub weights_checksum: String,
    /// Measurement draws and seed.
    pub draws: i64,
    pub seed: i64,
    /// "test" (images) or "validation" (tabular).
    pub heldout_split: String,
    pub train: SplitStats,
    pub heldout: SplitStats,
}

/// How statistics are computed.
#[derive(Clone, Debug, PartialEq)]
pub struct StatsOptions {
    pub measure: MeasureOptions,
    /// At most this many training inputs (a seeded subset; 0 = all).
    pub max_train: usize,
}

impl Default for StatsOptions {
    fn default() -> Self {
        StatsOptions { measure: MeasureOptions::default(), max_train: 10_000 }
    }
}

fn split_stats(m: &Measurements, train_mean: f64) -> Result<SplitStats> {
    let mut scores = BTreeMap::new();
    for kind in ScoreKind::ALL {
        if kind == ScoreKind::Complexity && m.complexity.is_none() {
            continue;
        }
        let s = Summary::of(&m.score(kind, train_mean)?).with_context(|| format!("{} scores", kind.name()))?;
        scores.insert(kind.name().to_string(), s);
    }
    Ok(SplitStats { n: m.len(), scores })
}

impl ScoreStats {
    /// Statistics from measurements of the training and held-out splits (same options for
    /// both); the checkpoint fields are left empty for the caller.
    pub fn from_measurements(train: &Measurements, heldout: &Measurements, heldout_split: &str, opts: &MeasureOptions) -> Result<ScoreStats> {
        if train.unit != heldout.unit {
            bail!("training and held-out measurements are in different units");
        }
        let train_mean = Summary::of(&train.nll).context("training split")?.mean;
        Ok(ScoreStats {
            format: FORMAT,
            unit: train.unit,
            checkpoint: String::new(),
            weights_step: None,
            weights_checksum: String::new(),
            draws: opts.draws,
            seed: opts.seed,
            heldout_split: heldout_split.to_string(),
            train: split_stats(train, train_mean).context("training split")?,
            heldout: split_stats(heldout, train_mean).with_context(|| format!("{heldout_split} split"))?,
        })
    }

    /// The training split's mean negative log-likelihood (what typicality measures from).
    pub fn train_nll_mean(&self) -> Result<f64> {
        Ok(self.train.scores.get("nll").context("score statistics without nll")?.mean)
    }

    /// The held-out summary of one score kind.
    pub fn heldout_summary(&self, kind: ScoreKind) -> Result<&Summary> {
        self.heldout.scores.get(kind.name()).with_context(|| format!("the score statistics have no {} score (a tabular run has no complexity)", kind.name()))
    }

    /// The score above which an input is anomalous at false-positive rate `fpr` on the held-out
    /// split: its quantile at `1 − fpr`.
    pub fn threshold_at_fpr(&self, kind: ScoreKind, fpr: f64) -> Result<f64> {
        if !(fpr > 0.0 && fpr < 1.0) {
            bail!("the false-positive rate must be in (0, 1), got {fpr}");
        }
        Ok(self.heldout_summary(kind)?.quantile(1.0 - fpr))
    }

    /// `RUN/score_stats.json` for the best checkpoint, `RUN/score_stats_last.json` for the last.
    pub fn path(run: &RunDir, which: Checkpoint) -> PathBuf {
        run.path.join(match which {
            Checkpoint::Best => "score_stats.json",
            Checkpoint::Last => "score_stats_last.json",
        })
    }

    pub fn save(&self, run: &RunDir, which: Checkpoint) -> Result<()> {
        atomic_write_bytes(&Self::path(run, which), serde_json::to_string_pretty(self)?.as_bytes())
    }

    /// The saved statistics, `None` when the run has none; a damaged file is an error.
    pub fn load(run: &RunDir, which: Checkpoint) -> Result<Option<ScoreStats>> {
        let p = Self::path(run, which);
        if !p.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let s: ScoreStats = serde_json::from_str(&text).with_context(|| format!("{} is not a valid score statistics file", p.display()))?;
        if s.format != FORMAT {
            bail!("{}: format {} is not the {FORMAT} this flowzoo writes", p.display(), s.format);
        }
        for (split, st) in [("train", &s.train), ("heldout", &s.heldout)] {
            if let Some((name, _)) = st.scores.iter().find(|(_, v)| v.quantiles.len() != N_QUANTILES) {
                bail!("{}: {split}.{name} has {} quantiles, expected {N_QUANTILES}", p.display(), st.scores[name].quantiles.len());
            }
        }
        Ok(Some(s))
    }

    /// Records which weights of `run` these statistics describe (the file `which` names, as it
    /// is on disk now): call it after computing statistics with those weights loaded.
    pub fn stamp(&mut self, run: &RunDir, which: Checkpoint) -> Result<()> {
        let weights = run.checkpoint_path(which);
        let (_, meta) = crate::io::read_safetensors(&weights)?;
        self.checkpoint = match which {
            Checkpoint::Best => "best",
            Checkpoint::Last => "last",
        }
        .to_string();
        self.weights_step = meta.get("step").and_then(|s| s.parse().ok());
        self.weights_checksum = weights_checksum(&weights)?;
        Ok(())
    }

    /// Whether these statistics describe the run's current weights measured with `opts`.
    pub fn is_current(&self, run: &RunDir, which: Checkpoint, opts: &MeasureOptions) -> Result<bool> {
        Ok(self.weights_checksum == weights_checksum(&run.checkpoint_path(which))? && self.draws == opts.draws)
    }
}

/// FNV-1a 64 of a file, as 16 hex digits (stable across platforms and Rust versions).
fn weights_checksum(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3));
    Ok(format!("fnv1a64:{h:016x}"))
}

/// A seeded subset of at most `max` of `n` indices (all when `max` is 0 or not smaller).
fn subset(n: usize, max: usize, seed: u64) -> Option<Vec<i64>> {
    (max > 0 && max < n).then(|| {
        let mut idx = seeded_permutation(n, seed)[..max].to_vec();
        idx.sort();
        idx
    })
}

/// Statistics of an image model on its training and held-out (test) images.
pub fn stats_for_images(sess: &Session, train: &ImageSet, heldout: &ImageSet, opts: &StatsOptions) -> Result<ScoreStats> {
    let train_px = match subset(train.len() as usize, opts.max_train, opts.measure.seed as u64) {
        Some(idx) => train.images.f_index_select(0, &Tensor::f_from_slice(&idx)?.f_to_device(train.images.device())?)?,
        None => train.images.shallow_clone(),
    };
    if heldout.is_empty() {
        bail!("score statistics need held-out images (the run's test split is empty)");
    }
    let tr = measure_pixels(sess, &train_px, &opts.measure, &mut |_, _| {})?;
    let ho = measure_pixels(sess, &heldout.images, &opts.measure, &mut |_, _| {})?;
    ScoreStats::from_measurements(&tr, &ho, "test", &opts.measure)
}

/// Statistics of a tabular model on its training and held-out (validation) rows; `noise` is
/// the run's `data.uniform_noise`.
pub fn stats_for_rows(sess: &Session, train: &Tensor, heldout: &Tensor, noise: f64, opts: &StatsOptions) -> Result<ScoreStats> {
    let train = match subset(train.size()[0] as usize, opts.max_train, opts.measure.seed as u64) {
        Some(idx) => train.f_index_select(0, &Tensor::f_from_slice(&idx)?.f_to_device(train.device())?)?,
        None => train.shallow_clone(),
    };
    if heldout.size()[0] == 0 {
        bail!("score statistics need held-out rows (the run's validation split is empty: data.val_fraction = 0)");
    }
    let tr = measure_rows(sess, &train, noise, &opts.measure, &mut |_, _| {})?;
    let ho = measure_rows(sess, heldout, noise, &opts.measure, &mut |_, _| {})?;
    ScoreStats::from_measurements(&tr, &ho, "validation", &opts.measure)
}

/// Statistics of a run's `which` weights on the run's own data (`data.path` of its config,
/// split as the trainer splits it), with the checkpoint fields filled in. Not saved: see
/// [`ensure_stats`].
pub fn stats_for_run(run: &RunDir, which: Checkpoint, device: Device, opts: &StatsOptions) -> Result<ScoreStats> {
    let sess = Session::open(run, which, device)?;
    let cfg = &sess.cfg;
    let path = cfg.data_path().context("the run's own data, which its score statistics are computed on")?;
    let path = path.as_path();
    let mut stats = match cfg.data.kind {
        DataKind::Images => {
            let (train, test, _) = load_split(path, &cfg.data, cfg.train.seed)?;
            stats_for_images(&sess, &train, &test, opts)?
        }
        DataKind::Tabular => {
            let split = split_table(&load_table(path, &cfg.data)?, &cfg.data, cfg.train.seed)?;
            stats_for_rows(&sess, &split.train, &split.val, cfg.data.uniform_noise, opts)?
        }
    };
    stats.stamp(run, which)?;
    Ok(stats)
}

/// The run's saved statistics when they describe its current `which` weights measured with
/// `opts.measure`; otherwise computed on the run's data and saved.
pub fn ensure_stats(run: &RunDir, which: Checkpoint, device: Device, opts: &StatsOptions) -> Result<ScoreStats> {
    if let Some(s) = ScoreStats::load(run, which)? {
        if s.is_current(run, which, &opts.measure)? {
            return Ok(s);
        }
    }
    let s = stats_for_run(run, which, device, opts)
        .with_context(|| format!("computing the score statistics of {} (they are missing or stale)", run.path.display()))?;
    s.save(run, which)?;
    Ok(s)
}
