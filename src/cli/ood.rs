//! `flowzoo ood`: how well each score tells out-of-distribution inputs from in-distribution ones.
use super::scoring::{ModelArgs, Progress};
use anyhow::Result;
use flowzoo::score::{ood_paths, ScoreKind};
use std::path::PathBuf;

/// AUROC, AUPRC and FPR at 95% TPR of every score, `--in` as negatives, `--ood` as positives.
#[derive(clap::Args)]
pub struct OodArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// In-distribution inputs (the negatives): images or a table file, as for `score --data`.
    #[arg(long = "in")]
    in_data: PathBuf,
    /// Out-of-distribution inputs (the positives): images or a table file.
    #[arg(long)]
    ood: PathBuf,
    /// Print one JSON object: {"n_in": N, "n_ood": M, "scores": {"nll": {"auroc", "auprc", "fpr95"}, ...}}.
    #[arg(long)]
    json: bool,
}

pub fn run(a: OodArgs) -> Result<()> {
    let s = a.model.open()?;
    let stats = if s.kinds.contains(&ScoreKind::Typicality) { Some(s.stats()?) } else { None };
    let mut progress = Progress::default();
    let report = ood_paths(&s.sess, &a.in_data, &a.ood, stats.as_ref(), &s.kinds, &s.measure, &mut |done, total| progress.update(done, total));
    progress.finish();
    let report = report?;
    if a.json {
        println!("{}", report.to_json_line()?);
    } else {
        println!("in-distribution: {} inputs of {}; out-of-distribution: {} inputs of {}", report.n_in, a.in_data.display(), report.n_ood, a.ood.display());
        print!("{}", report.table());
    }
    Ok(())
}
