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
    /// Train a model on a folder of images or a table (CSV, .npy, .npz).
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
    /// Bits/dim and log-likelihood of test images, or log-likelihood of test rows (or of given
    /// tensors / CSV rows).
    Eval {
        #[arg(long)]
        model: PathBuf,
        /// A folder of images: its test/ when it has train/ and test/, else all of it.
        #[arg(long)]
        data: Option<PathBuf>,
        /// FILE.safetensors:KEY, a [N, C, H, W] tensor already in model space, or [N, D] rows
        /// for a tabular model (no noise added).
        #[arg(long)]
        tensors: Option<String>,
        /// Tabular models: rows of a CSV file (the run's columns), evaluated as given.
        #[arg(long)]
        csv: Option<PathBuf>,
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
        /// fp32 | tf32 | bf16 (the coupling networks' convs; log-dets and priors stay float32).
        #[arg(long, default_value = "fp32")]
        precision: String,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Write samples: a PNG grid of images, or CSV rows (a PNG scatter + density for 2-D data).
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
        /// FILE.safetensors:KEY, standard-normal noise [N, D] in flowzoo's latent order to sample
        /// from (N replaces -n): x = inverse(temperature * eps).
        #[arg(long)]
        eps: Option<String>,
        /// Also write the raw model-space samples [N, C, H, W] to this safetensors file (key "x").
        #[arg(long)]
        raw_out: Option<PathBuf>,
    },
    /// Bring a PyTorch Glow checkpoint (y0ast, rosinality) or flowzoo weights saved from Python
    /// into a run directory.
    Import {
        #[command(subcommand)]
        from: flowzoo::io::import::ImportCmd,
    },
    /// Export a trained run as a TorchScript module that PyTorch loads with torch.jit.load
    /// (forward, inverse, log_prob, sample, bits_per_dim; trainable, flowzoo's parameter names).
    Export {
        /// The run directory.
        #[arg(long)]
        model: PathBuf,
        /// Where to write the TorchScript module (e.g. model.pt).
        #[arg(long)]
        torchscript: Option<PathBuf>,
        /// Also write the exported weights as safetensors (same names as the module's state_dict).
        #[arg(long)]
        safetensors: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "best")]
        checkpoint: Which,
        /// Test hook (see flowzoo::export::write_reference): inputs for the Rust model ...
        #[arg(long, hide = true)]
        reference_in: Option<PathBuf>,
        /// ... and where its outputs go.
        #[arg(long, hide = true)]
        reference_out: Option<PathBuf>,
    },
    /// Write a seeded 2-D toy data set as CSV (moons, circles, 8gaussians, checkerboard,
    /// pinwheel, 2spirals).
    Toy {
        name: String,
        #[arg(short, long, default_value_t = 10000)]
        n: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Architecture, parameter count and training state of a run.
    Info {
        #[arg(long)]
        model: PathBuf,
    },
    /// Time training steps, log_prob and sampling on random images (one JSON object on
    /// stdout; bench/run.sh puts it beside the PyTorch reference).
    Bench {
        #[arg(long)]
        config: PathBuf,
        /// Override any config key, e.g. --set model.width=128 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// libtorch intra-op threads (0: libtorch's default).
        #[arg(long, default_value_t = 2)]
        threads: i32,
        /// Timed repeats; the medians are reported.
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Timed calls per repeat.
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Untimed calls before each repeat.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// cpu | cuda | cuda:N | auto.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// fp32 | tf32 | bf16 (bf16: the coupling networks' convs; see `flowzoo::bench::Precision`).
        #[arg(long, default_value = "fp32")]
        precision: String,
        #[arg(long, default_value_t = 0.7)]
        temperature: f64,
        #[arg(long, default_value_t = 0)]
        seed: i64,
        /// Comma-separated: train, log_prob, sample.
        #[arg(long, default_value = "train,log_prob,sample")]
        metrics: String,
        /// Also compare the device's log_prob with CPU float64 on the same weights.
        #[arg(long)]
        check: bool,
        /// Also time the phases of a training step (stderr and `profile` in the JSON).
        #[arg(long)]
        profile: bool,
    },
}

fn main() {
    // A closed pipe (`flowzoo eval --json | head`) ends the process quietly, as for any Unix
    // tool, instead of a panic in println!.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
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
            let what = if cfg.data.kind == flowzoo::config::DataKind::Tabular { "validation" } else { "test" };
            println!(
                "trained {} steps ({:.2} steps/s, {} parameters, {} skipped{}): {what} {:.4} {}, best {:.4} at step {}",
                s.steps,
                s.steps_per_s,
                s.parameters,
                s.skipped_steps,
                if s.stopped_early { ", stopped early" } else { "" },
                s.final_eval,
                s.unit,
                s.best_eval,
                s.best_step
            );
            println!("run directory: {}", out.display());
            Ok(())
        }
        Cmd::Eval { model, data, tensors, csv, draws, seed, batch, checkpoint, device, precision, json } => {
            if draws < 1 || batch < 1 {
                bail!("--draws and --batch must be >= 1");
            }
            let precision = precision.parse::<flowzoo::bench::Precision>()?;
            precision.apply()?;
            let run = RunDir::open(&model)?;
            let mut sess = Session::open(&run, checkpoint.into(), resolve_device(&device)?)?;
            sess.compute_kind = precision.compute_kind();
            if sess.is_tabular() {
                return eval_tabular(&sess, data.as_deref(), tensors.as_deref(), csv.as_deref(), draws, seed, batch, json);
            }
            if csv.is_some() {
                bail!("--csv is for tabular models; this is an image model (use --data or --tensors)");
            }
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
        Cmd::Sample { model, n, temperature, seed, label, output, checkpoint, device, eps, raw_out } => {
            let eps = eps.as_deref().map(read_tensor_spec).transpose()?;
            let n = eps.as_ref().map_or(n, |e| e.size()[0]);
            if n < 1 {
                bail!("-n must be >= 1");
            }
            let run = RunDir::open(&model)?;
            let sess = Session::open(&run, checkpoint.into(), resolve_device(&device)?)?;
            if sess.is_tabular() {
                return sample_tabular(&sess, n, temperature, seed, &output);
            }
            let labels = match (label, sess.model.n_classes()) {
                (Some(l), Some(k)) if (0..k).contains(&l) => Some(Tensor::full([n], l, (tch::Kind::Int64, tch::Device::Cpu))),
                (Some(l), Some(k)) => bail!("--label {l}: the model has classes 0..{}", k - 1),
                (Some(_), None) => bail!("--label: this model is not class-conditional"),
                (None, _) => None,
            };
            let px = if eps.is_some() || raw_out.is_some() {
                let x = sess.sample_model_space(eps.as_ref(), n, temperature, seed, labels.as_ref())?;
                if let Some(p) = &raw_out {
                    flowzoo::io::write_safetensors(p, &[("x".to_string(), x.shallow_clone())], &Default::default())?;
                }
                flowzoo::data::to_pixels(&x, sess.cfg.data.n_bits)?
            } else {
                sess.sample_pixels(n, temperature, seed, labels.as_ref())?
            };
            save_grid(&px, &output)?;
            println!("wrote {n} samples at temperature {temperature} to {}", output.display());
            Ok(())
        }
        Cmd::Bench { config, set, threads, repeats, steps, warmup, device, precision, temperature, seed, metrics, check, profile } => {
            let cfg = Config::load(&config)?.with_overrides(&set)?;
            cfg.validate()?;
            let opts = flowzoo::bench::BenchOptions {
                threads,
                repeats,
                steps,
                warmup,
                device: resolve_device(&device)?,
                precision: precision.parse()?,
                temperature,
                seed,
                metrics: flowzoo::bench::Metric::parse_list(&metrics)?,
                check,
                profile,
            };
            println!("{}", flowzoo::bench::run(&cfg, &opts)?);
            Ok(())
        }
        Cmd::Import { from } => flowzoo::io::import::run_cli(from),
        Cmd::Export { model, torchscript, safetensors, checkpoint, reference_in, reference_out } => {
            let opts = flowzoo::export::ExportOptions { checkpoint: checkpoint.into(), torchscript, safetensors, reference_in, reference_out };
            for line in flowzoo::export::export_run(&model, &opts)? {
                println!("{line}");
            }
            Ok(())
        }
        Cmd::Toy { name, n, seed, output } => {
            let pts = flowzoo::data::toys::generate(&name, n, seed)?;
            flowzoo::io::atomic::atomic_write_bytes(&output, flowzoo::data::toys::to_csv(&pts).as_bytes())?;
            println!("wrote {n} points of {name} (seed {seed}) to {}", output.display());
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

/// `eval` for tabular models: mean test log-likelihood (nats, data units) with its standard error.
#[allow(clippy::too_many_arguments)]
fn eval_tabular(sess: &Session, data: Option<&Path>, tensors: Option<&str>, csv: Option<&Path>, draws: i64, seed: i64, batch: i64, json: bool) -> Result<()> {
    use flowzoo::data::tabular::{load_table, split_table};
    let cfg = &sess.cfg.data;
    let (rows, noise, what) = if let Some(spec) = tensors {
        let x = read_tensor_spec(spec)?;
        sess.model.check_input(&x).with_context(|| format!("--tensors {spec}"))?;
        (x.f_to_kind(tch::Kind::Double)?, 0.0, spec.to_string())
    } else if let Some(file) = csv {
        let mut c = cfg.clone();
        c.columns = sess.columns.clone();
        c.header = "auto".into();
        let t = load_table(file, &c)?;
        sess.model.check_input(&t.rows).with_context(|| format!("--csv {}", file.display()))?;
        (t.rows, 0.0, file.display().to_string())
    } else if let Some(file) = data {
        let mut c = cfg.clone();
        c.columns = sess.columns.clone();
        let t = load_table(file, &c)?;
        (t.rows, cfg.uniform_noise, file.display().to_string())
    } else {
        let split = split_table(&load_table(Path::new(&cfg.path), cfg)?, cfg, sess.cfg.train.seed)?;
        if split.test.size()[0] == 0 {
            bail!("the run's data {} has no test split; pass --csv FILE", cfg.path);
        }
        (split.test, cfg.uniform_noise, format!("{} (test split)", cfg.path))
    };
    let lp = sess.score_rows(&rows, noise, draws, batch, seed)?;
    let n = lp.len() as f64;
    let mean = lp.iter().sum::<f64>() / n;
    let var = lp.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let stderr = (var / n).sqrt();
    if json {
        println!("{}", serde_json::json!({"n": lp.len(), "mean_log_prob": mean, "stderr": stderr, "log_prob": lp}));
    } else {
        println!("{what}: {} rows, mean log-likelihood {mean:.4} ± {stderr:.4} nats", lp.len());
    }
    Ok(())
}

/// `sample` for tabular models: CSV rows; for 2-D data also a PNG with the samples beside the
/// learned density when the output name ends in .png.
fn sample_tabular(sess: &Session, n: i64, temperature: f64, seed: i64, output: &Path) -> Result<()> {
    let is_png = output.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if is_png {
        if sess.model.dim() != 2 {
            bail!("a PNG scatter needs 2-D data; this model has {} dimensions: write CSV (-o samples.csv)", sess.model.dim());
        }
        flowzoo::train::plot::plot_2d_model(sess, output, n, temperature, seed)?;
        println!("wrote {n} samples and the learned density to {}", output.display());
        return Ok(());
    }
    let x = sess.sample_rows(n, temperature, seed)?;
    let d = sess.model.dim();
    let vals = Vec::<f64>::try_from(&x.f_reshape([-1])?)?;
    let mut text = sess.columns.join(",");
    text.push('\n');
    for row in vals.chunks(d as usize) {
        text.push_str(&row.iter().map(|v| format!("{v:.6}")).collect::<Vec<_>>().join(","));
        text.push('\n');
    }
    flowzoo::io::atomic::atomic_write_bytes(output, text.as_bytes())?;
    println!("wrote {n} samples at temperature {temperature} to {}", output.display());
    Ok(())
}
