//! Detection metrics against hand-computed values (ties included), score kinds, input
//! complexity, and the saved score statistics — no model needed.
use flowzoo::io::{Checkpoint, RunDir};
use flowzoo::score::{
    auroc, average_precision, batch_typicality, detection_metrics, fpr_at_tpr, ood_report, png_complexity, MeasureOptions, Measurements,
    NllUnit, ScoreKind, ScoreStats, Summary,
};
use tch::{Kind, Tensor};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn metrics_on_small_lists() {
    // scikit-learn's documented example: y = [0, 0, 1, 1], s = [0.1, 0.4, 0.35, 0.8].
    let (neg, pos) = ([0.1, 0.4], [0.35, 0.8]);
    assert!(close(auroc(&neg, &pos).unwrap(), 0.75));
    // Thresholds 0.8 (P 1, R 1/2), 0.4 (P 1/2, R 1/2), 0.35 (P 2/3, R 1): 1/2 + 1/2 · 2/3.
    assert!(close(average_precision(&neg, &pos).unwrap(), 0.5 + 1.0 / 3.0));
    // TPR 1 first at 0.35, where 0.4 is a false positive.
    assert!(close(fpr_at_tpr(&neg, &pos, 0.95).unwrap(), 0.5));
    assert!(close(fpr_at_tpr(&neg, &pos, 0.5).unwrap(), 0.0));

    // Perfect, reversed.
    let m = detection_metrics(&[1.0, 2.0], &[3.0, 4.0, 5.0]).unwrap();
    assert_eq!((m.auroc, m.auprc, m.fpr95), (1.0, 1.0, 0.0));
    let m = detection_metrics(&[3.0, 4.0], &[1.0, 2.0]).unwrap();
    assert_eq!(m.auroc, 0.0);
    assert!(close(m.fpr95, 1.0));
    // Reversed AP: thresholds 2 (P 1/3, R 1/2), 1 (P 2/4, R 1).
    assert!(close(m.auprc, 0.5 / 3.0 + 0.5 * 0.5));
}

#[test]
fn ties_count_one_half_and_enter_together() {
    // neg [1, 2, 2], pos [2, 3]: pairs 2>1, 2=2 (½), 2=2 (½), 3>all (3): 5 of 6.
    let (neg, pos) = ([1.0, 2.0, 2.0], [2.0, 3.0]);
    assert!(close(auroc(&neg, &pos).unwrap(), 5.0 / 6.0));
    // Thresholds 3 (tp 1, fp 0: P 1, R ½), 2 (tp 2, fp 2: P ½, R 1): ½ + ½·½.
    assert!(close(average_precision(&neg, &pos).unwrap(), 0.75));
    // The tie group at 2 enters whole: TPR jumps from ½ to 1 with both negatives at 2.
    assert!(close(fpr_at_tpr(&neg, &pos, 0.95).unwrap(), 2.0 / 3.0));
    // Everything tied: chance AUROC, AP = the positive fraction, FPR95 = 1.
    let m = detection_metrics(&[1.0, 1.0, 1.0], &[1.0]).unwrap();
    assert!(close(m.auroc, 0.5) && close(m.auprc, 0.25) && close(m.fpr95, 1.0), "{m:?}");
    // 19 of 20 positives is a TPR of exactly 0.95.
    let pos: Vec<f64> = (0..20).map(|i| if i == 0 { 0.0 } else { 10.0 + i as f64 }).collect();
    let neg = [5.0, 1.0];
    assert!(close(fpr_at_tpr(&neg, &pos, 0.95).unwrap(), 0.0));
}

#[test]
fn auroc_matches_counting_pairs_on_lists_full_of_ties() {
    let mut s = 12345u64;
    let mut draw = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 33) % 5) as f64
    };
    for trial in 0..20 {
        let neg: Vec<f64> = (0..7 + trial).map(|_| draw()).collect();
        let pos: Vec<f64> = (0..3 + trial % 4).map(|_| draw()).collect();
        let pairs: f64 = pos.iter().flat_map(|p| neg.iter().map(move |n| if p > n { 1.0 } else if p == n { 0.5 } else { 0.0 })).sum();
        let want = pairs / (pos.len() * neg.len()) as f64;
        assert!(close(auroc(&neg, &pos).unwrap(), want), "trial {trial}");
    }
}

#[test]
fn metrics_reject_empty_and_nan() {
    let e = format!("{:#}", auroc(&[], &[1.0]).unwrap_err());
    assert!(e.contains("0 in-distribution"), "{e}");
    let e = format!("{:#}", average_precision(&[1.0], &[f64::NAN]).unwrap_err());
    assert!(e.contains("out-of-distribution score 0 is NaN"), "{e}");
    assert!(fpr_at_tpr(&[1.0], &[2.0], 1.5).is_err());
}

fn meas(nll: &[f64], complexity: Option<&[f64]>) -> Measurements {
    Measurements { unit: NllUnit::BitsPerDim, nll: nll.to_vec(), log_prob: nll.iter().map(|v| -v).collect(), complexity: complexity.map(|c| c.to_vec()) }
}

#[test]
fn score_kinds_from_measurements() {
    let m = meas(&[3.0, 1.0, 5.0], Some(&[2.0, 0.5, 1.0]));
    assert_eq!(m.score(ScoreKind::Nll, 2.0).unwrap(), vec![3.0, 1.0, 5.0]);
    assert_eq!(m.score(ScoreKind::Typicality, 2.0).unwrap(), vec![1.0, 1.0, 3.0]);
    assert_eq!(m.score(ScoreKind::Complexity, 2.0).unwrap(), vec![1.0, 0.5, 4.0]);
    let rows = Measurements { unit: NllUnit::Nats, complexity: None, ..m.clone() };
    assert!(format!("{:#}", rows.score(ScoreKind::Complexity, 0.0).unwrap_err()).contains("images only"));
    assert_eq!(batch_typicality(&[1.0, 3.0, 10.0], 2.5, 2).unwrap(), vec![0.5, 7.5]);

    assert_eq!(ScoreKind::parse_list("all", false).unwrap(), ScoreKind::ALL.to_vec());
    assert_eq!(ScoreKind::parse_list("all", true).unwrap(), vec![ScoreKind::Nll, ScoreKind::Typicality]);
    assert_eq!(ScoreKind::parse_list("complexity, nll,nll", false).unwrap(), vec![ScoreKind::Complexity, ScoreKind::Nll]);
    assert!(format!("{:#}", ScoreKind::parse_list("complexity", true).unwrap_err()).contains("for images"));
    assert!(format!("{:#}", ScoreKind::parse_list("nlll", false).unwrap_err()).contains("unknown score \"nlll\""));
}

#[test]
fn quantiles_thresholds_and_saved_statistics_round_trip() {
    let values: Vec<f64> = (1..=101).map(|v| v as f64).collect();
    let s = Summary::of(&values).unwrap();
    assert!(close(s.mean, 51.0));
    assert!((s.std - (101.0f64 * 102.0 / 12.0).sqrt()).abs() < 1e-9, "sample std {}", s.std);
    assert_eq!((s.quantile(0.0), s.quantile(0.5), s.quantile(1.0)), (1.0, 51.0, 101.0));
    assert!((s.quantile(0.95) - 96.0).abs() < 1e-4 && (s.quantile(0.9505) - 96.05).abs() < 1e-4);

    // Training nll mean 2; held-out nll 1..=101 / 10 with complexity 0.
    let train = meas(&[1.0, 2.0, 3.0], Some(&[0.0, 0.0, 0.0]));
    let held: Vec<f64> = values.iter().map(|v| v / 10.0).collect();
    let heldout = meas(&held, Some(&vec![0.0; 101]));
    let stats = ScoreStats::from_measurements(&train, &heldout, "test", &MeasureOptions::default()).unwrap();
    assert!(close(stats.train_nll_mean().unwrap(), 2.0));
    assert!((stats.threshold_at_fpr(ScoreKind::Nll, 0.05).unwrap() - 9.6).abs() < 1e-5);
    // Typicality of held-out |v/10 − 2|: its 95% quantile.
    let mut typ: Vec<f64> = held.iter().map(|v| (v - 2.0).abs()).collect();
    typ.sort_by(f64::total_cmp);
    assert!((stats.threshold_at_fpr(ScoreKind::Typicality, 0.05).unwrap() - typ[95]).abs() < 1e-5);
    assert!(stats.threshold_at_fpr(ScoreKind::Nll, 0.0).is_err());

    let d = tempfile::tempdir().unwrap();
    let run = RunDir::create(d.path()).unwrap();
    assert!(ScoreStats::load(&run, Checkpoint::Best).unwrap().is_none());
    stats.save(&run, Checkpoint::Best).unwrap();
    let back = ScoreStats::load(&run, Checkpoint::Best).unwrap().unwrap();
    assert_eq!(back, stats);
    assert!(ScoreStats::load(&run, Checkpoint::Last).unwrap().is_none(), "one file per checkpoint");
    std::fs::write(ScoreStats::path(&run, Checkpoint::Best), "{\"format\": 1").unwrap();
    let e = format!("{:#}", ScoreStats::load(&run, Checkpoint::Best).unwrap_err());
    assert!(e.contains("score_stats.json") && e.contains("not a valid"), "{e}");

    // The OOD report's JSON, exactly, kinds in the order asked for.
    let ood = meas(&[20.0, 30.0], Some(&[0.0, 0.0]));
    let rep = ood_report(Some(&stats), &heldout, &ood, &[ScoreKind::Nll, ScoreKind::Complexity]).unwrap();
    let json = serde_json::to_string(&rep).unwrap();
    assert_eq!(json, r#"{"n_in":101,"n_ood":2,"scores":{"nll":{"auroc":1.0,"auprc":1.0,"fpr95":0.0},"complexity":{"auroc":1.0,"auprc":1.0,"fpr95":0.0}}}"#);
}

#[test]
fn png_complexity_orders_simple_below_busy_images() {
    let flat = Tensor::full([1, 1, 16, 16], 128, (Kind::Uint8, tch::Device::Cpu));
    tch::manual_seed(3);
    let noise = Tensor::randint(256, [1, 1, 16, 16], (Kind::Int64, tch::Device::Cpu)).to_kind(Kind::Uint8);
    let l = png_complexity(&Tensor::cat(&[&flat, &noise], 0), 8).unwrap();
    assert!(l[0] < 1.0, "a constant image compresses to under 1 bit/dim: {}", l[0]);
    assert!(l[1] > 7.0, "uniform noise hardly compresses: {}", l[1]);
    // Fewer bits, fewer bits per dimension; RGB accepted, other channel counts not.
    let l4 = png_complexity(&noise, 4).unwrap();
    assert!(l4[0] < l[1] - 2.0, "4-bit noise {} vs 8-bit {}", l4[0], l[1]);
    let rgb = noise.repeat([1, 3, 1, 1]);
    assert_eq!(png_complexity(&rgb, 8).unwrap().len(), 1);
    assert!(png_complexity(&noise.repeat([1, 2, 1, 1]), 8).is_err());
}
