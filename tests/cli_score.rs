//! `flowzoo score` and `flowzoo ood` end to end on tiny runs trained by the command line: the
//! CSV's order and columns, threshold marking against the saved statistics, statistics
//! computed on first use, the exact `ood --json` shape, tabular runs on CSV files, and one
//! clear error line for each bad input.
use flowzoo::io::{Checkpoint, RunDir};
use flowzoo::score::{ScoreKind, ScoreStats};
use std::path::Path;
use std::process::{Command, Output};

mod score_support;
use score_support::assert_same_stats;

fn flowzoo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flowzoo")).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().expect("run flowzoo")
}

/// stdout and stderr of a successful run.
fn ok(args: &[&str]) -> (String, String) {
    let o = flowzoo(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "flowzoo {args:?} failed:\n{err}");
    (String::from_utf8(o.stdout).unwrap(), err)
}

fn fails(args: &[&str], needle: &str) {
    let o = flowzoo(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "flowzoo {args:?} should fail cleanly:\n{err}");
    assert!(err.contains(needle), "flowzoo {args:?}: expected {needle:?} in:\n{err}");
    assert_eq!(err.trim_end().lines().filter(|l| l.starts_with("error:")).count(), 1, "one error line:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Diagonal stripes of period 4 in an 8×8 grey image: the one thing the tiny model learns.
fn pattern() -> image::GrayImage {
    image::GrayImage::from_fn(8, 8, |x, y| image::Luma([if (x + y) % 4 < 2 { 32 } else { 224 }]))
}

fn noise(seed: u32) -> image::GrayImage {
    noise_of_size(8, seed, 1)
}

/// Uniform grey-level noise (xorshift), `size`×`size`.
fn noise_of_size(size: u32, seed: u32, offset: u32) -> image::GrayImage {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(offset);
    image::GrayImage::from_fn(size, size, |_, _| {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        image::Luma([(s >> 24) as u8])
    })
}

fn folder(dir: &Path, images: &[(String, image::GrayImage)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, img) in images {
        img.save(dir.join(name)).unwrap();
    }
}

/// `{"n_in": #, ...}`: the JSON text with every number (outside strings) replaced by `#`.
fn shape_of(json: &str) -> String {
    let (mut out, mut in_string, mut in_number) = (String::new(), false, false);
    for c in json.chars() {
        if in_string {
            in_string = c != '"';
        } else if c == '"' {
            in_string = true;
        } else if in_number && (c.is_ascii_alphanumeric() || ".+-".contains(c)) {
            continue;
        } else if c.is_ascii_digit() || c == '-' {
            in_number = true;
            out.push('#');
            continue;
        }
        in_number = false;
        out.push(c);
    }
    out
}

fn metrics_shape(kinds: &[&str]) -> String {
    let each: Vec<String> = kinds.iter().map(|k| format!("\"{k}\": {{\"auroc\": #, \"auprc\": #, \"fpr95\": #}}")).collect();
    format!("{{\"n_in\": #, \"n_ood\": #, \"scores\": {{{}}}}}\n", each.join(", "))
}

#[test]
fn score_and_ood_on_a_tiny_image_run() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("pattern");
    folder(&data, &(0..32).map(|i| (format!("p{i:02}.png"), pattern())).collect::<Vec<_>>());
    let run = d.path().join("run");
    let r = run.to_str().unwrap();
    let tiny = [
        "--set", "model.levels=1", "--set", "model.steps=2", "--set", "model.width=16", "--set", "data.test_fraction=0.25",
        "--set", "train.max_steps=60", "--set", "train.lr=3e-3", "--set", "train.warmup_steps=5", "--set", "train.eval_every=30",
        "--set", "train.checkpoint_every=30", "--set", "train.sample_every=0", "--set", "train.n_samples=4", "--set", "train.threads=1",
        "--set", "train.device=\"cpu\"",
    ];
    let mut args = vec!["train", "--config", "configs/glow_digits.toml", "--data", data.to_str().unwrap(), "--out", r];
    args.extend_from_slice(&tiny);
    ok(&args);
    let rundir = RunDir::open(&run).unwrap();
    let saved = ScoreStats::load(&rundir, Checkpoint::Best).unwrap().expect("training saves score_stats.json");

    // A folder of noise, patterns and one broken file: sorted by nll, noise first; the broken
    // file skipped and counted as in training.
    let mixed = d.path().join("mixed");
    let mut imgs: Vec<(String, image::GrayImage)> = (0..3).map(|i| (format!("noise{i}.png"), noise(i))).collect();
    imgs.extend((0..3).map(|i| (format!("pattern{i}.png"), pattern())));
    folder(&mixed, &imgs);
    std::fs::write(mixed.join("broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let csv_path = d.path().join("scores.csv");
    let (_, err) = ok(&["score", "--model", r, "--data", mixed.to_str().unwrap(), "-o", csv_path.to_str().unwrap(), "--threshold-fpr", "0.05"]);
    assert!(err.contains("scored 6 images") && err.contains("1 bad files skipped") && err.contains("warning: skipping"), "{err}");
    let mut rdr = csv::Reader::from_path(&csv_path).unwrap();
    let header: Vec<String> = rdr.headers().unwrap().iter().map(str::to_string).collect();
    assert_eq!(header, ["path", "bits_per_dim", "nll", "typicality", "complexity", "input_complexity", "anomalous_nll", "anomalous_typicality", "anomalous_complexity"]);
    let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 6);
    let nll: Vec<f64> = rows.iter().map(|r| r[2].parse().unwrap()).collect();
    assert!(nll.windows(2).all(|w| w[0] >= w[1]), "most anomalous first: {nll:?}");
    assert!(rows[..3].iter().all(|r| r[0].contains("noise")) && rows[3..].iter().all(|r| r[0].contains("pattern")));
    // Each row is marked by the held-out threshold of the statistics training saved.
    for (col, kind) in [(2, ScoreKind::Nll), (3, ScoreKind::Typicality), (4, ScoreKind::Complexity)] {
        let t = saved.threshold_at_fpr(kind, 0.05).unwrap();
        for row in &rows {
            let score: f64 = row[col].parse().unwrap();
            assert_eq!(&row[col + 4], if score > t { "true" } else { "false" }, "{kind} {score} vs threshold {t}");
        }
    }
    assert!(rows[..3].iter().all(|r| &r[6] == "true"), "noise is flagged by nll");

    // nll alone needs no statistics: without the file it runs, and leaves none behind; to stdout.
    let stats_file = ScoreStats::path(&rundir, Checkpoint::Best);
    std::fs::remove_file(&stats_file).unwrap();
    let (out, _) = ok(&["score", "--model", r, "--data", mixed.to_str().unwrap(), "--score", "nll"]);
    assert!(out.starts_with("path,bits_per_dim,nll\n") && out.lines().count() == 7, "{out}");
    assert!(!stats_file.exists());
    // A score that needs them computes them on first use, the same as training saved.
    let (_, err) = ok(&["score", "--model", r, "--data", mixed.to_str().unwrap(), "--score", "typicality,nll"]);
    assert!(err.contains("computing the score statistics"), "{err}");
    assert_same_stats(&ScoreStats::load(&rundir, Checkpoint::Best).unwrap().unwrap(), &saved);
    let (_, err) = ok(&["score", "--model", r, "--data", mixed.to_str().unwrap(), "--score", "typicality"]);
    assert!(!err.contains("computing"), "current statistics are reused: {err}");

    // --draws N averages N dequantisations per input: other bits/dim than one draw, close to
    // them; the statistics are measured again with N draws (and found current next time).
    let bpd_by_path = |csv: &str| -> std::collections::BTreeMap<String, f64> {
        csv.lines().skip(1).map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_string(), f[1].parse().unwrap())
        }).collect()
    };
    let (one, _) = ok(&["score", "--model", r, "--data", mixed.to_str().unwrap(), "--score", "nll"]);
    let (four, err) = ok(&["score", "--model", r, "--data", mixed.to_str().unwrap(), "--score", "nll,typicality", "--draws", "4"]);
    assert!(err.contains("computing the score statistics"), "{err}");
    let (one, four) = (bpd_by_path(&one), bpd_by_path(&four));
    assert_eq!(one.keys().collect::<Vec<_>>(), four.keys().collect::<Vec<_>>());
    assert!(one.iter().all(|(k, v)| (v - four[k]).abs() < 0.5) && one.iter().any(|(k, v)| v != &four[k]), "{one:?} vs {four:?}");
    assert_eq!(ScoreStats::load(&rundir, Checkpoint::Best).unwrap().unwrap().draws, 4);
    let (_, err) = ok(&["score", "--model", r, "--data", mixed.to_str().unwrap(), "--score", "typicality", "--draws", "4"]);
    assert!(!err.contains("computing"), "{err}");

    // ood: exactly the documented JSON, and perfect separation of noise from the pattern.
    let (pin, pout) = (d.path().join("in"), d.path().join("out"));
    folder(&pin, &(0..4).map(|i| (format!("{i}.png"), pattern())).collect::<Vec<_>>());
    folder(&pout, &(0..5).map(|i| (format!("{i}.png"), noise(10 + i))).collect::<Vec<_>>());
    let (json, _) = ok(&["ood", "--model", r, "--in", pin.to_str().unwrap(), "--ood", pout.to_str().unwrap(), "--json"]);
    assert_eq!(shape_of(&json), metrics_shape(&["nll", "typicality", "complexity"]), "{json}");
    assert!(json.starts_with("{\"n_in\": 4, \"n_ood\": 5, \"scores\": {\"nll\": {\"auroc\": 1.0, "), "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["scores"]["nll"]["fpr95"], 0.0);
    let (table, _) = ok(&["ood", "--model", r, "--in", pin.to_str().unwrap(), "--ood", pout.to_str().unwrap(), "--score", "nll"]);
    assert!(table.contains("AUROC") && table.contains("nll") && !table.contains("typicality"), "{table}");

    // An IDX folder (train and t10k parts of 8×8 images): eval and score read its test part.
    let idx = d.path().join("idx");
    std::fs::create_dir_all(&idx).unwrap();
    for (prefix, n) in [("train", 5u32), ("t10k", 3)] {
        let mut bytes = vec![0, 0, 8, 3];
        for v in [n, 8, 8] {
            bytes.extend_from_slice(&v.to_be_bytes());
        }
        for i in 0..n {
            bytes.extend(if i == 0 { noise(40).into_raw() } else { pattern().into_raw() });
        }
        std::fs::write(idx.join(format!("{prefix}-images-idx3-ubyte")), bytes).unwrap();
    }
    let (json, _) = ok(&["eval", "--model", r, "--data", idx.to_str().unwrap(), "--json"]);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&json).unwrap()["n"], 3);
    let (out, _) = ok(&["score", "--model", r, "--data", idx.to_str().unwrap(), "--score", "nll"]);
    assert!(out.lines().nth(1).unwrap().contains("t10k-images-idx3-ubyte#0,"), "the noise image first:\n{out}");

    // Bad inputs: one clear line each.
    let m = mixed.to_str().unwrap();
    fails(&["score", "--model", d.path().join("nope").to_str().unwrap(), "--data", m], "run directory");
    let empty = d.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    fails(&["score", "--model", r, "--data", empty.to_str().unwrap()], "is empty");
    fails(&["score", "--model", r, "--data", d.path().join("missing").to_str().unwrap()], "does not exist");
    fails(&["score", "--model", r, "--data", m, "--score", "loudness"], "unknown score \"loudness\"");
    for fpr in ["0", "1", "1.5", "-0.1"] {
        let fpr = format!("--threshold-fpr={fpr}");
        fails(&["score", "--model", r, "--data", m, &fpr], "--threshold-fpr must be in (0, 1)");
    }
    fails(&["score", "--model", r, "--data", m, "--draws", "0"], "--draws and --batch must be >= 1");
    fails(&["ood", "--model", r, "--in", pin.to_str().unwrap(), "--ood", empty.to_str().unwrap()], "out-of-distribution data");
    // A run whose config says data.bad_images = "fail" fails on the broken file, naming it.
    let cfg = run.join("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("bad_images = \"skip\""), "{text}");
    std::fs::write(&cfg, text.replace("bad_images = \"skip\"", "bad_images = \"fail\"")).unwrap();
    fails(&["score", "--model", r, "--data", m, "--score", "nll"], "broken.png");
}

#[test]
fn score_and_ood_on_a_tiny_tabular_run() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("blob.csv");
    let mut text = String::from("a,b\n");
    for i in 0..300 {
        let t = i as f64 * 0.37;
        text.push_str(&format!("{:.4},{:.4}\n", t.sin() * 0.5, (t * 1.7).cos() * 0.5));
    }
    std::fs::write(&data, text).unwrap();
    let run = d.path().join("run");
    let r = run.to_str().unwrap();
    ok(&[
        "train", "--config", "configs/realnvp_moons.toml", "--data", data.to_str().unwrap(), "--out", r,
        "--set", "model.blocks=2", "--set", "model.width=16", "--set", "train.batch_size=32", "--set", "train.max_steps=40",
        "--set", "train.eval_every=20", "--set", "train.checkpoint_every=20", "--set", "train.sample_every=0",
        "--set", "train.threads=1", "--set", "train.device=\"cpu\"",
    ]);
    let saved = ScoreStats::load(&RunDir::open(&run).unwrap(), Checkpoint::Best).unwrap().expect("training saves score_stats.json");
    assert_eq!(saved.heldout_split, "validation");

    // Rows are named by their line (the header is line 1), the far-away row first.
    let probe = d.path().join("probe.csv");
    std::fs::write(&probe, "a,b\n0.0,0.1\n0.1,-0.2\n9.0,-9.0\n0.2,0.3\n").unwrap();
    let (out, err) = ok(&["score", "--model", r, "--data", probe.to_str().unwrap(), "--threshold-fpr", "0.1"]);
    assert!(out.starts_with("line,log_likelihood,nll,typicality,anomalous_nll,anomalous_typicality\n4,"), "{out}");
    assert!(err.contains("scored 4 rows"), "{err}");
    let far: Vec<&str> = out.lines().nth(1).unwrap().split(',').collect();
    assert_eq!(&far[4..], ["true", "true"], "{out}");
    fails(&["score", "--model", r, "--data", probe.to_str().unwrap(), "--score", "complexity"], "the complexity score is for images");

    // ood on CSV files: the tabular kinds only, in the documented shape.
    let (inl, outl) = (d.path().join("in.csv"), d.path().join("out.csv"));
    std::fs::write(&inl, "a,b\n0.0,0.4\n0.3,-0.2\n-0.4,0.1\n0.2,0.2\n").unwrap();
    std::fs::write(&outl, "a,b\n5.0,5.0\n-6.0,4.0\n7.0,-7.0\n").unwrap();
    let (json, _) = ok(&["ood", "--model", r, "--in", inl.to_str().unwrap(), "--ood", outl.to_str().unwrap(), "--json"]);
    assert_eq!(shape_of(&json), metrics_shape(&["nll", "typicality"]), "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!((v["n_in"].as_u64(), v["n_ood"].as_u64(), v["scores"]["nll"]["auroc"].as_f64()), (Some(4), Some(3), Some(1.0)));
    fails(&["ood", "--model", r, "--in", inl.to_str().unwrap(), "--ood", d.path().join("none.csv").to_str().unwrap()], "none.csv");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// A 28×28 garment-like silhouette: a bright, softly shaded blob on a black background.
fn silhouette(i: u32) -> image::GrayImage {
    let (cx, cy, rx, ry) = (14.0, 14.0, 6.0 + (i % 4) as f64, 9.0 + (i % 3) as f64);
    image::GrayImage::from_fn(28, 28, |x, y| {
        let (u, v) = ((x as f64 - cx) / rx, (y as f64 - cy) / ry);
        let r = u * u + v * v;
        image::Luma([if r < 1.0 { (110.0 + 60.0 * (1.0 - r) + 10.0 * (i % 5) as f64) as u8 } else { 0 }])
    })
}

#[test]
fn the_shipped_fashion_mnist_model_scores_without_its_data_set() {
    // A copy, so that nothing this test does can write into models/.
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("glow_fashion_mnist");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/glow_fashion_mnist"), &run);
    let r = run.to_str().unwrap();
    let (pin, pout) = (d.path().join("in"), d.path().join("out"));
    folder(&pin, &(0..8).map(|i| (format!("s{i}.png"), silhouette(i))).collect::<Vec<_>>());
    folder(&pout, &(0..6).map(|i| (format!("n{i}.png"), noise_of_size(28, i, 7))).collect::<Vec<_>>());
    // The data set is not needed: the statistics training saved are current for the weights.
    let run_without_data = |args: &[&str]| -> (String, String) {
        let o = Command::new(env!("CARGO_BIN_EXE_flowzoo"))
            .args(args)
            .env("FASHION_MNIST", d.path().join("no-such-folder"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "flowzoo {args:?} failed:\n{err}");
        (String::from_utf8(o.stdout).unwrap(), err)
    };
    let csv_path = d.path().join("scores.csv");
    let (_, err) = run_without_data(&["score", "--model", r, "--data", pout.to_str().unwrap(), "-o", csv_path.to_str().unwrap(), "--threshold-fpr", "0.05"]);
    assert!(err.contains("scored 6 images") && !err.contains("computing"), "{err}");
    let rows: Vec<csv::StringRecord> = csv::Reader::from_path(&csv_path).unwrap().records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 6);
    for row in &rows {
        let bpd: f64 = row[1].parse().unwrap();
        assert!(bpd > 7.0 && &row[6] == "true" && &row[8] == "true", "uniform noise is ~8 bits/dim and flagged: {row:?}");
    }
    let (json, _) = run_without_data(&["ood", "--model", r, "--in", pin.to_str().unwrap(), "--ood", pout.to_str().unwrap(), "--json"]);
    assert_eq!(shape_of(&json), metrics_shape(&["nll", "typicality", "complexity"]), "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!((v["n_in"].as_i64(), v["n_ood"].as_i64()), (Some(8), Some(6)));
    assert_eq!(v["scores"]["nll"]["auroc"], 1.0, "{json}");
    let copied = std::fs::read(run.join("score_stats.json")).unwrap();
    assert_eq!(copied, std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/glow_fashion_mnist/score_stats.json")).unwrap(), "no statistics rewritten");
}
