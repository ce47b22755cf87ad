//! Training FFJORD from the CLI: the layers' penalties join the loss and the solver's function
//! evaluations reach metrics.csv (and an older metrics.csv without those columns still
//! resumes), `train.objective = "flow_matching"` lowers its loss and gives a finite exact
//! log-likelihood, the objective's spellings, and `flowzoo sample` on an FFJORD run.
use flowzoo::config::{Config, Objective};
use flowzoo::train::MetricsLog;
use std::path::Path;
use std::process::Command;

fn flowzoo(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_flowzoo")).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
    assert!(o.status.success(), "flowzoo {args:?}:\n{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// `flowzoo train` on pinwheel with a tiny field and the given overrides.
fn train(run: &Path, sets: &[&str]) {
    let mut args = vec!["train", "--config", "configs/ffjord_pinwheel.toml", "--out", run.to_str().unwrap(), "-q"];
    let common = ["model.cnf.hidden=[8, 8]", "train.threads=1", "train.device=cpu", "train.checkpoint_every=0"];
    for s in common.iter().chain(sets) {
        args.extend(["--set", s]);
    }
    flowzoo(&args);
}

fn metrics(run: &Path) -> MetricsLog {
    MetricsLog::read(&run.join("metrics.csv"), MetricsLog::TABULAR_COLUMNS, i64::MAX).unwrap()
}

/// The column's numbers, `None` for empty fields.
fn column(m: &MetricsLog, name: &str) -> Vec<Option<f64>> {
    let j = m.columns.iter().position(|c| c == name).unwrap_or_else(|| panic!("no column {name}"));
    m.rows.iter().map(|r| r[j].parse::<f64>().ok()).collect()
}

const FAST_SOLVER: [&str; 4] = ["model.cnf.rtol=1e-3", "model.cnf.atol=1e-3", "model.cnf.eval_rtol=1e-4", "model.cnf.eval_atol=1e-4"];

#[test]
fn penalties_join_the_loss_and_function_evaluations_reach_the_metrics() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("reg");
    let mut sets = FAST_SOLVER.to_vec();
    sets.extend(["model.cnf.kinetic_weight=0.1", "model.cnf.jacobian_weight=0.1", "train.max_steps=6", "train.eval_every=3", "train.log_every=1"]);
    train(&run, &sets);
    let m = metrics(&run);
    assert_eq!(m.rows.len(), 6, "{:?}", m.rows);
    let (nll, loss, penalty) = (column(&m, "train_nll"), column(&m, "train_loss"), column(&m, "penalty"));
    for i in 0..6 {
        let (n, l, p) = (nll[i].unwrap(), loss[i].unwrap(), penalty[i].unwrap());
        assert!(p > 0.0 && (l - n - p).abs() < 1e-5, "row {i}: loss {l} = NLL {n} + penalty {p}");
    }
    // Dormand–Prince: 6 evaluations per accepted step plus the first and the probe forward; the
    // backward pass differentiates the accepted steps' stages only.
    let (fwd, bwd) = (column(&m, "nfe_forward"), column(&m, "nfe_backward"));
    for (f, b) in fwd.iter().zip(&bwd) {
        let (f, b) = (f.unwrap(), b.unwrap());
        assert!(f >= 8.0 && b >= 6.0 && b < f && b % 6.0 == 0.0, "NFE {f} + {b}");
    }
    let eval_nfe = column(&m, "eval_nfe");
    let val = column(&m, "val_nll");
    for (e, v) in eval_nfe.iter().zip(&val) {
        assert_eq!(e.is_some(), v.is_some(), "eval_nfe on the evaluation rows only: {eval_nfe:?}");
    }
    assert!(eval_nfe[2].unwrap() >= 8.0);

    // Without weights nothing is integrated or added: the penalty column stays empty.
    let plain = d.path().join("plain");
    let mut sets = FAST_SOLVER.to_vec();
    sets.extend(["train.max_steps=2", "train.eval_every=2"]);
    train(&plain, &sets);
    let m = metrics(&plain);
    assert!(column(&m, "penalty").iter().all(Option::is_none));
    assert!(column(&m, "nfe_forward").iter().all(Option::is_some));

    // A metrics.csv written before these columns existed resumes, its rows with them empty.
    let path = run.join("metrics.csv");
    let text = std::fs::read_to_string(&path).unwrap();
    let old: Vec<String> = text.lines().map(|l| l.split(',').take(10).collect::<Vec<_>>().join(",")).collect();
    std::fs::write(&path, old.join("\n") + "\n").unwrap();
    flowzoo(&["train", "--resume", "--out", run.to_str().unwrap(), "-q", "--set", "train.max_steps=8"]);
    let m = metrics(&run);
    let fwd = column(&m, "nfe_forward");
    assert_eq!(fwd.len(), 8);
    assert!(fwd[..6].iter().all(Option::is_none) && fwd[6..].iter().all(Option::is_some), "{fwd:?}");
}

#[test]
fn a_flow_matching_run_lowers_its_loss_and_scores_exactly() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("fm");
    let r = run.to_str().unwrap();
    // The MLP field learns fastest at the start; the evaluation solver is exact (trace) RK4.
    let sets = [
        "train.objective=flow_matching",
        "model.cnf.layer_type=mlp",
        "model.cnf.hidden=[32, 32]",
        "model.cnf.eval_solver=rk4",
        "model.cnf.eval_steps=8",
        "train.lr=0.003",
        "train.max_steps=600",
        "train.eval_every=300",
        "train.log_every=100",
    ];
    train(&run, &sets);
    let m = metrics(&run);
    let loss: Vec<f64> = column(&m, "train_loss").into_iter().map(Option::unwrap).collect();
    assert!(loss[loss.len() - 1] < 0.9 * loss[0], "the flow-matching loss went from {} to {}", loss[0], loss[loss.len() - 1]);
    // One network call per step, no likelihood in training.
    assert!(column(&m, "nfe_forward").iter().all(|f| *f == Some(1.0)));
    assert!(column(&m, "nfe_backward").iter().all(Option::is_none) && column(&m, "train_nll").iter().all(Option::is_none));
    let val: Vec<f64> = column(&m, "val_nll").into_iter().flatten().collect();
    assert!(val.len() == 2 && val.iter().all(|v| v.is_finite()), "{val:?}");
    // flowzoo eval: the exact log-likelihood with the ODE, better than the untrained field's.
    let json: serde_json::Value = serde_json::from_str(&flowzoo(&["eval", "--model", r, "--json"])).unwrap();
    let lp = json["mean_log_prob"].as_f64().unwrap();
    let untrained = d.path().join("untrained");
    let mut zero = sets.to_vec();
    zero.extend(["train.max_steps=1", "train.lr=1e-9"]);
    train(&untrained, &zero);
    let json0: serde_json::Value = serde_json::from_str(&flowzoo(&["eval", "--model", untrained.to_str().unwrap(), "--json"])).unwrap();
    let lp0 = json0["mean_log_prob"].as_f64().unwrap();
    assert!(lp.is_finite() && lp > lp0 + 0.2, "test log-likelihood {lp} after flow matching, {lp0} before");
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("objective = \"flow_matching\""), "{config}");
}

#[test]
fn the_objective_reads_mle_and_its_old_spelling_and_flow_matching_needs_ffjord() {
    let base = "[data]\nkind = \"tabular\"\n[model]\nkind = \"ffjord\"\nblocks = 1\nnorm = \"none\"\n[train]\n";
    for (word, want) in [("mle", Objective::Likelihood), ("likelihood", Objective::Likelihood), ("flow_matching", Objective::FlowMatching)] {
        let cfg = Config::from_toml_str(&format!("{base}objective = \"{word}\"\n"), "c.toml").unwrap();
        assert_eq!(cfg.train.objective, want, "{word}");
    }
    let cfg = Config::from_toml_str(&format!("{base}objective = \"likelihood\"\n"), "c.toml").unwrap();
    assert!(cfg.to_toml().unwrap().contains("objective = \"mle\""));
    let err = |text: &str| format!("{:#}", Config::from_toml_str(text, "c.toml").unwrap_err());
    let e = err("[data]\nkind = \"tabular\"\n[model]\nkind = \"realnvp\"\n[train]\nobjective = \"flow_matching\"\n");
    assert!(e.contains("train.objective") && e.contains("model.kind = \"ffjord\"") && e.contains("line"), "{e}");
    let e = err("[data]\nkind = \"tabular\"\n[model]\nkind = \"ffjord\"\nblocks = 2\nnorm = \"none\"\n[train]\nobjective = \"flow_matching\"\n");
    assert!(e.contains("model.blocks = 2"), "{e}");
    let e = err(&format!("{base}objective = \"mse\"\n"));
    assert!(e.contains("mle") && e.contains("flow_matching"), "{e}");
}

#[test]
fn sampling_an_ffjord_run_integrates_back_and_draws_the_density() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("s");
    let mut sets = FAST_SOLVER.to_vec();
    sets.extend(["train.max_steps=2", "train.eval_every=2"]);
    train(&run, &sets);
    let png = d.path().join("s.png");
    let out = flowzoo(&["sample", "--model", run.to_str().unwrap(), "-n", "300", "-o", png.to_str().unwrap()]);
    assert!(out.contains("and the learned density"), "{out}");
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (610, 300));
    let csv = d.path().join("s.csv");
    flowzoo(&["sample", "--model", run.to_str().unwrap(), "-n", "5", "--seed", "3", "-o", csv.to_str().unwrap()]);
    let rows: Vec<Vec<f64>> = std::fs::read_to_string(&csv).unwrap().lines().skip(1).map(|l| l.split(',').map(|v| v.parse().unwrap()).collect()).collect();
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().flatten().all(|v| v.is_finite()));
}
