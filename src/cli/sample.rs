//! `flowzoo sample`: samples of a run's model to a PNG grid or CSV rows.
use super::{Which, DEVICE_HELP};
use anyhow::Result;
use flowzoo::io::RunDir;
use flowzoo::jobs::inputs::read_tensor_spec;
use flowzoo::jobs::context::ContextArg;
use flowzoo::jobs::sample::{sample, SampleRequest};
use flowzoo::session::Session;
use std::path::PathBuf;

/// Write samples: a PNG grid of images, or CSV rows (a PNG scatter + density for 2-D data).
#[derive(clap::Args)]
pub struct SampleArgs {
    /// The run directory to sample from.
    #[arg(long)]
    model: PathBuf,
    /// Number of samples.
    #[arg(short, long, default_value_t = 64)]
    n: i64,
    /// Scales the standard deviation of every prior (0.7 gives cleaner images than 1).
    #[arg(long, default_value_t = 0.7)]
    temperature: f64,
    /// Seed of the noise.
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Class for a class-conditional model (default: cycle through the classes).
    #[arg(long)]
    label: Option<i64>,
    /// Output file: .png (images, 2-D tabular data) or .csv (tabular).
    #[arg(short, long, default_value = "samples.png")]
    output: PathBuf,
    /// Which weights: the best checkpoint or the last.
    #[arg(long, value_enum, default_value = "best")]
    checkpoint: Which,
    #[arg(long, default_value = "auto", help = DEVICE_HELP)]
    device: String,
    /// FILE.safetensors:KEY, standard-normal noise [N, D] in flowzoo's latent order to sample
    /// from (N replaces -n): x = inverse(temperature * eps).
    #[arg(long)]
    eps: Option<String>,
    /// Also write the raw model-space samples [N, C, H, W] to this safetensors file (key "x").
    #[arg(long)]
    raw_out: Option<PathBuf>,
    /// A conditional tabular model: the context of every sample, its columns' values separated
    /// by commas (e.g. --context 0.5,1.0; a label model: the label's value).
    #[arg(long, conflicts_with = "context_csv", allow_hyphen_values = true)]
    context: Option<String>,
    /// A conditional tabular model: one context per sample, the rows of this CSV file (a
    /// header naming the context columns, or exactly those columns); its rows replace -n
    /// (a PNG of 2-D data: -n samples at each of them).
    #[arg(long)]
    context_csv: Option<PathBuf>,
}

pub fn run(a: SampleArgs) -> Result<()> {
    let eps = a.eps.as_deref().map(|s| read_tensor_spec("--eps", s)).transpose()?;
    let device = flowzoo::runtime::parse_device(&a.device)?;
    let sess = Session::open(&RunDir::open(&a.model)?, a.checkpoint.into(), device)?;
    let req = SampleRequest {
        n: a.n,
        temperature: a.temperature,
        seed: a.seed,
        label: a.label,
        eps: eps.as_ref(),
        raw_out: a.raw_out.as_deref(),
        output: &a.output,
        context: match (&a.context, &a.context_csv) {
            (Some(v), _) => Some(ContextArg::Values(v)),
            (None, Some(p)) => Some(ContextArg::Csv(p)),
            (None, None) => None,
        },
    };
    let w = sample(&sess, &req)?;
    if w.with_density {
        println!("wrote {} samples and the learned density to {}", w.n, w.path.display());
    } else {
        println!("wrote {} samples at temperature {} to {}", w.n, a.temperature, w.path.display());
    }
    Ok(())
}
