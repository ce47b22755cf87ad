//! Scores from trained models: a tiny Glow trained on one pattern gives noise a higher nll,
//! `score_path` sorts and thresholds a folder (bad files skipped and counted), the run's
//! statistics are saved by training (equal to those computed afresh), found again and
//! recomputed when stale; a tabular run scores CSV lines.
use flowzoo::config::{Config, DataKind};
use flowzoo::io::{Checkpoint, RunDir};
use flowzoo::score::{
    ensure_stats, measure_pixels, measure_rows, ood_paths, score_path, stats_for_run, MeasureOptions, ScoreKind, ScoreOptions, ScoreStats, StatsOptions,
};
use flowzoo::session::Session;
use flowzoo::train::{train, TrainOptions};
use std::path::Path;
use tch::Device;

mod score_support;
use score_support::assert_same_stats;

/// libtorch's generator is global to the process: tests that train take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The pattern: diagonal stripes of period 4 in an 8×8 grey image.
fn pattern() -> image::GrayImage {
    image::GrayImage::from_fn(8, 8, |x, y| image::Luma([if (x + y) % 4 < 2 { 32 } else { 224 }]))
}

fn noise(seed: u32) -> image::GrayImage {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    image::GrayImage::from_fn(8, 8, |_, _| {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        image::Luma([(s >> 24) as u8])
    })
}

fn opts(out: &Path) -> TrainOptions {
    TrainOptions { out: out.to_path_buf(), resume: false, device: Device::Cpu, verbose: false }
}

fn tiny_glow(data: &Path) -> Config {
    let mut c = Config::default();
    c.data.path = data.display().to_string();
    c.data.n_bits = 4;
    c.data.test_fraction = 0.25;
    c.model.levels = 1;
    c.model.steps = 2;
    c.model.width = 16;
    c.train.batch_size = 16;
    c.train.max_steps = 60;
    c.train.lr = 3e-3;
    c.train.warmup_steps = 5;
    c.train.eval_every = 30;
    c.train.checkpoint_every = 30;
    c.train.sample_every = 0;
    c.train.n_samples = 4;
    c.train.threads = 1;
    c
}

#[test]
fn a_glow_trained_on_one_pattern_finds_noise_and_sorts_a_folder() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("pattern");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..32 {
        pattern().save(data.join(format!("p{i:02}.png"))).unwrap();
    }
    let run_dir = d.path().join("run");
    train(&tiny_glow(&data), &opts(&run_dir)).unwrap();
    let run = RunDir::open(&run_dir).unwrap();

    // Training saved the statistics of its best weights, from the data it had in memory: the
    // same as computing them afresh from the run directory.
    let sopts = StatsOptions::default();
    let after_training = ScoreStats::load(&run, Checkpoint::Best).unwrap().expect("training saves score_stats.json");
    assert!(after_training.is_current(&run, Checkpoint::Best, &sopts.measure).unwrap());
    assert_same_stats(&stats_for_run(&run, Checkpoint::Best, Device::Cpu, &sopts).unwrap(), &after_training);

    // Statistics of the run's own split, saved once and then found current.
    let stats = ensure_stats(&run, Checkpoint::Best, Device::Cpu, &sopts).unwrap();
    assert_eq!((stats.train.n, stats.heldout.n, stats.heldout_split.as_str()), (24, 8, "test"));
    assert!(stats.weights_step.is_some() && stats.weights_checksum.starts_with("fnv1a64:"));
    let saved = ScoreStats::path(&run, Checkpoint::Best);
    let mtime = std::fs::metadata(&saved).unwrap().modified().unwrap();
    assert_eq!(ensure_stats(&run, Checkpoint::Best, Device::Cpu, &sopts).unwrap(), stats);
    assert_eq!(std::fs::metadata(&saved).unwrap().modified().unwrap(), mtime, "current statistics are not recomputed");
    let mut more_draws = sopts.clone();
    more_draws.measure.draws = 2;
    assert!(!stats.is_current(&run, Checkpoint::Best, &more_draws.measure).unwrap(), "other draws, other statistics");

    // The pattern scores low, noise high, on every kind.
    let sess = Session::open(&run, Checkpoint::Best, Device::Cpu).unwrap();
    let mixed = d.path().join("mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    for i in 0..3 {
        pattern().save(mixed.join(format!("pattern{i}.png"))).unwrap();
        noise(i).save(mixed.join(format!("noise{i}.png"))).unwrap();
    }
    std::fs::write(mixed.join("broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let sc = ScoreOptions { measure: MeasureOptions::default(), kinds: ScoreKind::ALL.to_vec(), threshold_fpr: Some(0.05) };
    let mut calls = vec![];
    let report = score_path(&sess, &mixed, Some(&stats), &sc, &mut |done, total| calls.push((done, total))).unwrap();
    assert_eq!(calls.last(), Some(&(6, 6)));
    assert_eq!(report.skipped.len(), 1, "the broken file is skipped and counted");
    assert!(report.skipped[0].0.ends_with("broken.png"));
    let names: Vec<String> = report.inputs.iter().map(|r| Path::new(&r.id).file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert!(names[..3].iter().all(|n| n.starts_with("noise")), "most anomalous first: {names:?}");
    let bpd = |prefix: &str| report.inputs.iter().filter(|r| r.id.contains(prefix)).map(|r| r.nll).collect::<Vec<_>>();
    let (p, n) = (bpd("pattern"), bpd("noise"));
    assert!(p.iter().fold(f64::MIN, |a, &b| a.max(b)) + 1.0 < n.iter().fold(f64::MAX, |a, &b| a.min(b)), "pattern {p:?} vs noise {n:?}");
    // Noise is flagged by every score. The patterns are the held-out image itself, so the 5%
    // threshold of 8 held-out scores (between the two highest) flags at most one of them.
    for r in &report.inputs {
        if r.id.contains("noise") {
            assert_eq!(r.anomalous, vec![true; 3], "{}: scores {:?}, thresholds {:?}", r.id, r.scores, report.thresholds);
        }
        assert!((r.scores[2] - (r.nll - r.complexity.unwrap())).abs() < 1e-12);
    }
    for k in 0..3 {
        let flagged = report.inputs.iter().filter(|r| r.id.contains("pattern") && r.anomalous[k]).count();
        assert!(flagged <= 1, "{flagged} patterns flagged by {}", sc.kinds[k]);
    }
    // The CSV, read back.
    let csv_path = d.path().join("scores.csv");
    report.write_csv_file(&csv_path).unwrap();
    let mut rdr = csv::Reader::from_path(&csv_path).unwrap();
    let header: Vec<String> = rdr.headers().unwrap().iter().map(str::to_string).collect();
    assert_eq!(header, ["path", "bits_per_dim", "nll", "typicality", "complexity", "input_complexity", "anomalous_nll", "anomalous_typicality", "anomalous_complexity"]);
    let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 6);
    assert!(rows[0][0].contains("noise") && &rows[0][6] == "true" && rows[5][0].contains("pattern"));

    // In-distribution pattern vs noise folders: the nll separates them perfectly.
    let (pin, pout) = (d.path().join("in"), d.path().join("out"));
    for (dir, noisy) in [(&pin, false), (&pout, true)] {
        std::fs::create_dir_all(dir).unwrap();
        for i in 0..4 {
            let img = if noisy { noise(10 + i) } else { pattern() };
            img.save(dir.join(format!("{i}.png"))).unwrap();
        }
    }
    let rep = ood_paths(&sess, &pin, &pout, Some(&stats), &ScoreKind::ALL, &MeasureOptions::default(), &mut |_, _| {}).unwrap();
    assert_eq!((rep.n_in, rep.n_ood), (4, 4));
    assert_eq!(rep.scores[0].0, ScoreKind::Nll);
    assert_eq!(rep.scores[0].1.auroc, 1.0);

    // Tensors straight from a Rust program: the same measure, and a wrong shape is named.
    let px = tch::Tensor::from_slice(&pattern().into_raw()).reshape([1, 1, 8, 8]);
    let m = measure_pixels(&sess, &px, &MeasureOptions::default(), &mut |_, _| {}).unwrap();
    assert!(m.nll[0] < n[0]);
    let e = format!("{:#}", measure_pixels(&sess, &px.reshape([1, 1, 4, 16]), &MeasureOptions::default(), &mut |_, _| {}).unwrap_err());
    assert!(e.contains("[B, 1, 8, 8]") && e.contains("data.image_size"), "{e}");
}

#[test]
fn a_tabular_run_scores_csv_lines_and_refuses_complexity() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("blob.csv");
    let mut text = String::from("a,b\n");
    for i in 0..200 {
        let t = i as f64 * 0.37;
        text.push_str(&format!("{:.4},{:.4}\n", t.sin() * 0.5, (t * 1.7).cos() * 0.5));
    }
    std::fs::write(&data, text).unwrap();
    let mut c = Config::default();
    c.data.kind = DataKind::Tabular;
    c.data.path = data.display().to_string();
    c.data.test_fraction = 0.1;
    c.data.val_fraction = 0.2;
    c.data.bad_rows = flowzoo::config::BadRows::Drop;
    c.model.kind = flowzoo::config::ModelKind::Realnvp;
    c.model.blocks = 2;
    c.model.width = 16;
    c.model.permutation = flowzoo::config::PermutationChoice::None;
    c.train.batch_size = 32;
    c.train.max_steps = 40;
    c.train.eval_every = 20;
    c.train.checkpoint_every = 20;
    c.train.sample_every = 0;
    c.train.threads = 1;
    let run_dir = d.path().join("run");
    train(&c, &opts(&run_dir)).unwrap();
    let run = RunDir::open(&run_dir).unwrap();
    let after_training = ScoreStats::load(&run, Checkpoint::Best).unwrap().expect("training saves score_stats.json");
    let stats = ensure_stats(&run, Checkpoint::Best, Device::Cpu, &StatsOptions::default()).unwrap();
    assert_eq!(stats, after_training, "the saved statistics are current");
    assert_same_stats(&stats_for_run(&run, Checkpoint::Best, Device::Cpu, &StatsOptions::default()).unwrap(), &after_training);
    assert_eq!((stats.heldout_split.as_str(), stats.heldout.n), ("validation", 40));
    assert!(!stats.heldout.scores.contains_key("complexity"));
    let sess = Session::open(&run, Checkpoint::Best, Device::Cpu).unwrap();

    // Ids are the file's lines (the header is line 1), also after a bad row (line 3) is dropped.
    let probe = d.path().join("probe.csv");
    std::fs::write(&probe, "a,b\n0.0,0.1\nnot,a number\n0.1,-0.2\n9.0,-9.0\n0.2,0.3\n").unwrap();
    let kinds = ScoreKind::parse_list("all", true).unwrap();
    let sc = ScoreOptions { measure: MeasureOptions::default(), kinds: kinds.clone(), threshold_fpr: None };
    let report = score_path(&sess, &probe, Some(&stats), &sc, &mut |_, _| {}).unwrap();
    assert_eq!(report.id_column, "line");
    assert_eq!(report.dropped_rows, 1);
    assert_eq!(report.inputs[0].id, "5", "the far-away row, on line 5, is the most anomalous");
    assert!(report.inputs.iter().all(|r| r.complexity.is_none() && r.anomalous.is_empty()));
    let mut out = vec![];
    report.write_csv(&mut out).unwrap();
    assert!(String::from_utf8(out).unwrap().starts_with("line,log_likelihood,nll,typicality\n5,"));
    let sc = ScoreOptions { kinds: vec![ScoreKind::Complexity], ..sc };
    let e = format!("{:#}", score_path(&sess, &probe, Some(&stats), &sc, &mut |_, _| {}).unwrap_err());
    assert!(e.contains("images only"), "{e}");

    // Rows straight from a Rust program (data units, as in the file): the same −log p as the
    // file's lines, and a wrong width is named with the run's columns.
    let rows = tch::Tensor::from_slice(&[0.0f32, 0.1, 0.1, -0.2, 9.0, -9.0, 0.2, 0.3]).reshape([4, 2]);
    let m = measure_rows(&sess, &rows, c.data.uniform_noise, &MeasureOptions::default(), &mut |_, _| {}).unwrap();
    for (line, nll) in ["2", "4", "5", "6"].iter().zip(&m.nll) {
        let scored = report.inputs.iter().find(|r| r.id == *line).unwrap();
        assert!((scored.nll - nll).abs() < 1e-9, "line {line}: {} vs {nll}", scored.nll);
    }
    assert_eq!(m.score(ScoreKind::Nll, f64::NAN).unwrap(), m.nll);
    let e = format!("{:#}", measure_rows(&sess, &rows.reshape([2, 4]), 0.0, &MeasureOptions::default(), &mut |_, _| {}).unwrap_err());
    assert!(e.contains("[B, 2]") && e.contains("a, b"), "{e}");
}
