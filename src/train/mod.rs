//! Training, split by job: one optimisation step and checkpoints (`step.rs`), the data and its
//! batch order (`data.rs`), the loop (`train_loop.rs`), the metrics file (`metrics.rs`), our own
//! Adam (`optim.rs`, its state is saved), the plots (`plot.rs`, and `plot_conditional.rs` for p(x | context)), the run's score statistics
//! saved when training ends (`score_stats.rs`) and data-parallel training across processes
//! (`parallel.rs`, over `crate::dist`).
mod data;
pub mod metrics;
pub mod optim;
pub mod parallel;
pub mod plot;
pub mod plot_conditional;
mod score_stats;
pub mod step;
pub mod train_loop;

pub use metrics::MetricsLog;
pub use optim::Adam;
pub use parallel::DataParallel;
pub use step::{StepOutcome, StepReport, Trainer};
pub use train_loop::{train, TrainOptions, TrainSummary};

/// The purpose tags of `crate::rng::derive_seed`: each random draw of a run has its own stream,
/// so adding a draw of one kind never shifts the others. Frozen: a resumed run and the shipped
/// model's checks depend on them.
pub(crate) mod streams {
    /// The permutation of the training rows in each epoch.
    pub const EPOCH_ORDER: u64 = 1;
    /// The rows of the data-dependent (ActNorm) initialisation batch.
    pub const INIT_BATCH: u64 = 2;
    /// The dequantisation noise of that batch.
    pub const INIT_NOISE: u64 = 3;
    /// The dequantisation noise of every evaluation.
    pub const EVAL: u64 = 4;
    /// The noise of the sample grids written during training.
    pub const SAMPLES: u64 = 5;
    /// The dequantisation noise of each step.
    pub const STEP_NOISE: u64 = 6;
    /// What a rank of a distributed run draws inside its step, after the shared batch noise
    /// (indexed by `step · world + rank`).
    pub const RANK_STEP: u64 = 7;
}
