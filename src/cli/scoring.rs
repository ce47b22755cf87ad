//! What `flowzoo score` and `flowzoo ood` share: the model and measurement flags, the run's
//! score statistics (read, or computed once and saved on first use), and a progress bar for
//! large inputs.
use super::{Which, DEVICE_HELP};
use anyhow::Result;
use flowzoo::io::{Checkpoint, RunDir};
use flowzoo::score::{ensure_stats, MeasureOptions, ScoreKind, ScoreStats, StatsOptions};
use flowzoo::session::Session;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

/// Inputs at least this many get a progress bar (on a terminal).
const BAR_FROM: usize = 1000;

#[derive(clap::Args)]
pub struct ModelArgs {
    /// The run directory whose model scores the inputs.
    #[arg(long)]
    pub model: PathBuf,
    /// Score kinds: nll, typicality, complexity (images only), a comma-separated list, or all.
    #[arg(long, default_value = "all")]
    pub score: String,
    /// Noise draws averaged per input (statistics for a count other than theirs are recomputed).
    #[arg(long, default_value_t = 1)]
    pub draws: i64,
    /// Inputs per forward pass.
    #[arg(long, default_value_t = 256)]
    pub batch: i64,
    /// Seed of the dequantisation noise.
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// Which weights: the best checkpoint or the last.
    #[arg(long, value_enum, default_value = "best")]
    pub checkpoint: Which,
    #[arg(long, default_value = "auto", help = DEVICE_HELP)]
    pub device: String,
}

/// An opened run with the choices of [`ModelArgs`], checked.
pub struct Scoring {
    pub run: RunDir,
    pub which: Checkpoint,
    pub device: tch::Device,
    pub sess: Session,
    pub kinds: Vec<ScoreKind>,
    pub measure: MeasureOptions,
}

impl ModelArgs {
    /// Checks the flags (before any model is loaded) and opens the run.
    pub fn open(&self) -> Result<Scoring> {
        if self.draws < 1 || self.batch < 1 {
            anyhow::bail!("--draws and --batch must be >= 1 (got {} and {})", self.draws, self.batch);
        }
        let device = flowzoo::runtime::parse_device(&self.device)?;
        let run = RunDir::open(&self.model)?;
        let which: Checkpoint = self.checkpoint.into();
        let sess = Session::open(&run, which, device)?;
        let kinds = ScoreKind::parse_list(&self.score, sess.is_tabular()).map_err(|e| anyhow::anyhow!("--score: {e:#}"))?;
        let measure = MeasureOptions { draws: self.draws, batch: self.batch, seed: self.seed };
        Ok(Scoring { run, which, device, sess, kinds, measure })
    }
}

impl Scoring {
    /// The run's score statistics for these weights and draws: the saved ones, or computed on
    /// the run's own data and saved (older and imported runs have none; another `--draws`
    /// needs its own).
    pub fn stats(&self) -> Result<ScoreStats> {
        let opts = StatsOptions { measure: self.measure.clone(), ..StatsOptions::default() };
        if let Some(saved) = ScoreStats::load(&self.run, self.which)? {
            if saved.is_current(&self.run, self.which, &opts.measure)? {
                return Ok(saved);
            }
        }
        eprintln!(
            "computing the score statistics of {} on its own data (once; saved as {})",
            self.run.path.display(),
            ScoreStats::path(&self.run, self.which).display()
        );
        ensure_stats(&self.run, self.which, self.device, &opts)
    }
}

/// A progress bar on stderr, shown once a pass has at least [`BAR_FROM`] inputs; a new pass
/// (its count restarting) starts the bar again.
#[derive(Default)]
pub struct Progress {
    bar: Option<ProgressBar>,
    last: usize,
}

impl Progress {
    pub fn update(&mut self, done: usize, total: usize) {
        if total < BAR_FROM {
            return;
        }
        if self.bar.is_none() || done < self.last {
            if let Some(b) = self.bar.take() {
                b.finish_and_clear();
            }
            let bar = ProgressBar::new(total as u64);
            bar.set_style(ProgressStyle::with_template("scoring {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}, {per_sec}]").expect("static template"));
            self.bar = Some(bar);
        }
        self.last = done;
        if let Some(b) = &self.bar {
            b.set_position(done as u64);
        }
    }

    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
