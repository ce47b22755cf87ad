//! `flowzoo export`: a run as a TorchScript module and/or plain PyTorch source.
use super::Which;
use anyhow::Result;
use std::path::PathBuf;

/// Export a trained run for PyTorch: a TorchScript module (torch.jit.load) and/or plain PyTorch
/// source (torch.export, torch.compile); forward, inverse, log_prob, sample, bits_per_dim;
/// trainable, flowzoo's parameter names.
#[derive(clap::Args)]
pub struct ExportArgs {
    /// The run directory.
    #[arg(long)]
    model: PathBuf,
    /// Where to write the TorchScript module (e.g. model.pt).
    #[arg(long)]
    torchscript: Option<PathBuf>,
    /// Also write the exported weights as safetensors (same names as the module's state_dict).
    #[arg(long)]
    safetensors: Option<PathBuf>,
    /// Write the model as plain PyTorch source into this folder (<kind>.py, weights.safetensors).
    #[arg(long, value_name = "DIR")]
    python: Option<PathBuf>,
    /// Which weights: the best checkpoint or the last.
    #[arg(long, value_enum, default_value = "best")]
    checkpoint: Which,
    /// Where the exported module is checked against the model (the files hold CPU tensors):
    /// auto | cpu | cuda | cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// FFJORD: the solver of the exported forward/inverse/log_prob/sample: dopri5 (adaptive,
    /// the run's eval tolerances), rk4 or euler [default: the config's model.cnf.eval_solver].
    /// The *_ode methods choose per call.
    #[arg(long, value_name = "NAME")]
    ode_solver: Option<String>,
    /// FFJORD: steps of a fixed-step solver (rk4, euler) [default: model.cnf.eval_steps].
    #[arg(long, value_name = "N")]
    ode_steps: Option<i64>,
    /// Test hook (see flowzoo::export::write_reference): inputs for the Rust model ...
    #[arg(long, hide = true)]
    reference_in: Option<PathBuf>,
    /// ... and where its outputs go.
    #[arg(long, hide = true)]
    reference_out: Option<PathBuf>,
}

pub fn run(a: ExportArgs) -> Result<()> {
    let opts = flowzoo::export::ExportOptions {
        checkpoint: a.checkpoint.into(),
        torchscript: a.torchscript,
        safetensors: a.safetensors,
        python: a.python,
        device: flowzoo::runtime::parse_device(&a.device)?,
        ode_solver: a.ode_solver,
        ode_steps: a.ode_steps,
        reference_in: a.reference_in,
        reference_out: a.reference_out,
    };
    for line in flowzoo::export::export_run(&a.model, &opts)? {
        println!("{line}");
    }
    Ok(())
}
