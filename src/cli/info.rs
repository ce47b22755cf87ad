//! `flowzoo info`: what a run directory holds.
use super::DEVICE_HELP;
use anyhow::Result;
use flowzoo::io::{Checkpoint, RunDir};
use flowzoo::session::Session;
use std::path::PathBuf;

/// Architecture, parameter count and training state of a run.
#[derive(clap::Args)]
pub struct InfoArgs {
    /// The run directory.
    #[arg(long)]
    model: PathBuf,
    /// Where to open the model (it is loaded to count and check its weights).
    #[arg(long, default_value = "auto", help = DEVICE_HELP)]
    device: String,
}

pub fn run(a: InfoArgs) -> Result<()> {
    let device = flowzoo::runtime::parse_device(&a.device)?;
    let run = RunDir::open(&a.model)?;
    let state = run.load_state()?;
    let sess = Session::open(&run, Checkpoint::Best, device)?;
    println!("{}", sess.model.describe());
    println!("parameters: {}", sess.parameter_count());
    println!("data: {} ({} classes: {})", sess.cfg.data.path, state.classes.len(), state.classes.join(" "));
    println!("steps: {} of {} ({:.1} s training, {} skipped)", state.step, sess.cfg.train.max_steps, state.train_seconds, state.skipped_steps);
    match (state.best_test_bpd, state.best_step) {
        (Some(b), Some(s)) => println!("best test bits/dim: {b:.4} at step {s}"),
        _ => println!("best test bits/dim: not evaluated yet"),
    }
    println!("opened on: {device:?}");
    Ok(())
}
