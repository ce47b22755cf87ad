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
    let fitted = sess.cfg.train.objective == flowzoo::config::Objective::ReverseKl;
    if fitted {
        // A fit run has a target density, recorded with its SHA-256, instead of data.
        let target = std::fs::read_to_string(run.path.join("target.json")).unwrap_or_else(|_| "(no target.json)".into());
        println!("target: {} dimensions, {}", sess.model.dim(), target.split_whitespace().collect::<Vec<_>>().join(" "));
    } else {
        println!("data: {} ({} classes: {})", sess.cfg.data.path, state.classes.len(), state.classes.join(" "));
        if sess.is_tabular() && sess.is_conditional() {
            println!("conditional on {}", sess.conditioning_description());
        }
    }
    println!("steps: {} of {} ({:.1} s training, {} skipped)", state.step, sess.cfg.train.max_steps, state.train_seconds, state.skipped_steps);
    // state.json keeps "lower is better": bits/dim, validation NLL, or a fit's −ELBO.
    let what = if fitted { "evaluation ELBO (nats)" } else if sess.is_tabular() { "validation NLL (nats)" } else { "test bits/dim" };
    match (state.best_test_bpd, state.best_step) {
        (Some(b), Some(s)) => println!("best {what}: {:.4} at step {s}", if fitted { -b } else { b }),
        _ => println!("best {what}: not evaluated yet"),
    }
    println!("opened on: {device:?}");
    Ok(())
}
