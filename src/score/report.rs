//! Scoring what a user points at: a folder of images (or IDX files) or a table file, one row
//! per input sorted most anomalous first and written with the `csv` crate; and the detection
//! metrics of in-distribution against out-of-distribution inputs.
//!
//! Inputs are read by the same loaders as training ([`crate::data`]), with the run's
//! `data.image_size`, `channels` and `bad_images` (bad files skipped and counted, or an error),
//! or its columns and `bad_rows`. A folder with `train/` and `test/` is scored on `test/`, an
//! IDX folder with both parts on its `t10k-*` part, as `flowzoo eval` does; any other folder
//! whole.
use super::{detection_metrics, measure_pixels, measure_rows, DetectionMetrics, MeasureOptions, Measurements, NllUnit, ScoreKind, ScoreStats};
use crate::config::DataConfig;
use crate::data::idx::{load_part, IdxFolder, IdxPart};
use crate::data::tabular::load_table;
use crate::data::{load_image_files, ImageSet, LoadReport};
use crate::session::Session;
use anyhow::{bail, Context, Result};
use serde::ser::{SerializeMap, SerializeStruct};
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

/// Scores measurements (ids in the same order) against a run's statistics, sorted.
pub fn score_measurements(ids: Vec<String>, m: &Measurements, stats: &ScoreStats, opts: &ScoreOptions) -> Result<ScoreReport> {
    if ids.len() != m.len() {
        bail!("internal error: {} ids for {} measurements", ids.len(), m.len());
    }
    if opts.kinds.is_empty() {
        bail!("no score kinds chosen (use nll, typicality, complexity or all)");
    }
    if stats.unit != m.unit {
        bail!("the score statistics are in {}, the measurements in {}", stats.unit.as_str(), m.unit.as_str());
    }
    let mean = stats.train_nll_mean()?;
    let per_kind = opts.kinds.iter().map(|&k| m.score(k, mean)).collect::<Result<Vec<_>>>()?;
    let thresholds = match opts.threshold_fpr {
        Some(fpr) => Some((fpr, opts.kinds.iter().map(|&k| stats.threshold_at_fpr(k, fpr)).collect::<Result<Vec<_>>>()?)),
        None => None,
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

/// The images to score at `path` (see the module docs) and where each came from.
pub fn load_images_to_score(path: &Path, cfg: &DataConfig) -> Result<(ImageSet, LoadReport, Vec<String>)> {
    if path.is_file() {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.contains("idx3-ubyte") {
            bail!("{}: expected a folder of images or an IDX images file (*-idx3-ubyte[.gz])", path.display());
        }
        let labels = path.with_file_name(name.replace("images", "labels").replace("idx3", "idx1"));
        let part = IdxPart { images: path.to_path_buf(), labels: labels.is_file().then_some(labels) };
        let (set, sources) = load_part(&part, cfg, None)?;
        let n = sources.len();
        return Ok((set, LoadReport { loaded: n as usize, ..LoadReport::default() }, sources));
    }
    if let Some(IdxFolder { test: Some(test), .. }) = IdxFolder::find(path) {
        let (set, sources) = load_part(&test, cfg, None)?;
        let n = sources.len();
        return Ok((set, LoadReport { loaded: n as usize, ..LoadReport::default() }, sources));
    }
    let (train, test) = (path.join("train"), path.join("test"));
    let root = if train.is_dir() && test.is_dir() { test } else { path.to_path_buf() };
    load_image_files(&root, cfg, None)
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
struct MeasuredPath {
    m: Measurements,
    ids: Vec<String>,
    id_column: &'static str,
    skipped: Vec<(PathBuf, String)>,
    dropped_rows: usize,
}

/// Measures whatever is at `path` with the session's model: images (a folder, an IDX folder or
/// file) for an image model, a table file for a tabular one.
fn measure_path(sess: &Session, path: &Path, measure: &MeasureOptions, progress: &mut dyn FnMut(usize, usize)) -> Result<MeasuredPath> {
    if sess.is_tabular() {
        let (rows, ids, id_column, dropped_rows) = load_rows_to_score(sess, path)?;
        let m = measure_rows(sess, &rows, sess.cfg.data.uniform_noise, measure, progress)?;
        Ok(MeasuredPath { m, ids, id_column, skipped: vec![], dropped_rows })
    } else {
        let (set, report, ids) = load_images_to_score(path, &sess.cfg.data)?;
        let m = measure_pixels(sess, &set.images, measure, progress)?;
        Ok(MeasuredPath { m, ids, id_column: "path", skipped: report.skipped, dropped_rows: 0 })
    }
}

/// Scores every input at `path` against the run's statistics (see [`ensure_stats`](super::ensure_stats)).
pub fn score_path(sess: &Session, path: &Path, stats: &ScoreStats, opts: &ScoreOptions, progress: &mut dyn FnMut(usize, usize)) -> Result<ScoreReport> {
    let mp = measure_path(sess, path, &opts.measure, progress)?;
    let mut report = score_measurements(mp.ids, &mp.m, stats, opts)?;
    report.id_column = mp.id_column;
    report.skipped = mp.skipped;
    report.dropped_rows = mp.dropped_rows;
    Ok(report)
}

/// Detection metrics of each score kind, in-distribution inputs as negatives and
/// out-of-distribution inputs as positives. Serialises (`serde_json`) as exactly
/// `{"n_in": N, "n_ood": M, "scores": {"nll": {"auroc": a, "auprc": p, "fpr95": f}, ...}}`,
/// the kinds in the order asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct OodReport {
    pub n_in: usize,
    pub n_ood: usize,
    pub scores: Vec<(ScoreKind, DetectionMetrics)>,
}

impl serde::Serialize for OodReport {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        struct ByKind<'a>(&'a [(ScoreKind, DetectionMetrics)]);
        impl serde::Serialize for ByKind<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(self.0.len()))?;
                for (k, v) in self.0 {
                    m.serialize_entry(k.name(), v)?;
                }
                m.end()
            }
        }
        let mut st = s.serialize_struct("OodReport", 3)?;
        st.serialize_field("n_in", &self.n_in)?;
        st.serialize_field("n_ood", &self.n_ood)?;
        st.serialize_field("scores", &ByKind(&self.scores))?;
        st.end()
    }
}

/// The metrics of measured in-distribution and out-of-distribution inputs.
pub fn ood_report(stats: &ScoreStats, inliers: &Measurements, outliers: &Measurements, kinds: &[ScoreKind]) -> Result<OodReport> {
    let mean = stats.train_nll_mean()?;
    let scores = kinds
        .iter()
        .map(|&k| Ok((k, detection_metrics(&inliers.score(k, mean)?, &outliers.score(k, mean)?).with_context(|| format!("{} score", k.name()))?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(OodReport { n_in: inliers.len(), n_ood: outliers.len(), scores })
}

/// [`ood_report`] of the inputs at two paths (folders, IDX data or table files); `progress`
/// counts each path's inputs in turn (in-distribution first).
pub fn ood_paths(sess: &Session, in_path: &Path, ood_path: &Path, stats: &ScoreStats, kinds: &[ScoreKind], measure: &MeasureOptions, progress: &mut dyn FnMut(usize, usize)) -> Result<OodReport> {
    let inliers = measure_path(sess, in_path, measure, progress).with_context(|| format!("in-distribution data {}", in_path.display()))?;
    let outliers = measure_path(sess, ood_path, measure, progress).with_context(|| format!("out-of-distribution data {}", ood_path.display()))?;
    ood_report(stats, &inliers.m, &outliers.m, kinds)
}
