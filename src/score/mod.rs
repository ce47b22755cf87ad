//! Anomaly and out-of-distribution scores from exact likelihoods, and their detection metrics.
//!
//! A flow trained on one image set can give *higher* likelihood to simpler images it has never
//! seen (Nalisnick et al. 2019, "Do deep generative models know what they don't know?"), so the
//! raw negative log-likelihood is one score among three; every score is "higher = more
//! anomalous":
//! - [`ScoreKind::Nll`]: bits/dim (images) or `−log p(x)` in nats (rows);
//! - [`ScoreKind::Typicality`]: `|nll − mean training nll|`, Nalisnick et al. 2019's
//!   typicality test ("Detecting out-of-distribution inputs to deep generative models using
//!   typicality") per input; [`batch_typicality`] for batches;
//! - [`ScoreKind::Complexity`]: `nll − L(x)`, bits/dim minus the input's PNG code length per
//!   dimension (Serrà et al. 2020; see [`complexity`]). Images only: a table row's bytes have
//!   no meaningful compressed length, so asking for it on a tabular run is an error and
//!   [`ScoreKind::parse_list`]'s `all` leaves it out there.
//!
//! The flow: [`measure_pixels`] / [`measure_rows`] run the model once per input
//! ([`Measurements`]); [`Measurements::score`] derives each kind; [`ScoreStats`] (saved in the
//! run directory by [`ensure_stats`] or after training) supplies the training mean and the
//! thresholds; [`detection_metrics`] compares in-distribution with out-of-distribution scores;
//! [`score_path`] and [`ood_paths`] do all of it for a folder or a table file.
pub mod complexity;
pub mod measure;
pub mod metrics;
pub mod ood;
pub mod report;
pub mod stats;

pub use complexity::png_complexity;
pub use measure::{batch_typicality, measure_pixels, measure_rows, MeasureOptions, Measurements, NllUnit};
pub use metrics::{auroc, average_precision, detection_metrics, fpr_at_tpr, DetectionMetrics};
pub use ood::{ood_paths, ood_report, OodReport};
pub use report::{score_measurements, score_path, ScoreOptions, ScoreReport, ScoredInput};
pub use stats::{ensure_stats, stats_for_images, stats_for_rows, stats_for_run, ScoreStats, SplitStats, StatsOptions, Summary};

use anyhow::{bail, Result};

/// One kind of anomaly score.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScoreKind {
    Nll,
    Typicality,
    Complexity,
}

impl ScoreKind {
    /// Every kind, in the order reports list them.
    pub const ALL: [ScoreKind; 3] = [ScoreKind::Nll, ScoreKind::Typicality, ScoreKind::Complexity];

    pub fn name(self) -> &'static str {
        match self {
            ScoreKind::Nll => "nll",
            ScoreKind::Typicality => "typicality",
            ScoreKind::Complexity => "complexity",
        }
    }

    /// A comma-separated list of kinds (`nll,complexity`) or `all`: every kind, without
    /// `complexity` for a tabular run. Naming `complexity` for a tabular run is an error.
    pub fn parse_list(list: &str, tabular: bool) -> Result<Vec<ScoreKind>> {
        let mut out = vec![];
        for item in list.split(',').map(str::trim) {
            let kinds: Vec<ScoreKind> = match item {
                "all" => ScoreKind::ALL.into_iter().filter(|k| !(tabular && *k == ScoreKind::Complexity)).collect(),
                _ => vec![item.parse()?],
            };
            for k in kinds {
                if tabular && k == ScoreKind::Complexity {
                    bail!("the complexity score is for images: a table row's bytes have no meaningful compressed length (use nll, typicality or all)");
                }
                if !out.contains(&k) {
                    out.push(k);
                }
            }
        }
        Ok(out)
    }
}

impl std::str::FromStr for ScoreKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        ScoreKind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| anyhow::anyhow!("unknown score {s:?}: use nll, typicality, complexity or all"))
    }
}

impl std::fmt::Display for ScoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
