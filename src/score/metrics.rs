//! Detection metrics of an anomaly score: AUROC, average precision (AUPRC) and the false-positive
//! rate at 95% true-positive rate, with the out-of-distribution inputs as the positives and
//! higher scores meaning "more anomalous".
//!
//! Ties, exactly:
//! - **AUROC** is the Mann–Whitney statistic `P(s⁺ > s⁻) + ½·P(s⁺ = s⁻)` over all
//!   (positive, negative) pairs: a tie counts one half (midranks), as scikit-learn's
//!   `roc_auc_score` (the trapezoidal area under the ROC curve) does.
//! - **Average precision** is `Σₖ (Rₖ − Rₖ₋₁)·Pₖ` over the distinct score values `tₖ` taken as
//!   thresholds from the highest down (flag every input with score ≥ `tₖ`): all inputs tied at
//!   one value enter together, no interpolation, as scikit-learn's `average_precision_score`.
//! - **FPR at TPR** is the false-positive rate at the highest distinct threshold whose
//!   true-positive rate reaches the target (flag score ≥ t); a tie group is never split, so the
//!   TPR there may exceed the target. This is the smallest FPR on the ROC curve's vertices with
//!   TPR ≥ target, the usual FPR95 of the OOD literature (`fpr[searchsorted(tpr, 0.95)]`).
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// AUROC, AUPRC and FPR at 95% TPR of one score.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectionMetrics {
    pub auroc: f64,
    pub auprc: f64,
    pub fpr95: f64,
}

/// All three metrics; `negatives` are in-distribution scores, `positives` out-of-distribution.
pub fn detection_metrics(negatives: &[f64], positives: &[f64]) -> Result<DetectionMetrics> {
    Ok(DetectionMetrics {
        auroc: auroc(negatives, positives)?,
        auprc: average_precision(negatives, positives)?,
        fpr95: fpr_at_tpr(negatives, positives, 0.95)?,
    })
}

fn check(negatives: &[f64], positives: &[f64]) -> Result<()> {
    if negatives.is_empty() || positives.is_empty() {
        bail!("detection metrics need scores of both kinds: got {} in-distribution and {} out-of-distribution", negatives.len(), positives.len());
    }
    for (what, v) in [("in-distribution", negatives), ("out-of-distribution", positives)] {
        if let Some(i) = v.iter().position(|s| s.is_nan()) {
            bail!("{what} score {i} is NaN");
        }
    }
    Ok(())
}

/// Scores labelled (positive = true), sorted from the highest score down.
fn sorted_desc(negatives: &[f64], positives: &[f64]) -> Vec<(f64, bool)> {
    let mut all: Vec<(f64, bool)> = negatives.iter().map(|&s| (s, false)).chain(positives.iter().map(|&s| (s, true))).collect();
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    all
}

/// `(tp, fp)` after each group of tied scores, from the highest score down.
fn cumulative_counts(negatives: &[f64], positives: &[f64]) -> Vec<(usize, usize)> {
    let all = sorted_desc(negatives, positives);
    let mut out = vec![];
    let (mut tp, mut fp) = (0, 0);
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0 == all[i].0 {
            if all[j].1 {
                tp += 1;
            } else {
                fp += 1;
            }
            j += 1;
        }
        out.push((tp, fp));
        i = j;
    }
    out
}

/// Area under the ROC curve; ties count one half.
pub fn auroc(negatives: &[f64], positives: &[f64]) -> Result<f64> {
    check(negatives, positives)?;
    // Midranks (1-based, ascending) summed over the positives: the Mann–Whitney U statistic.
    let mut all = sorted_desc(negatives, positives);
    all.reverse();
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        let midrank = (i + 1 + j) as f64 / 2.0;
        rank_sum += midrank * all[i..j].iter().filter(|(_, p)| *p).count() as f64;
        i = j;
    }
    let (np, nn) = (positives.len() as f64, negatives.len() as f64);
    Ok((rank_sum - np * (np + 1.0) / 2.0) / (np * nn))
}

/// Average precision over the distinct thresholds (the area under the precision–recall steps).
pub fn average_precision(negatives: &[f64], positives: &[f64]) -> Result<f64> {
    check(negatives, positives)?;
    let np = positives.len() as f64;
    let mut ap = 0.0;
    let mut prev_recall = 0.0;
    for (tp, fp) in cumulative_counts(negatives, positives) {
        let recall = tp as f64 / np;
        ap += (recall - prev_recall) * tp as f64 / (tp + fp) as f64;
        prev_recall = recall;
    }
    Ok(ap)
}

/// False-positive rate at the first threshold (from the top) whose TPR reaches `tpr`.
pub fn fpr_at_tpr(negatives: &[f64], positives: &[f64], tpr: f64) -> Result<f64> {
    check(negatives, positives)?;
    if !(tpr > 0.0 && tpr <= 1.0) {
        bail!("the target true-positive rate must be in (0, 1], got {tpr}");
    }
    let (np, nn) = (positives.len() as f64, negatives.len() as f64);
    for (tp, fp) in cumulative_counts(negatives, positives) {
        // A relative tolerance so that e.g. 19 of 20 counts as 0.95.
        if tp as f64 / np >= tpr - 1e-12 {
            return Ok(fp as f64 / nn);
        }
    }
    // Not reached: the lowest threshold flags everything (TPR 1, FPR 1).
    Ok(1.0)
}
