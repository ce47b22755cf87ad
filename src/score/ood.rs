//! Out-of-distribution detection: the detection metrics of every score kind with
//! in-distribution inputs as the negatives and out-of-distribution inputs as the positives,
//! and the one-line JSON `flowzoo ood --json` prints.
use super::report::measure_path;
use super::{detection_metrics, DetectionMetrics, MeasureOptions, Measurements, ScoreKind, ScoreStats};
use crate::session::Session;
use anyhow::{bail, Context, Result};
use serde::ser::{SerializeMap, SerializeStruct};
use std::path::Path;

/// Detection metrics of each score kind. Serialises (`serde_json`) as
/// `{"n_in": N, "n_ood": M, "scores": {"nll": {"auroc": a, "auprc": p, "fpr95": f}, ...}}`,
/// the kinds in the order asked for; [`OodReport::to_json_line`] writes exactly that text.
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

/// serde_json's compact output with a space after every `:` and `,` (as Python's
/// `json.dumps` writes by default), so the line reads as the documented shape.
struct SpacedFormatter;

impl serde_json::ser::Formatter for SpacedFormatter {
    fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
    fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
}

impl OodReport {
    /// `{"n_in": N, "n_ood": M, "scores": {"nll": {"auroc": a, "auprc": p, "fpr95": f}, ...}}`
    /// on one line.
    pub fn to_json_line(&self) -> Result<String> {
        let mut out = vec![];
        serde::Serialize::serialize(self, &mut serde_json::Serializer::with_formatter(&mut out, SpacedFormatter))?;
        Ok(String::from_utf8(out)?)
    }

    /// A small table for a person: one line per score kind.
    pub fn table(&self) -> String {
        let mut s = format!("{:<12} {:>7} {:>7} {:>7}\n", "score", "AUROC", "AUPRC", "FPR95");
        for (k, m) in &self.scores {
            s += &format!("{:<12} {:>7.4} {:>7.4} {:>7.4}\n", k.name(), m.auroc, m.auprc, m.fpr95);
        }
        s
    }
}

/// The metrics of measured in-distribution and out-of-distribution inputs. `stats` (the run's,
/// for the training mean) may be `None` when `kinds` has no typicality.
pub fn ood_report(stats: Option<&ScoreStats>, inliers: &Measurements, outliers: &Measurements, kinds: &[ScoreKind]) -> Result<OodReport> {
    let mean = match stats {
        Some(s) => s.train_nll_mean()?,
        None if kinds.contains(&ScoreKind::Typicality) => bail!("the typicality score needs the run's score statistics"),
        None => f64::NAN,
    };
    let scores = kinds
        .iter()
        .map(|&k| Ok((k, detection_metrics(&inliers.score(k, mean)?, &outliers.score(k, mean)?).with_context(|| format!("{} score", k.name()))?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(OodReport { n_in: inliers.len(), n_ood: outliers.len(), scores })
}

/// [`ood_report`] of the inputs at two paths (folders, IDX data or table files); `progress`
/// counts each path's inputs in turn (in-distribution first).
pub fn ood_paths(
    sess: &Session,
    in_path: &Path,
    ood_path: &Path,
    stats: Option<&ScoreStats>,
    kinds: &[ScoreKind],
    measure: &MeasureOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<OodReport> {
    let inliers = measure_path(sess, in_path, measure, progress).with_context(|| format!("in-distribution data {}", in_path.display()))?;
    let outliers = measure_path(sess, ood_path, measure, progress).with_context(|| format!("out-of-distribution data {}", ood_path.display()))?;
    ood_report(stats, &inliers.m, &outliers.m, kinds)
}
