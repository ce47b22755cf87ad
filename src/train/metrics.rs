//! `metrics.csv`: one row per `train.log_every` steps (and at each evaluation), read back on
//! `--resume` (the rows after the checkpoint are dropped, the run rewrites them) and drawn as
//! `curves.png`. Written and read with the `csv` crate, so any column name or value (a comma,
//! a quote) round-trips; written atomically like the checkpoints.
use anyhow::{bail, Context, Result};
use std::path::Path;

/// A metrics table: named columns, rows of already formatted fields. The first column is the
/// step.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsLog {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl MetricsLog {
    /// The columns of an image run (losses in bits/dim). `allreduce_ms` and `comm_wait_ms`
    /// (distributed runs, empty in one process): per step, the gradient all-reduce's wall time
    /// and the communication the step waited for (see `parallel::DataParallel::take_comm_ms`).
    /// Then [`STEP_COLUMNS`](Self::STEP_COLUMNS).
    pub const IMAGE_COLUMNS: &'static [&'static str] = &[
        "step", "lr", "train_bpd", "grad_norm", "test_bpd", "steps_per_s", "elapsed_s", "skipped_steps", "allreduce_ms", "comm_wait_ms",
        "train_loss", "penalty", "nfe_forward", "nfe_backward", "eval_nfe",
    ];
    /// The columns of a tabular run (negative log-likelihoods in nats), then
    /// [`STEP_COLUMNS`](Self::STEP_COLUMNS).
    pub const TABULAR_COLUMNS: &'static [&'static str] = &[
        "step", "lr", "train_nll", "grad_norm", "val_nll", "steps_per_s", "elapsed_s", "skipped_steps", "allreduce_ms", "comm_wait_ms",
        "train_loss", "penalty", "nfe_forward", "nfe_backward", "eval_nfe",
    ];
    /// The last columns of both (added after the first runs were written; older files resume
    /// with them empty), per step averaged over the row's window: `train_loss`, the loss
    /// optimised (the objective plus the penalties; the flow-matching loss under
    /// `train.objective = "flow_matching"`, where `train_nll` stays empty); `penalty`, the
    /// layers' weighted regularisers (a continuous flow's kinetic energy and Jacobian norm);
    /// `nfe_forward` / `nfe_backward`, the ODE function evaluations of the step's solves and
    /// those its backward pass differentiates through; `eval_nfe`, function evaluations per
    /// scored batch at the row's evaluation. Empty where a model reports none.
    pub const STEP_COLUMNS: &'static [&'static str] = &["train_loss", "penalty", "nfe_forward", "nfe_backward", "eval_nfe"];

    pub fn new(columns: &[&str]) -> MetricsLog {
        MetricsLog { columns: columns.iter().map(|c| c.to_string()).collect(), rows: vec![] }
    }

    /// The rows of `path` up to step `upto` (none when the file does not exist yet). The file
    /// must have `columns`, or their first ones (written before the last columns were added:
    /// its rows get those fields empty); a row whose step is not a number is an error naming
    /// its line.
    pub fn read(path: &Path, columns: &[&str], upto: i64) -> Result<MetricsLog> {
        let mut log = MetricsLog::new(columns);
        if !path.exists() {
            return Ok(log);
        }
        let mut rdr = csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
        let header: Vec<String> = rdr.headers().with_context(|| format!("{}: line 1", path.display()))?.iter().map(str::to_string).collect();
        if header.is_empty() || header.len() > log.columns.len() || header[..] != log.columns[..header.len()] {
            bail!("{} has the columns {:?}, expected {:?}", path.display(), header, log.columns);
        }
        let missing = log.columns.len() - header.len();
        for (i, rec) in rdr.records().enumerate() {
            let line = i + 2;
            let rec = rec.with_context(|| format!("{}: line {line}", path.display()))?;
            let step: i64 = rec.get(0).unwrap_or("").parse().with_context(|| format!("{}: line {line}: the step {:?} is not a number", path.display(), rec.get(0).unwrap_or("")))?;
            if step <= upto {
                let mut row: Vec<String> = rec.iter().map(str::to_string).collect();
                row.extend(std::iter::repeat_n(String::new(), missing));
                log.push(row)?;
            }
        }
        Ok(log)
    }

    /// Appends a row (one field per column).
    pub fn push(&mut self, row: Vec<String>) -> Result<()> {
        if row.len() != self.columns.len() {
            bail!("internal error: a metrics row of {} fields for {} columns", row.len(), self.columns.len());
        }
        self.rows.push(row);
        Ok(())
    }

    /// Writes the whole table atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::io::atomic::atomic_write(path, |f| {
            let mut w = csv::Writer::from_writer(f);
            w.write_record(&self.columns)?;
            for r in &self.rows {
                w.write_record(r)?;
            }
            w.flush()?;
            Ok(())
        })
    }

    /// `(step, value)` of every row where the column holds a number (an empty field is a step
    /// without that measurement, e.g. no evaluation).
    pub fn curve(&self, column: &str) -> Vec<(f64, f64)> {
        let Some(j) = self.columns.iter().position(|c| c == column) else { return vec![] };
        self.rows
            .iter()
            .filter_map(|r| Some((r.first()?.parse::<f64>().ok()?, r.get(j)?.parse::<f64>().ok()?)))
            .collect()
    }
}

/// The training steps since the last metrics row: sums of what each step measured.
#[derive(Clone, Debug, Default)]
pub struct LogWindow {
    pub loss: f64,
    pub objective: f64,
    pub grad_norm: f64,
    /// Updates in the window (skipped steps are not averaged in).
    pub steps: i64,
    /// Sum and count of the steps that reported a penalty.
    pub penalty: (f64, i64),
    /// Sums of every counter, and the steps each was reported in.
    pub counters: std::collections::BTreeMap<String, (f64, i64)>,
}

impl LogWindow {
    /// Adds an updated step: its loss, gradient norm and what the layers reported.
    pub fn add(&mut self, loss: f64, grad_norm: f64, report: &super::StepReport) {
        self.loss += loss;
        self.grad_norm += grad_norm;
        self.objective += report.objective;
        self.steps += 1;
        if let Some(p) = report.penalty {
            self.penalty.0 += p;
            self.penalty.1 += 1;
        }
        for (k, v) in &report.counters {
            let e = self.counters.entry(k.clone()).or_insert((0.0, 0));
            e.0 += v;
            e.1 += 1;
        }
    }

    fn mean(sum: f64, n: i64) -> f64 {
        sum / n.max(1) as f64
    }
    pub fn mean_loss(&self) -> f64 {
        Self::mean(self.loss, self.steps)
    }
    pub fn mean_objective(&self) -> f64 {
        Self::mean(self.objective, self.steps)
    }
    pub fn mean_grad_norm(&self) -> f64 {
        Self::mean(self.grad_norm, self.steps)
    }
    /// The mean of a counter per step that reported it, `None` when none did.
    pub fn mean_counter(&self, name: &str) -> Option<f64> {
        self.counters.get(name).map(|(s, n)| Self::mean(*s, *n))
    }
    pub fn mean_penalty(&self) -> Option<f64> {
        (self.penalty.1 > 0).then(|| Self::mean(self.penalty.0, self.penalty.1))
    }

    /// The fields of [`MetricsLog::STEP_COLUMNS`] (`eval_nfe` from the row's evaluation).
    pub fn step_fields(&self, eval_nfe: Option<f64>) -> Vec<String> {
        let opt = |v: Option<f64>, digits: usize| v.map_or(String::new(), |v| format!("{v:.digits$}"));
        vec![
            format!("{:.6}", self.mean_loss()),
            opt(self.mean_penalty(), 6),
            opt(self.mean_counter("nfe_forward"), 1),
            opt(self.mean_counter("nfe_backward"), 1),
            opt(eval_nfe, 1),
        ]
    }

    /// ` | NFE 52+46 per step` for the progress bar, empty when no solver reported.
    pub fn nfe_message(&self) -> String {
        match (self.mean_counter("nfe_forward"), self.mean_counter("nfe_backward")) {
            (Some(f), Some(b)) => format!(" | NFE {f:.0}+{b:.0}"),
            (Some(f), None) => format!(" | NFE {f:.0}"),
            _ => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_commas_and_quotes_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.csv");
        let cols = ["step", "loss, nats", "say \"hi\""];
        let mut log = MetricsLog::new(&cols);
        log.push(vec!["1".into(), "0.5".into(), "a,b".into()]).unwrap();
        log.push(vec!["2".into(), "".into(), "c".into()]).unwrap();
        log.push(vec!["3".into(), "0.25".into(), "d".into()]).unwrap();
        log.write(&p).unwrap();
        let back = MetricsLog::read(&p, &cols, 2).unwrap();
        assert_eq!(back.columns, log.columns);
        assert_eq!(back.rows, log.rows[..2].to_vec());
        assert_eq!(MetricsLog::read(&p, &cols, 10).unwrap().curve("loss, nats"), vec![(1.0, 0.5), (3.0, 0.25)]);
        let e = format!("{:#}", MetricsLog::read(&p, &["step", "other"], 10).unwrap_err());
        assert!(e.contains("columns") && e.contains("other"), "{e}");
        assert!(log.clone().push(vec!["1".into()]).is_err());
        // A file from before the last column was added reads with that field empty.
        let newer = ["step", "loss, nats", "say \"hi\"", "added"];
        let back = MetricsLog::read(&p, &newer, 2).unwrap();
        assert_eq!(back.rows[0], vec!["1", "0.5", "a,b", ""]);
        assert!(MetricsLog::read(&p, &newer[..2], 2).is_err(), "a file with more columns than expected");
    }
}
