//! `flowzoo score`: every input at a path scored, most anomalous first, as CSV.
use super::scoring::{ModelArgs, Progress};
use anyhow::{bail, Result};
use flowzoo::score::{score_path, ScoreOptions, ScoreReport};
use std::path::PathBuf;

/// Anomaly scores of every image (or table row) at a path, most anomalous first, as CSV.
#[derive(clap::Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Images (a folder, an IDX folder or file, one image) or a table file with the run's columns.
    #[arg(long)]
    data: PathBuf,
    /// Write the CSV here (atomically) instead of to stdout.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Mark each input anomalous at this false-positive rate on the run's held-out split, in (0, 1).
    #[arg(long)]
    threshold_fpr: Option<f64>,
}

pub fn run(a: ScoreArgs) -> Result<()> {
    if let Some(fpr) = a.threshold_fpr {
        if !(fpr > 0.0 && fpr < 1.0) {
            bail!("--threshold-fpr must be in (0, 1), got {fpr}");
        }
    }
    let s = a.model.open()?;
    let opts = ScoreOptions { measure: s.measure.clone(), kinds: s.kinds.clone(), threshold_fpr: a.threshold_fpr };
    let stats = if opts.needs_stats() { Some(s.stats()?) } else { None };
    let mut progress = Progress::default();
    let report = score_path(&s.sess, &a.data, stats.as_ref(), &opts, &mut |done, total| progress.update(done, total));
    progress.finish();
    let report = report?;
    match &a.output {
        Some(path) => report.write_csv_file(path)?,
        None => report.write_csv(std::io::stdout().lock())?,
    }
    eprintln!("{}", summary(&report, &a));
    Ok(())
}

/// What was scored, for stderr: counts, skipped inputs, the sort key and the thresholds.
fn summary(r: &ScoreReport, a: &ScoreArgs) -> String {
    let what = if r.id_column == "path" { "images" } else { "rows" };
    let mut s = format!("scored {} {what} of {}", r.inputs.len(), a.data.display());
    if !r.skipped.is_empty() {
        s += &format!(", {} bad files skipped", r.skipped.len());
    }
    if r.dropped_rows > 0 {
        s += &format!(", {} bad rows dropped", r.dropped_rows);
    }
    s += &format!("; most anomalous first by {}", r.kinds[0]);
    if let Some(out) = &a.output {
        s += &format!(" -> {}", out.display());
    }
    if let Some((fpr, thresholds)) = &r.thresholds {
        let flagged: Vec<String> = r
            .kinds
            .iter()
            .zip(thresholds)
            .enumerate()
            .map(|(k, (kind, t))| format!("{kind} > {t:.4}: {}", r.inputs.iter().filter(|i| i.anomalous[k]).count()))
            .collect();
        s += &format!("\nanomalous at a false-positive rate of {fpr} on the held-out split: {}", flagged.join(", "));
    }
    s
}
