//! The run's score statistics (`score_stats.json`, see [`crate::score::stats`]), computed once
//! when training ends from the data already in memory, so `flowzoo score --threshold-fpr` and
//! `flowzoo ood` need no second pass over the data set.
use super::data::TrainData;
use crate::io::{Checkpoint, RunDir};
use crate::score::{stats_for_images, stats_for_rows, ScoreStats, StatsOptions};
use crate::session::Session;
use anyhow::Result;
use tch::Device;

/// Measures the run's best weights on its training subset and held-out split and saves the
/// statistics, unless the saved ones already describe those weights (a resume that changed
/// nothing). A failure is a warning, not an error: the weights are saved by then, and
/// `flowzoo score` / `flowzoo ood` compute the statistics on first use (where the same cause,
/// e.g. an empty held-out split, is then reported as an error).
pub(super) fn save_score_stats(run: &RunDir, data: &TrainData, device: Device, verbose: bool) {
    match compute_and_save(run, data, device) {
        Ok(Some(stats)) if verbose => eprintln!(
            "score statistics: {} train / {} {} inputs -> {}",
            stats.train.n,
            stats.heldout.n,
            stats.heldout_split,
            ScoreStats::path(run, Checkpoint::Best).display()
        ),
        Ok(_) => {}
        Err(e) => eprintln!("warning: score statistics not saved ({e:#}); `flowzoo score` and `flowzoo ood` will compute them on first use"),
    }
}

/// The statistics saved, or `None` when the saved ones were current.
fn compute_and_save(run: &RunDir, data: &TrainData, device: Device) -> Result<Option<ScoreStats>> {
    let opts = StatsOptions::default();
    if let Some(saved) = ScoreStats::load(run, Checkpoint::Best)? {
        if saved.is_current(run, Checkpoint::Best, &opts.measure)? {
            return Ok(None);
        }
    }
    let sess = Session::open(run, Checkpoint::Best, device)?;
    let mut stats = match data {
        TrainData::Images { train, test, .. } => stats_for_images(&sess, train, test, &opts)?,
        // Scores of p(x | context) need each row's context, which `flowzoo score` does not read.
        TrainData::Tabular { context: Some(_), .. } => return Ok(None),
        TrainData::Tabular { train, val, noise, context: None } => stats_for_rows(&sess, train, val, *noise, &opts)?,
    };
    stats.stamp(run, Checkpoint::Best)?;
    stats.save(run, Checkpoint::Best)?;
    Ok(Some(stats))
}
