//! The command line, one file per subcommand: each holds its `#[derive(clap::Args)]` struct and
//! a `run` that calls the library and prints. Part of the binary only; the library
//! (`src/lib.rs`) knows nothing of it. A new subcommand is a new file here, a variant of
//! `Cmd` in `src/main.rs`, and its logic in the library (`flowzoo::jobs` or its own module).
//!
//! Device and precision flags are plain strings parsed in `run` (not by clap), so a bad value
//! is one `error: ...` line and exit status 1 like every other error, with the known values.
pub mod bench;
pub mod eval;
pub mod export;
pub mod fit;
pub mod import;
pub mod info;
pub mod ood;
pub mod sample;
pub mod score;
pub mod scoring;
pub mod toy;
pub mod train;

use flowzoo::io::Checkpoint;

/// `--checkpoint best|last`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Which {
    /// The best test (tabular: validation) checkpoint, or the last weights when there is none.
    Best,
    /// The last checkpoint's weights.
    Last,
}

impl From<Which> for Checkpoint {
    fn from(w: Which) -> Self {
        match w {
            Which::Best => Checkpoint::Best,
            Which::Last => Checkpoint::Last,
        }
    }
}

/// The help text of every `--device`.
pub const DEVICE_HELP: &str = "auto | cpu | cuda | cuda:N (auto: CUDA when libtorch sees a GPU, else the CPU)";
