//! `flowzoo eval`: scores of a run's model, as one line or one JSON object on stdout.
use super::{Which, DEVICE_HELP};
use anyhow::{bail, Result};
use flowzoo::config::Objective;
use flowzoo::io::RunDir;
use flowzoo::jobs::eval::{evaluate, EvalOptions};
use flowzoo::session::Session;
use std::path::PathBuf;

/// Bits/dim and log-likelihood of test images, or log-likelihood of test rows (or of given
/// tensors / CSV rows).
#[derive(clap::Args)]
pub struct EvalArgs {
    /// The run directory to evaluate.
    #[arg(long)]
    model: PathBuf,
    /// Images (a folder: its test/ when it has train/ and test/, else all of it; an IDX
    /// folder: its test part; an IDX file; one image), or a tabular file with the run's columns.
    #[arg(long)]
    data: Option<PathBuf>,
    /// FILE.safetensors:KEY, a [N, C, H, W] tensor already in model space, or [N, D] rows
    /// for a tabular model (no noise added).
    #[arg(long)]
    tensors: Option<String>,
    /// Tabular models: rows of a CSV file (the run's columns), evaluated as given.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Dequantisation draws averaged per image (or per row, with data.uniform_noise).
    #[arg(long, default_value_t = 1)]
    draws: i64,
    /// Seed of the dequantisation noise.
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Images (or rows) per forward pass.
    #[arg(long, default_value_t = 256)]
    batch: i64,
    /// Which weights: the best checkpoint or the last.
    #[arg(long, value_enum, default_value = "best")]
    checkpoint: Which,
    #[arg(long, default_value = "auto", help = DEVICE_HELP)]
    device: String,
    /// fp32 | tf32 | bf16 (the coupling networks' convs; log-dets and priors stay float32).
    #[arg(long, default_value = "fp32")]
    precision: String,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// A run made by `flowzoo fit`: its target (TorchScript module with log_prob). Reports the
    /// ELBO, the importance-sampling estimate of log Z with its standard error, and the ESS.
    #[arg(long)]
    target: Option<PathBuf>,
    /// With --target: draws from the flow.
    #[arg(long, default_value_t = 100_000)]
    n: i64,
    /// A VAE: posterior draws per image of the importance-weighted bound (and of the ELBO).
    #[arg(long, default_value_t = 1000)]
    k: i64,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let precision = a.precision.parse()?;
    flowzoo::runtime::apply_precision(precision)?;
    let device = flowzoo::runtime::parse_device(&a.device)?;
    let mut sess = Session::open(&RunDir::open(&a.model)?, a.checkpoint.into(), device)?;
    sess.compute_kind = flowzoo::runtime::compute_kind(precision);
    let fitted = sess.cfg.train.objective == Objective::ReverseKl;
    match (&a.target, fitted) {
        (Some(t), true) => return eval_fit(&sess, t, &a),
        (Some(_), false) => bail!("--target is for runs made by `flowzoo fit`; {} was trained on data (drop --target)", a.model.display()),
        (None, true) => bail!("{} was fitted to a target density by `flowzoo fit`: pass --target FILE.pt (the same module) to evaluate it", a.model.display()),
        (None, false) => {}
    }
    if sess.model.latent_variable().is_some() {
        return eval_bound(&sess, &a);
    }
    let opts = EvalOptions {
        data: a.data.as_deref(),
        tensors: a.tensors.as_deref(),
        csv: a.csv.as_deref(),
        draws: a.draws,
        seed: a.seed,
        batch: a.batch,
    };
    let report = evaluate(&sess, &opts)?;
    if a.json {
        println!("{}", report.to_json());
    } else {
        println!("{}", report.summary());
    }
    Ok(())
}

/// `eval --target`: the ELBO, log Z ± its standard error and the ESS fraction of a fit run.
fn eval_fit(sess: &Session, target: &std::path::Path, a: &EvalArgs) -> Result<()> {
    let t = flowzoo::vi::ScriptTarget::load(target, sess.device())?;
    let e = flowzoo::vi::evaluate_fit(sess, &t, a.n, a.seed)?;
    if e.excluded > 0 {
        eprintln!("note: {} of {} draws left out (the target was NaN or +inf there)", e.excluded, e.excluded + e.n);
    }
    if e.zero_weight > 0 {
        eprintln!("note: the target was -inf (weight 0) at {} of {} draws; they count in log Z and not in the ELBO's mean", e.zero_weight, e.n);
    }
    if a.json {
        println!("{}", e.to_json_line());
    } else {
        println!(
            "{}: {} draws, ELBO {:.4} nats, log Z {:.4} ± {:.4} (importance sampling), ESS {:.1}% of the draws",
            target.display(),
            e.n,
            e.elbo,
            e.log_z,
            e.log_z_stderr,
            100.0 * e.ess_fraction
        );
    }
    Ok(())
}

/// `eval` of a VAE: test ELBO and importance-weighted bound, nats and bits/dim.
fn eval_bound(sess: &Session, a: &EvalArgs) -> Result<()> {
    if a.tensors.is_some() || a.csv.is_some() {
        bail!("a VAE is evaluated on images: use --data DIR or the run's own test split");
    }
    let (images, _, what) = flowzoo::jobs::eval::eval_images(sess, a.data.as_deref())?;
    let r = flowzoo::jobs::vae::bound_report(sess, &images, a.k, a.batch, a.seed)?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{what}: {} images, k = {}: ELBO {:.4} nats ({:.4} bits/dim), importance-weighted bound {:.4} nats ({:.4} bits/dim), gap {:.4} nats",
            r.n, r.k, r.elbo_nats, r.elbo_bpd, r.iw_bound_nats, r.iw_bound_bpd, r.gap_nats
        );
    }
    Ok(())
}
