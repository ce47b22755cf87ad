//! Scoring what a user points at: a folder of images (or IDX files) or a table file, one row
//! per input sorted most anomalous first and written with the `csv` crate.
//!
//! Inputs are read by the same loaders as training ([`crate::data`]), with the run's
//! `data.image_size`, `channels` and `bad_images` (bad files skipped and counted, or an error),
//! or its columns and `bad_rows`. Which images of a path are scored is
//! [`crate::data::load_evaluation_images`]'s rule, shared with `flowzoo eval`: a folder with
//! `train/` and `test/` is scored on `test/`, an IDX folder with both parts on its `t10k-*`
//! part, any other folder whole, an IDX file or one image file as it is.
use super::{measure_pixels, measure_rows, MeasureOptions, Measurements, NllUnit, ScoreKind, ScoreStats};
use crate::data::load_evaluation_images;
use crate::data::tabular::load_table;
use crate::session::Session;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// What to score and how.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoreOptions {
    pub measure: MeasureOptions,
    /// Score kinds, in column order; the first sorts the report.
    pub kinds: Vec<ScoreKind>,
    /// Mark each input as anomalous or not at this false-positive rate on the run's held-out
    /// split (`--threshold-fpr 0.05`).
    pub threshold_fpr: Option<f64>,
}

/// One scored input.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoredInput {
    /// The file's path, `FILE#INDEX` for an image of an IDX file, or the row's line number
    /// (CSV; its 0-based index for `.npy`/`.npz`).
    pub id: String,
    /// bits/dim (images) or `−log p` in nats (rows).
    pub nll: f64,
    /// Log-density in nats.
    pub log_prob: f64,
    /// `L(x)` in bits/dim (images).
    pub complexity: Option<f64>,
    /// One per [`ScoreReport::kinds`].
    pub scores: Vec<f64>,
    /// One per kind when a threshold was asked for, else empty.
    pub anomalous: Vec<bool>,
}

/// Every input's scores, most anomalous first (by the first kind; ties keep input order).
#[derive(Clone, Debug, PartialEq)]
pub struct ScoreReport {
    pub unit: NllUnit,
    /// "path" (images), "line" (CSV) or "row" (`.npy`/`.npz`).
    pub id_column: &'static str,
    pub kinds: Vec<ScoreKind>,
    /// The false-positive rate and the threshold of each kind, when asked for.
    pub thresholds: Option<(f64, Vec<f64>)>,
    pub inputs: Vec<ScoredInput>,
    /// Bad image files skipped (`data.bad_images = "skip"`), with why.
    pub skipped: Vec<(PathBuf, String)>,
    /// Bad table rows dropped (`data.bad_rows = "drop"`).
    pub dropped_rows: usize,
}

impl ScoreOptions {
    /// Whether scoring needs the run's score statistics: typicality (the training mean) and
    /// thresholds (the held-out quantiles) do, the raw nll and the complexity score do not.
    pub fn needs_stats(&self) -> bool {
        self.threshold_fpr.is_some() || self.kinds.contains(&ScoreKind::Typicality)
    }
}

/// Scores measurements (ids in the same order) against a run's statistics, sorted. `stats`
/// may be `None` when [`ScoreOptions::needs_stats`] says they are not needed.
pub fn score_measurements(ids: Vec<String>, m: &Measurements, stats: Option<&ScoreStats>, opts: &ScoreOptions) -> Result<ScoreReport> {
    if ids.len() != m.len() {
        bail!("internal error: {} ids for {} measurements", ids.len(), m.len());
    }
    if opts.kinds.is_empty() {
        bail!("no score kinds chosen (use nll, typicality, complexity or all)");
    }
    let mean = match stats {
        Some(stats) => {
            if stats.unit != m.unit {
                bail!("the score statistics are in {}, the measurements in {}", stats.unit.as_str(), m.unit.as_str());
            }
            stats.train_nll_mean()?
        }
        None if opts.needs_stats() => bail!("typicality scores and thresholds need the run's score statistics"),
        // Not read by nll and complexity.
        None => f64::NAN,
    };
    let per_kind = opts.kinds.iter().map(|&k| m.score(k, mean)).collect::<Result<Vec<_>>>()?;
    let thresholds = match (opts.threshold_fpr, stats) {
        (Some(fpr), Some(stats)) => Some((fpr, opts.kinds.iter().map(|&k| stats.threshold_at_fpr(k, fpr)).collect::<Result<Vec<_>>>()?)),
        _ => None,
    };
    let mut inputs: Vec<ScoredInput> = ids
        .into_iter()
        .enumerate()
        .map(|(i, id)| {
            let scores: Vec<f64> = per_kind.iter().map(|s| s[i]).collect();
            let anomalous = thresholds.as_ref().map_or(vec![], |(_, t)| scores.iter().zip(t).map(|(s, t)| s > t).collect());
            ScoredInput { id, nll: m.nll[i], log_prob: m.log_prob[i], complexity: m.complexity.as_ref().map(|c| c[i]), scores, anomalous }
        })
        .collect();
    inputs.sort_by(|a, b| b.scores[0].total_cmp(&a.scores[0]));
    let id_column = if m.unit == NllUnit::BitsPerDim { "path" } else { "line" };
    Ok(ScoreReport { unit: m.unit, id_column, kinds: opts.kinds.clone(), thresholds, inputs, skipped: vec![], dropped_rows: 0 })
}

impl ScoreReport {
    /// The report as CSV: the id column; `bits_per_dim` (images) or `log_likelihood` (rows,
    /// nats); one column per score kind; `input_complexity` (`L(x)`, bits/dim) with the
    /// complexity score; `anomalous_<kind>` (true/false) with a threshold.
    pub fn write_csv<W: std::io::Write>(&self, out: W) -> Result<()> {
        let mut w = csv::Writer::from_writer(out);
        let with_l = self.kinds.contains(&ScoreKind::Complexity);
        let mut header = vec![self.id_column.to_string(), if self.unit == NllUnit::BitsPerDim { "bits_per_dim" } else { "log_likelihood" }.to_string()];
        header.extend(self.kinds.iter().map(|k| k.name().to_string()));
        if with_l {
            header.push("input_complexity".into());
        }
        if self.thresholds.is_some() {
            header.extend(self.kinds.iter().map(|k| format!("anomalous_{}", k.name())));
        }
        w.write_record(&header)?;
        for r in &self.inputs {
            let first = if self.unit == NllUnit::BitsPerDim { r.nll } else { r.log_prob };
            let mut rec = vec![r.id.clone(), format!("{first:.6}")];
            rec.extend(r.scores.iter().map(|s| format!("{s:.6}")));
            if with_l {
                rec.push(r.complexity.map_or(String::new(), |c| format!("{c:.6}")));
            }
            rec.extend(r.anomalous.iter().map(|a| a.to_string()));
            w.write_record(&rec)?;
        }
        w.flush()?;
        Ok(())
    }

    /// [`write_csv`](Self::write_csv) into a file, atomically.
    pub fn write_csv_file(&self, path: &Path) -> Result<()> {
        crate::io::atomic_write(path, |f| self.write_csv(f)).with_context(|| format!("writing {}", path.display()))
    }
}

/// The rows to score in a table file, their ids, the id column's name and the rows dropped.
fn load_rows_to_score(sess: &Session, path: &Path) -> Result<(Tensor, Vec<String>, &'static str, usize)> {
    let mut c = sess.cfg.data.clone();
    c.columns = sess.columns.clone();
    c.header = crate::config::Header::Auto;
    let t = load_table(path, &c)?;
    let n = t.rows.size()[0] as usize;
    let (ids, col) = match &t.lines {
        Some(lines) => (lines.iter().map(|l| l.to_string()).collect(), "line"),
        None => ((0..n).map(|i| i.to_string()).collect(), "row"),
    };
    Ok((t.rows, ids, col, t.dropped))
}

/// The inputs at a path, measured, with what the loader reported.
pub(super) struct MeasuredPath {
    pub m: Measurements,
    pub ids: Vec<String>,
    pub id_column: &'static str,
    pub skipped: Vec<(PathBuf, String)>,
    pub dropped_rows: usize,
}

/// Measures whatever is at `path` with the session's model: images (a folder, an IDX folder or
/// file) for an image model, a table file for a tabular one.
pub(super) fn measure_path(sess: &Session, path: &Path, measure: &MeasureOptions, progress: &mut dyn FnMut(usize, usize)) -> Result<MeasuredPath> {
    if sess.is_tabular() {
        let (rows, ids, id_column, dropped_rows) = load_rows_to_score(sess, path)?;
        let m = measure_rows(sess, &rows, sess.cfg.data.uniform_noise, measure, progress)?;
        Ok(MeasuredPath { m, ids, id_column, skipped: vec![], dropped_rows })
    } else {
        let (set, report, ids, _) = load_evaluation_images(path, &sess.cfg.data, None)?;
        let m = measure_pixels(sess, &set.images, measure, progress)?;
        Ok(MeasuredPath { m, ids, id_column: "path", skipped: report.skipped, dropped_rows: 0 })
    }
}

/// Scores every input at `path` against the run's statistics (see
/// [`ensure_stats`](super::ensure_stats); `None` when [`ScoreOptions::needs_stats`] is false).
pub fn score_path(sess: &Session, path: &Path, stats: Option<&ScoreStats>, opts: &ScoreOptions, progress: &mut dyn FnMut(usize, usize)) -> Result<ScoreReport> {
    let mp = measure_path(sess, path, &opts.measure, progress)?;
    let mut report = score_measurements(mp.ids, &mp.m, stats, opts)?;
    report.id_column = mp.id_column;
    report.skipped = mp.skipped;
    report.dropped_rows = mp.dropped_rows;
    Ok(report)
}
