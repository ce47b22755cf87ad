//! The command line end to end on a tiny model, and its error paths (clear message, exit 1,
//! never a panic).
mod common;
use common::{fails, flowzoo, ok};
use std::path::Path;
use std::process::Command;

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
    fails(&["train", "--resume"], "--resume needs --out RUN_DIR");
    fails(&["train"], "train needs --config FILE");
    fails(&["sample", "--model", "models/glow_digits", "--device", "tpu"], "unknown device \"tpu\": use auto, cpu, cuda or cuda:N");
    fails(&["eval", "--model", "models/glow_digits", "--draws", "0"], "--draws and --batch must be >= 1");
    fails(&["sample", "--model", "models/glow_digits", "-n", "0", "-o", p.join("s.png").to_str().unwrap()], "-n 0: must be >= 1");
    fails(&["sample", "--model", "models/glow_digits", "--label", "3", "-o", p.join("s.png").to_str().unwrap()], "not class-conditional");
    fails(&["bench", "--config", "configs/glow_digits.toml", "--precision", "fp8"], "unknown precision \"fp8\"");
    assert!(!p.join("s.png").exists());
}

#[cfg(unix)]
#[test]
fn closed_stdout_ends_quietly_by_sigpipe() {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::process::ExitStatusExt;
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("m.csv");
    // A pipe whose read end is closed before the child starts: its first write to stdout fails,
    // every time (no race with a reader that may or may not be gone yet).
    let mut fds = [0i32; 2];
    // SAFETY: pipe() fills two descriptors; the read end is closed at once, the write end is
    // owned by the child's Stdio from here on.
    let write_end = unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        libc::close(fds[0]);
        OwnedFd::from_raw_fd(fds[1])
    };
    let o = Command::new(env!("CARGO_BIN_EXE_flowzoo"))
        .args(["toy", "moons", "-n", "10", "-o", out.to_str().unwrap()])
        .stdout(std::process::Stdio::from(write_end))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    // Ended by SIGPIPE like any Unix tool in a pipe (`| head`), with nothing on stderr: no
    // panic, no "error:" line.
    assert_eq!(o.status.signal(), Some(libc::SIGPIPE), "status {:?}, stderr: {err}", o.status);
    assert!(err.is_empty(), "{err}");
    assert!(out.is_file(), "the work was done before the message was printed");
}

#[test]
fn data_notices_and_where_data_was_looked_for() {
    let d = tempfile::tempdir().unwrap();
    for (i, split) in ["train", "train", "test"].iter().enumerate() {
        let p = d.path().join(format!("imgs/{split}/{i}.png"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        image::GrayImage::from_pixel(28, 28, image::Luma([9 * i as u8])).save(p).unwrap();
    }
    let (imgs, run) = (d.path().join("imgs"), d.path().join("run"));
    let mut args = vec!["train", "--config", "configs/glow_digits.toml", "--data", imgs.to_str().unwrap(), "--out", run.to_str().unwrap()];
    args.extend_from_slice(&["-q", "--set", "model.steps=1", "--set", "train.max_steps=1", "--set", "train.device=\"cpu\""]);
    let o = flowzoo(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(err.matches("data: resizing 28×28 images to 8×8 (data.image_size = 8)").count(), 1, "{err}");
    // The shipped config from outside the checkout: the error says both places it looked.
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/glow_digits.toml");
    let o = Command::new(env!("CARGO_BIN_EXE_flowzoo")).args(["train", "--config", config.to_str().unwrap(), "--out", "r"]).current_dir(d.path()).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let cwd = d.path().canonicalize().unwrap();
    assert!(err.contains(&format!("{} (relative to the current directory)", cwd.join("data/digits").display())), "{err}");
    assert!(err.contains(&format!("{} (relative to the config file's folder)", config.parent().unwrap().join("data/digits").display())), "{err}");
    assert!(!d.path().join("r").exists(), "nothing written when the data is missing");
}

#[test]
fn user_tensors_are_checked_for_dtype_rank_and_shape() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let r = run.to_str().unwrap();
    let mut args = vec!["train", "--config", "configs/glow_digits.toml", "--out", r, "-q"];
    args.extend_from_slice(TINY);
    ok(&args);
    let f = d.path().join("t.safetensors");
    let fs = f.to_str().unwrap();
    let opts = (tch::Kind::Float, tch::Device::Cpu);
    tch::Tensor::write_safetensors(
        &[
            ("scalar", &tch::Tensor::from(1.0f32)),
            ("ints", &tch::Tensor::zeros([2, 1, 8, 8], (tch::Kind::Int64, tch::Device::Cpu))),
            ("empty", &tch::Tensor::zeros([0, 1, 8, 8], opts)),
            ("nan", &tch::Tensor::full([1, 1, 8, 8], f64::NAN, opts)),
            ("flat", &tch::Tensor::zeros([3, 64], opts)),
            ("short", &tch::Tensor::zeros([3, 10], opts)),
            ("eps3d", &tch::Tensor::zeros([3, 64, 1], opts)),
        ],
        &f,
    )
    .unwrap();
    let spec = |k: &str| format!("{fs}:{k}");
    fails(&["eval", "--model", r, "--tensors", &spec("scalar")], &format!("--tensors {fs}:scalar: expected input of shape [B, 1, 8, 8], got [] (float32)"));
    fails(&["eval", "--model", r, "--tensors", &spec("ints")], "expected a floating-point tensor (float32 or float64), got int64 [2, 1, 8, 8]");
    fails(&["eval", "--model", r, "--tensors", &spec("empty")], "with B >= 1, got [0, 1, 8, 8]");
    fails(&["eval", "--model", r, "--tensors", &spec("nan")], "holds NaN or Inf values (shape [1, 1, 8, 8])");
    fails(&["eval", "--model", r, "--tensors", &spec("flat")], "expected input of shape [B, 1, 8, 8], got [3, 64]");
    fails(&["eval", "--model", r, "--tensors", &format!("{fs}:")], "expected FILE.safetensors:KEY");
    fails(&["eval", "--model", r, "--tensors", "nofile"], "expected FILE.safetensors:KEY");
    let out = d.path().join("s.png");
    let o = out.to_str().unwrap();
    fails(&["sample", "--model", r, "--eps", &spec("scalar"), "-o", o], &format!("--eps {fs}:scalar: expected standard-normal noise (flowzoo's flat latent) of shape [B, 64], got []"));
    fails(&["sample", "--model", r, "--eps", &spec("short"), "-o", o], "of shape [B, 64], got [3, 10]");
    fails(&["sample", "--model", r, "--eps", &spec("eps3d"), "-o", o], "of shape [B, 64], got [3, 64, 1]");
    fails(&["sample", "--model", r, "--eps", &spec("ints"), "-o", o], "got int64");
    fails(&["sample", "--model", r, "--eps", &spec("missing"), "-o", o], "has no tensor \"missing\" (it has: empty [0, 1, 8, 8], eps3d");
    assert!(!out.exists());
    // The good shape works, and N comes from the noise.
    let said = ok(&["sample", "--model", r, "--eps", &spec("flat"), "-o", o]);
    assert!(said.contains("wrote 3 samples"), "{said}");
}

#[test]
fn every_flag_has_help_and_every_device_defaults_to_auto() {
    let subcommands: &[&[&str]] = &[
        &["train"], &["fit"], &["eval"], &["sample"], &["export"], &["toy"], &["info"], &["bench"], &["score"], &["ood"],
        &["import", "y0ast"], &["import", "rosinality"], &["import", "state-dict"],
    ];
    for sub in subcommands {
        let mut args = sub.to_vec();
        args.push("-h");
        let help = ok(&args);
        let mut in_options = false;
        for line in help.lines() {
            if line.starts_with("Options:") || line.starts_with("Arguments:") {
                in_options = true;
                continue;
            }
            if !in_options || line.trim().is_empty() || !line.starts_with("  ") {
                continue;
            }
            // "  -n, --n <N>  Number of samples [default: 64]": the flag, two spaces, its help.
            let described = line.trim_start().split_once("  ").is_some_and(|(_, text)| !text.trim().is_empty());
            assert!(described, "flowzoo {}: {line:?} has no help text", sub.join(" "));
        }
        // `toy` runs no libtorch code: it has no device to choose.
        if sub[0] == "toy" {
            continue;
        }
        assert!(help.contains("--device"), "flowzoo {} has no --device", sub.join(" "));
        let device = help.lines().find(|l| l.contains("--device")).unwrap();
        // train and fit read train.device from the config; --device overrides it.
        let default_auto = if sub[0] == "train" || sub[0] == "fit" { "whose default is auto" } else { "[default: auto]" };
        assert!(device.contains(default_auto), "flowzoo {}: {device}", sub.join(" "));
    }
}

#[test]
fn the_shipped_digits_glow_still_loads_and_scores_as_documented() {
    // models/README.md: 2.2740 bits/dim over the 360 test images with 8 draws; one seeded draw
    // (the default) gives 2.2778, within the 0.01 that one dequantisation draw moves it.
    let json = ok(&["eval", "--model", "models/glow_digits", "--json", "--device", "cpu"]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["n"], 360, "{json}");
    let bpd = v["mean_bpd"].as_f64().unwrap();
    assert!((bpd - 2.2740).abs() < 0.01, "models/glow_digits: {bpd} bits/dim, documented 2.2740 (8 draws)");
}
