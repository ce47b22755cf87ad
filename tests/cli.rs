//! The command line end to end on a tiny model, and its error paths (clear message, exit 1,
//! never a panic).
use std::path::Path;
use std::process::{Command, Output};

fn flowzoo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flowzoo")).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().expect("run flowzoo")
}

fn ok(args: &[&str]) -> String {
    let o = flowzoo(args);
    assert!(o.status.success(), "flowzoo {args:?} failed:\n{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn fails(args: &[&str], needle: &str) {
    let o = flowzoo(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "flowzoo {args:?} should fail cleanly:\n{err}");
    assert!(err.contains(needle), "flowzoo {args:?}: expected {needle:?} in:\n{err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{err}");
}

const TINY: &[&str] = &[
    "--set", "model.steps=2", "--set", "model.width=16", "--set", "train.max_steps=6", "--set", "train.eval_every=3",
    "--set", "train.checkpoint_every=3", "--set", "train.sample_every=3", "--set", "train.n_samples=9", "--set", "train.threads=1",
    "--set", "train.device=\"cpu\"",
];

#[test]
fn train_eval_sample_info() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let run_s = run.to_str().unwrap();
    let mut args = vec!["train", "--config", "configs/glow_digits.toml", "--out", run_s, "-q"];
    args.extend_from_slice(TINY);
    let out = ok(&args);
    assert!(out.contains("trained 6 steps"), "{out}");
    for f in ["samples/step_0000003.png", "samples/final.png", "curves.png", "metrics.csv", "best.safetensors"] {
        assert!(run.join(f).is_file(), "missing {f}");
    }
    // The resolved config is complete and reloadable with the overrides applied.
    let cfg = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(cfg.contains("max_steps = 6") && cfg.contains("width = 16"), "{cfg}");

    let json: serde_json::Value = serde_json::from_str(&ok(&["eval", "--model", run_s, "--json", "--draws", "2"])).unwrap();
    assert_eq!(json["n"], 360);
    let mean = json["mean_bpd"].as_f64().unwrap();
    assert!(mean.is_finite() && mean > 0.0 && mean < 8.0, "{mean}");
    let bpd = json["bpd"].as_array().unwrap();
    let lp = json["log_prob"].as_array().unwrap();
    assert_eq!((bpd.len(), lp.len()), (360, 360));
    // bits/dim and log-likelihood are the two faces of one number: bpd = -(lp - D n ln2)/(D ln2)
    let (b0, l0) = (bpd[0].as_f64().unwrap(), lp[0].as_f64().unwrap());
    let d_ln2 = 64.0 * std::f64::consts::LN_2;
    assert!((b0 - (-(l0 - 64.0 * 4.0 * std::f64::consts::LN_2) / d_ln2)).abs() < 1e-9);
    let avg: f64 = bpd.iter().map(|v| v.as_f64().unwrap()).sum::<f64>() / 360.0;
    assert!((avg - mean).abs() < 1e-9);

    // A folder with train/ and test/ is evaluated on test/; any other folder whole.
    let j2: serde_json::Value = serde_json::from_str(&ok(&["eval", "--model", run_s, "--json", "--data", "data/digits"])).unwrap();
    assert_eq!(j2["n"], 360);
    let j3: serde_json::Value = serde_json::from_str(&ok(&["eval", "--model", run_s, "--json", "--data", "data/digits/test/3"])).unwrap();
    assert_eq!(j3["n"], 28);

    let grid = d.path().join("grid.png");
    ok(&["sample", "--model", run_s, "-n", "16", "--temperature", "0.7", "--seed", "1", "-o", grid.to_str().unwrap()]);
    let img = image::open(&grid).unwrap();
    assert!(img.width() >= 4 * 32 && img.height() >= 4 * 32);
    // Same seed, same picture.
    let grid2 = d.path().join("grid2.png");
    ok(&["sample", "--model", run_s, "-n", "16", "--temperature", "0.7", "--seed", "1", "-o", grid2.to_str().unwrap()]);
    assert_eq!(std::fs::read(&grid).unwrap(), std::fs::read(&grid2).unwrap());

    let info = ok(&["info", "--model", run_s]);
    assert!(info.contains("parameters:") && info.contains("L=2") && info.contains("steps: 6 of 6"), "{info}");

    // Resume continues to a larger max_steps.
    let out = ok(&["train", "--resume", "--out", run_s, "-q", "--set", "train.max_steps=8"]);
    assert!(out.contains("trained 8 steps"), "{out}");
}

#[test]
fn eval_of_tensors_in_model_space() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let mut args = vec!["train", "--config", "configs/glow_digits.toml", "--out", run.to_str().unwrap(), "-q"];
    args.extend_from_slice(TINY);
    ok(&args);
    let x = tch::Tensor::rand([5, 1, 8, 8], (tch::Kind::Float, tch::Device::Cpu)) - 0.5;
    let f = d.path().join("x.safetensors");
    tch::Tensor::write_safetensors(&[("x", &x)], &f).unwrap();
    let spec = format!("{}:x", f.display());
    let a: serde_json::Value = serde_json::from_str(&ok(&["eval", "--model", run.to_str().unwrap(), "--tensors", &spec, "--json"])).unwrap();
    let b: serde_json::Value = serde_json::from_str(&ok(&["eval", "--model", run.to_str().unwrap(), "--tensors", &spec, "--json"])).unwrap();
    assert_eq!(a["n"], 5);
    assert_eq!(a, b, "no noise is added to given tensors");
    // bf16 conditioners move bits/dim a little, not a lot; fp32 is exact to itself.
    let c: serde_json::Value = serde_json::from_str(&ok(&["eval", "--model", run.to_str().unwrap(), "--tensors", &spec, "--json", "--precision", "bf16"])).unwrap();
    let (fp32, bf16) = (a["mean_bpd"].as_f64().unwrap(), c["mean_bpd"].as_f64().unwrap());
    assert!((fp32 - bf16).abs() < 0.05, "fp32 {fp32} vs bf16 {bf16}");
    fails(&["eval", "--model", run.to_str().unwrap(), "--tensors", &spec, "--precision", "fp8"], "unknown precision");
    fails(&["eval", "--model", run.to_str().unwrap(), "--tensors", &format!("{}:nope", f.display())], "has no tensor \"nope\"");
    let bad = tch::Tensor::zeros([2, 3, 8, 8], (tch::Kind::Float, tch::Device::Cpu));
    tch::Tensor::write_safetensors(&[("x", &bad)], &f).unwrap();
    fails(&["eval", "--model", run.to_str().unwrap(), "--tensors", &spec], "expected input of shape [B, 1, 8, 8], got [2, 3, 8, 8]");
}

#[test]
fn errors_are_clear() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    fails(&["eval", "--model", p.join("nope").to_str().unwrap()], "does not exist");
    std::fs::create_dir_all(p.join("half")).unwrap();
    fails(&["sample", "--model", p.join("half").to_str().unwrap()], "config.toml is missing");
    fails(&["train", "--config", "configs/glow_digits.toml", "--set", "train.lrr=1"], "unknown config key `train.lrr`");
    let cfg = p.join("bad.toml");
    std::fs::write(&cfg, "[train]\nbatch_size = 8\nbatchsize = 8\n").unwrap();
    fails(&["train", "--config", cfg.to_str().unwrap()], "line 3");
    std::fs::create_dir_all(p.join("empty")).unwrap();
    fails(&["train", "--config", "configs/glow_digits.toml", "--data", p.join("empty").to_str().unwrap(), "--out", p.join("r").to_str().unwrap()], "is empty");
    fails(&["train", "--config", "configs/glow_digits.toml", "--device", "tpu"], "unknown device");
    fails(&["train", "--resume", "--out", p.join("none").to_str().unwrap()], "does not exist");
    assert!(Path::new(env!("CARGO_BIN_EXE_flowzoo")).exists());
}

#[test]
fn closed_stdout_is_not_a_panic() {
    use std::io::Read;
    use std::process::Stdio;
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("m.csv");
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowzoo"))
        .args(["toy", "moons", "-n", "10", "-o", out.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before anything is printed
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    child.wait().unwrap();
    assert!(!err.contains("panicked"), "{err}");
}
