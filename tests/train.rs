//! Training: exact resume, NaN/Inf handling, atomic checkpoints.
use flowzoo::config::Config;
use flowzoo::io::{atomic_write, read_safetensors, RunDir};
use flowzoo::session::Session;
use flowzoo::train::{train, StepOutcome, TrainOptions, Trainer};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// libtorch's generator is global to the process: tests that train take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn tiny_config() -> Config {
    let mut c = Config::default();
    c.data.path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits").display().to_string();
    c.data.n_bits = 4;
    c.model.steps = 2;
    c.model.width = 16;
    c.train.batch_size = 16;
    c.train.max_steps = 8;
    c.train.warmup_steps = 3;
    c.train.eval_every = 4;
    c.train.checkpoint_every = 4;
    c.train.sample_every = 0;
    c.train.n_samples = 4;
    c.train.threads = 1;
    c.train.ema = 0.9;
    c
}

fn opts(out: &Path, resume: bool) -> TrainOptions {
    TrainOptions { out: out.to_path_buf(), resume, device: Device::Cpu, verbose: false }
}

fn max_weight_diff(a: &Path, b: &Path) -> f64 {
    let (ta, _) = read_safetensors(a).unwrap();
    let (tb, _) = read_safetensors(b).unwrap();
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    ta.iter()
        .map(|(k, v)| v.to_kind(Kind::Double).f_sub(&tb[k].to_kind(Kind::Double)).unwrap().abs().max().double_value(&[]))
        .fold(0.0, f64::max)
}

#[test]
fn resumed_run_matches_uninterrupted_run() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let d = if std::env::var("FLOWZOO_KEEP").is_ok() { std::mem::ManuallyDrop::new(d).path().to_path_buf() } else { d.path().to_path_buf() };
    let (a, b) = (d.join("a"), d.join("b"));
    eprintln!("runs in {}", d.display());
    let cfg = tiny_config();
    let full = train(&cfg, &opts(&a, false)).unwrap();
    let mut half = cfg.clone();
    half.train.max_steps = 4;
    train(&half, &opts(&b, false)).unwrap();
    let resumed = train(&cfg, &opts(&b, true)).unwrap();
    assert_eq!(resumed.steps, 8);
    let diff = max_weight_diff(&a.join("weights.safetensors"), &b.join("weights.safetensors"));
    assert!(diff < 1e-6, "resumed weights differ from the uninterrupted run by {diff}");
    assert!((full.final_eval - resumed.final_eval).abs() < 1e-6, "{} vs {}", full.final_eval, resumed.final_eval);
    // The optimizer state was restored too (a fresh Adam would have diverged above), and the
    // metrics of both runs agree row for row on the training loss.
    let rows = |p: &Path| std::fs::read_to_string(p.join("metrics.csv")).unwrap();
    let col = |s: String| s.lines().skip(1).map(|l| l.split(',').nth(2).unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(col(rows(&a)), col(rows(&b)));
    for f in ["config.toml", "weights.safetensors", "optimizer.safetensors", "state.json", "best.safetensors", "metrics.csv", "curves.png", "samples/final.png"] {
        assert!(a.join(f).is_file(), "run directory lacks {f}");
    }
}

#[test]
fn nonfinite_steps_are_skipped_then_stop_training() {
    let _serial = serial();
    let mut cfg = tiny_config();
    cfg.train.max_nonfinite = 3;
    let sess = Session::new(&cfg, vec!["0".into()], Device::Cpu).unwrap();
    let mut tr = Trainer::new(sess, vec!["0".into()]).unwrap();
    let good = Tensor::rand([4, 1, 8, 8], (Kind::Float, Device::Cpu)) - 0.5;
    tr.data_init(&good, None).unwrap();
    assert!(matches!(tr.train_step(&good, None).unwrap(), StepOutcome::Updated { .. }));
    let before: Vec<Tensor> = tr.opt.params().iter().map(|(_, p)| p.detach().copy()).collect();
    let bad = good.copy();
    let _ = bad.shallow_clone().f_fill_(f64::NAN);
    for _ in 0..2 {
        assert!(matches!(tr.train_step(&bad, None).unwrap(), StepOutcome::Skipped { .. }));
    }
    for (b, (_, p)) in before.iter().zip(tr.opt.params()) {
        assert_eq!(b.f_sub(p).unwrap().abs().max().double_value(&[]), 0.0, "a skipped step changed the weights");
    }
    assert_eq!(tr.state.skipped_steps, 2);
    let err = tr.train_step(&bad, None).unwrap_err().to_string();
    assert!(err.contains("training stopped at step 4") && err.contains("3 consecutive"), "{err}");
    // A good step resets the run of bad ones.
    let mut tr2 = Trainer::new(Session::new(&cfg, vec!["0".into()], Device::Cpu).unwrap(), vec!["0".into()]).unwrap();
    for _ in 0..2 {
        tr2.train_step(&bad, None).unwrap();
    }
    tr2.train_step(&good, None).unwrap();
    tr2.train_step(&bad, None).unwrap();
    assert_eq!(tr2.nonfinite_run, 1);
}

#[test]
fn broken_model_never_overwrites_a_good_checkpoint() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let cfg = tiny_config();
    let run = RunDir::create(d.path()).unwrap();
    let sess = Session::new(&cfg, vec!["0".into()], Device::Cpu).unwrap();
    let tr = Trainer::new(sess, vec!["0".into()]).unwrap();
    tr.save_checkpoint(&run).unwrap();
    let good = std::fs::read(run.weights_path()).unwrap();
    let (_, p) = &tr.opt.params()[0];
    let _ = tch::no_grad(|| p.shallow_clone().f_fill_(f64::INFINITY).unwrap());
    let err = tr.save_checkpoint(&run).unwrap_err().to_string();
    assert!(err.contains("non-finite") && err.contains(&tr.opt.params()[0].0), "{err}");
    assert_eq!(std::fs::read(run.weights_path()).unwrap(), good);
}

#[test]
fn crash_mid_save_leaves_previous_file_intact() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("weights.safetensors");
    std::fs::write(&path, b"previous good checkpoint").unwrap();
    // The writer dies halfway (an error)...
    let err = atomic_write(&path, |f| {
        use std::io::Write;
        f.write_all(b"half of a new che")?;
        anyhow::bail!("disk full")
    })
    .unwrap_err();
    assert!(format!("{err:#}").contains("previous file (if any) is intact"));
    assert_eq!(std::fs::read(&path).unwrap(), b"previous good checkpoint");
    // ...or panics (a crash): the target is still the old file.
    let p2 = path.clone();
    let r = std::panic::catch_unwind(move || {
        let _ = atomic_write(&p2, |f| {
            use std::io::Write;
            f.write_all(b"partial").unwrap();
            panic!("simulated crash");
        });
    });
    assert!(r.is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"previous good checkpoint");
    let others: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(others.iter().all(|n| n == "weights.safetensors" || n.to_string_lossy().ends_with(".tmp")));
}

#[test]
fn interrupted_checkpoint_is_detected_on_resume() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config();
    cfg.train.max_steps = 4;
    cfg.train.checkpoint_every = 2;
    let run_path = d.path().join("r");
    train(&cfg, &opts(&run_path, false)).unwrap();
    // Simulate a crash after the weights were replaced but before state.json was.
    let run = RunDir::open(&run_path).unwrap();
    let mut st = run.load_state().unwrap();
    st.step = 2;
    run.save_state(&st).unwrap();
    cfg.train.max_steps = 6;
    let err = format!("{:#}", train(&cfg, &opts(&run_path, true)).err().unwrap());
    assert!(err.contains("do not match") && err.contains("interrupted mid-checkpoint"), "{err}");
}

#[test]
fn truncated_weights_are_a_clear_error() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config();
    cfg.train.max_steps = 2;
    let run_path = d.path().join("r");
    train(&cfg, &opts(&run_path, false)).unwrap();
    let w = run_path.join("best.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let run = RunDir::open(&run_path).unwrap();
    let err = format!("{:#}", Session::open(&run, flowzoo::io::Checkpoint::Best, Device::Cpu).err().unwrap());
    assert!(err.contains("best.safetensors") && err.contains("truncated or corrupt"), "{err}");
}
