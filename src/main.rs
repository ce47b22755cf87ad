//! The flowzoo command line: parse, call the library, print. Errors are one clear message on
//! stderr and exit status 1, never a panic.
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use flowzoo::config::Config;
use flowzoo::data::{load_image_folder, load_split};
use flowzoo::io::{png::save_grid, read_safetensors, Checkpoint, RunDir};
use flowzoo::train::{resolve_device, train, Session, TrainOptions};
use std::path::{Path, PathBuf};
use tch::Tensor;

#[derive(Parser)]
#[command(name = "flowzoo", version, about = "Normalizing flows with exact likelihoods, on libtorch")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Which {
    Best,
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

#[derive(Subcommand)]
enum Cmd {
    /// Train a model on a folder of images.
    Train {
        /// TOML config (not needed with --resume: the run's own config.toml is used).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data folder (overrides data.path).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Run directory (default: runs/<config name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// auto | cpu | cuda | cuda:N (overrides train.device).
        #[arg(long)]
        device: Option<String>,
        /// Continue the run in --out from its last checkpoint.
        #[arg(long)]
        resume: bool,
        /// Override any config key, e.g. --set train.lr=1e-4 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// No progress output.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Bits/dim and log-likelihood of test images (or of given tensors).
    Eval {
        #[arg(long)]
        model: PathBuf,
        /// A folder of images: its test/ when it has train/ and test/, else all of it.
        #[arg(long)]
        data: Option<PathBuf>,
        /// FILE.safetensors:KEY, a [N, C, H, W] tensor already in model space (no noise added).
        #[arg(long)]
        tensors: Option<String>,
        /// Dequantisation draws averaged per image.
        #[arg(long, default_value_t = 1)]
        draws: i64,
        #[arg(long, default_value_t = 0)]
        seed: i64,
        #[arg(long, default_value_t = 256)]
        batch: i64,
        #[arg(long, value_enum, default_value = "best")]
        checkpoint: Which,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Write a grid of samples as PNG.
    Sample {
        #[arg(long)]
        model: PathBuf,
        #[arg(short, long, default_value_t = 64)]
        n: i64,
        #[arg(long, default_value_t = 0.7)]
        temperature: f64,
        #[arg(long, default_value_t = 0)]
        seed: i64,
        /// Class for a class-conditional model (default: cycle through the classes).
        #[arg(long)]
        label: Option<i64>,
        #[arg(short, long, default_value = "samples.png")]
        output: PathBuf,
        #[arg(long, value_enum, default_value = "best")]
        checkpoint: Which,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Architecture, parameter count and training state of a run.
    Info {
        #[arg(long)]
        model: PathBuf,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Train { config, data, out, device, resume, set, quiet } => {
            let (mut cfg, out) = if resume {
                let out = out.context("--resume needs --out RUN_DIR (the run to continue)")?;
                let run = RunDir::open(&out)?;
                let mut cfg = run.load_config()?;
                if let Some(c) = &config {
                    let given = Config::load(c)?;
                    if given.model != cfg.model || given.data != cfg.data {
                        bail!("--resume: {} describes another model or data than {}; resume with the run's own config (drop --config) or start a new run", c.display(), run.config_path().display());
                    }
                    cfg.train = given.train;
                }
                (cfg, out)
            } else {
                let c = config.context("train needs --config FILE (e.g. configs/glow_digits.toml)")?;
                let cfg = Config::load(&c)?;
                let stem = c.file_stem().and_then(|s| s.to_str()).unwrap_or("run").to_string();
                (cfg, out.unwrap_or_else(|| PathBuf::from("runs").join(stem)))
            };
            cfg = cfg.with_overrides(&set)?;
            if let Some(d) = data {
                cfg.data.path = d.display().to_string();
            }
            if let Some(d) = device {
                cfg.train.device = d;
            }
            cfg.validate()?;
            let device = resolve_device(&cfg.train.device)?;
            let s = train(&cfg, &TrainOptions { out: out.clone(), resume, device, verbose: !quiet })?;
            println!(
                "trained {} steps ({:.2} steps/s, {} parameters, {} skipped): test {:.4} bits/dim, best {:.4} at step {}",
                s.steps, s.steps_per_s, s.parameters, s.skipped_steps, s.final_test_bpd, s.best_test_bpd, s.best_step
            );
            println!("run directory: {}", out.display());
            Ok(())
        }
        Cmd::Eval { model, data, tensors, draws, seed, batch, checkpoint, device, json } => {
            if draws < 1 || batch < 1 {
                bail!("--draws and --batch must be >= 1");
            }
            let run = RunDir::open(&model)?;
            let sess = Session::open(&run, checkpoint.into(), resolve_device(&device)?)?;
            let (scores, what) = if let Some(spec) = tensors {
                let x = read_tensor_spec(&spec)?;
                sess.model.check_input(&x).with_context(|| format!("--tensors {spec}"))?;
                (sess.score_tensor(&x, None, batch)?, spec)
            } else {
                let (images, labels, what) = eval_images(&sess, data.as_deref())?;
                (sess.score_pixels(&images, &labels, draws, batch, seed)?, what)
            };
            if json {
                let out = serde_json::json!({
                    "n": scores.bpd.len(),
                    "mean_bpd": scores.mean_bpd(),
                    "bpd": scores.bpd,
                    "log_prob": scores.log_prob,
                });
                println!("{out}");
            } else {
                println!("{}: {} images, {:.4} bits/dim", what, scores.bpd.len(), scores.mean_bpd());
            }
            Ok(())
        }
        Cmd::Sample { model, n, temperature, seed, label, output, checkpoint, device } => {
            if n < 1 {
                bail!("-n must be >= 1");
            }
            let run = RunDir::open(&model)?;
            let sess = Session::open(&run, checkpoint.into(), resolve_device(&device)?)?;
            let labels = match (label, sess.model.n_classes()) {
                (Some(l), Some(k)) if (0..k).contains(&l) => Some(Tensor::full([n], l, (tch::Kind::Int64, tch::Device::Cpu))),
                (Some(l), Some(k)) => bail!("--label {l}: the model has classes 0..{}", k - 1),
                (Some(_), None) => bail!("--label: this model is not class-conditional"),
                (None, _) => None,
            };
            let px = sess.sample_pixels(n, temperature, seed, labels.as_ref())?;
            save_grid(&px, &output)?;
            println!("wrote {n} samples at temperature {temperature} to {}", output.display());
            Ok(())
        }
        Cmd::Info { model } => {
            let run = RunDir::open(&model)?;
            let state = run.load_state()?;
            let sess = Session::open(&run, Checkpoint::Best, tch::Device::Cpu)?;
            println!("{}", sess.model.describe());
            println!("parameters: {}", sess.parameter_count());
            println!("data: {} ({} classes: {})", sess.cfg.data.path, state.classes.len(), state.classes.join(" "));
            println!("steps: {} of {} ({:.1} s training, {} skipped)", state.step, sess.cfg.train.max_steps, state.train_seconds, state.skipped_steps);
            match (state.best_test_bpd, state.best_step) {
                (Some(b), Some(s)) => println!("best test bits/dim: {b:.4} at step {s}"),
                _ => println!("best test bits/dim: not evaluated yet"),
            }
            Ok(())
        }
    }
}

/// `FILE.safetensors:KEY` -> the tensor.
fn read_tensor_spec(spec: &str) -> Result<Tensor> {
    let (file, key) = spec.rsplit_once(':').with_context(|| format!("--tensors {spec}: expected FILE.safetensors:KEY"))?;
    let (tensors, _) = read_safetensors(Path::new(file))?;
    match tensors.get(key) {
        Some(t) => Ok(t.shallow_clone()),
        None => bail!("{file} has no tensor {key:?} (it has: {})", tensors.keys().cloned().collect::<Vec<_>>().join(", ")),
    }
}

/// The images `eval` scores: `--data` (its test/ if split) or the run's own test split.
fn eval_images(sess: &Session, data: Option<&Path>) -> Result<(Tensor, Tensor, String)> {
    let cfg = &sess.cfg.data;
    match data {
        Some(dir) => {
            let test = dir.join("test");
            let root = if test.is_dir() && dir.join("train").is_dir() { test } else { dir.to_path_buf() };
            let (set, _) = load_image_folder(&root, cfg, Some(&sess.classes)).or_else(|e| {
                if sess.model.n_classes().is_none() {
                    load_image_folder(&root, cfg, None)
                } else {
                    Err(e)
                }
            })?;
            Ok((set.images, set.labels, root.display().to_string()))
        }
        None => {
            let (_, test, _) = load_split(Path::new(&cfg.path), cfg, sess.cfg.train.seed)?;
            if test.is_empty() {
                bail!("the run's data {} has no test split; pass --data DIR", cfg.path);
            }
            Ok((test.images, test.labels, format!("{} (test split)", cfg.path)))
        }
    }
}
