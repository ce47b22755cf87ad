//! FFJORD as a model: the shipped configs build and parse, every `[model.cnf]` key is
//! range-checked with a message naming it, parameter names are stable, flow matching runs on the
//! model, and the CLI trains, evaluates and samples a tiny FFJORD on a 2-D toy.
use flowzoo::config::Config;
use flowzoo::flows::Ctx;
use flowzoo::models::DataInfo;
use flowzoo::session::Session;
use std::process::Command;
use tch::{Device, Kind, Tensor};

const CONFIGS: [&str; 4] = ["configs/ffjord_pinwheel.toml", "configs/ffjord_8gaussians.toml", "configs/ffjord_digits64.toml", "configs/ffjord_pinwheel_fm.toml"];

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn columns(n: usize) -> DataInfo {
    DataInfo { classes: vec![], columns: (0..n).map(|i| i.to_string()).collect() }
}

fn err_of(text: &str) -> String {
    format!("{:#}", Config::from_toml_str(text, "c.toml").unwrap_err())
}

const TABULAR: &str = "[data]\nkind = \"tabular\"\n[model]\nkind = \"ffjord\"\n[model.cnf]\n";

#[test]
fn shipped_configs_parse_and_build() {
    for (f, dim) in CONFIGS.iter().zip([2, 2, 64, 2]) {
        let cfg = Config::load(&root().join(f)).unwrap_or_else(|e| panic!("{f}: {e:#}"));
        assert!(root().join(&cfg.data.path).is_file(), "{f}: data {} missing", cfg.data.path);
        let sess = Session::new_for(&cfg, columns(dim), Device::Cpu).unwrap();
        assert!(sess.model.describe().starts_with("FFJORD"), "{f}");
        let mut back = Config::from_toml_str(&cfg.to_toml().unwrap(), "resolved").unwrap();
        back.file_dir = cfg.file_dir.clone(); // where the file was read from, not a key
        assert_eq!(back, cfg, "{f}: the resolved config must round-trip");
    }
}

#[test]
fn every_cnf_key_is_checked_by_name() {
    let cases = [
        ("rtol = 0.0", "training solver: solver, rtol, atol, steps): rtol = 0"),
        ("eval_atol = -1.0", "evaluation solver: eval_solver, eval_rtol, eval_atol, eval_steps): atol = -1"),
        ("solver = \"rk4\"\nsteps = 0", "training solver: solver, rtol, atol, steps): steps = 0"),
        ("max_steps = 0", "max_steps = 0 must be >= 1"),
        ("min_step = 0.0", "min_step = 0 must be in (0, 1)"),
        ("hidden = [64, 0]", "model.cnf.hidden = [64, 0]"),
        ("time_length = 0.0", "model.cnf.time_length = 0"),
        ("time_frequencies = 0", "model.cnf.time_frequencies = 0"),
        ("kinetic_weight = -1.0", "model.cnf.kinetic_weight = -1"),
        ("jacobian_weight = inf", "model.cnf.jacobian_weight = inf"),
    ];
    for (line, needle) in cases {
        let e = err_of(&format!("{TABULAR}{line}\n"));
        assert!(e.contains(needle), "{line}: {e}");
    }
    // String choices list what they accept; unknown keys are named with their line.
    for (line, needles) in [
        ("trace = \"approx\"", &["approx", "auto", "exact", "hutchinson"][..]),
        ("solver = \"rk45\"", &["rk45", "dopri5", "rk4", "euler"]),
        ("noise = \"uniform\"", &["uniform", "rademacher", "gaussian"]),
        ("activation = \"relu\"", &["relu", "softplus", "tanh", "elu"]),
        ("layer_type = \"hyper\"", &["hyper", "concatsquash", "mlp"]),
        ("error_norm = \"l1\"", &["l1", "rms", "max"]),
        ("rtoll = 1e-3", &["rtoll", "line 6"]),
    ] {
        let e = err_of(&format!("{TABULAR}{line}\n"));
        assert!(needles.iter().all(|n| e.contains(n)), "{line}: {e}");
    }
    // Images (the multi-scale model) check the same keys, and refuse the vector-only field.
    assert!(Config::from_toml_str("[model]\nkind = \"ffjord\"\n", "c.toml").is_ok());
    let e = err_of("[model]\nkind = \"ffjord\"\n[model.cnf]\ntime_length = 0\n");
    assert!(e.contains("model.cnf.time_length = 0"), "{e}");
    let e = err_of("[model]\nkind = \"ffjord\"\n[model.cnf]\nlayer_type = \"mlp\"\n");
    assert!(e.contains("model.cnf.layer_type") && e.contains("on vectors"), "{e}");
    // --set reaches the nested table.
    let cfg = Config::load(&root().join(CONFIGS[0])).unwrap();
    let c = cfg.with_overrides(&["model.cnf.rtol=1e-3".into(), "model.cnf.hidden=[8, 8]".into(), "model.cnf.trace=hutchinson".into()]).unwrap();
    assert_eq!((c.model.cnf.rtol, c.model.cnf.hidden.clone()), (1e-3, vec![8, 8]));
    let e = format!("{:#}", cfg.with_overrides(&["model.cnf.atol=0".into()]).unwrap_err());
    assert!(e.contains("atol = 0"), "{e}");
}

fn tiny(blocks: i64, extra: &[&str]) -> Config {
    let mut sets: Vec<String> = vec![
        format!("model.blocks={blocks}"),
        "model.cnf.hidden=[8, 8]".into(),
        "model.cnf.solver=rk4".into(),
        "model.cnf.steps=4".into(),
        "model.cnf.eval_solver=rk4".into(),
        "model.cnf.eval_steps=4".into(),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    Config::load(&root().join(CONFIGS[0])).unwrap().with_overrides(&sets).unwrap()
}

#[test]
fn parameter_names_are_stable() {
    let sess = Session::new_for(&tiny(2, &["model.norm=actnorm"]), columns(2), Device::Cpu).unwrap();
    let mut names: Vec<String> = sess.vs.variables().into_keys().collect();
    names.sort();
    let mut want = vec!["standardize.mean".to_string(), "standardize.std".into()];
    for b in 0..2 {
        want.push(format!("blocks.{b}.cnf.sqrt_end_time"));
        want.extend([format!("blocks.{b}.norm.bias"), format!("blocks.{b}.norm.initialized"), format!("blocks.{b}.norm.logs")]);
        for i in 0..3 {
            for p in ["linear.weight", "linear.bias", "gate.weight", "gate.bias", "hyper_bias.weight"] {
                want.push(format!("blocks.{b}.cnf.net.{i}.{p}"));
            }
        }
    }
    want.sort();
    assert_eq!(names, want);
    let mlp = Session::new_for(&tiny(1, &["model.cnf.layer_type=mlp"]), columns(2), Device::Cpu).unwrap();
    let w0 = &mlp.vs.variables()["blocks.0.cnf.net.0.linear.weight"];
    assert_eq!(w0.size(), [8, 2 + 2 * 3], "time features, then z");
}

#[test]
fn the_model_scores_samples_and_trains_by_flow_matching() {
    tch::manual_seed(0);
    let sess = Session::new_for(&tiny(1, &[]), columns(2), Device::Cpu).unwrap();
    let m = sess.model.as_ref();
    let x = Tensor::randn([5, 2], (Kind::Float, Device::Cpu));
    let lp = m.log_prob(&x, &Ctx::eval()).unwrap();
    assert_eq!(lp.size(), [5]);
    assert!(bool::try_from(lp.isfinite().all()).unwrap());
    let s = m.sample(7, 1.0, &Ctx::eval(), (Kind::Float, Device::Cpu)).unwrap();
    assert_eq!(s.size(), [7, 2]);
    let loss = m.flow_matching_loss(&x, &Ctx::train()).unwrap();
    assert!(loss.dim() == 0 && loss.double_value(&[]).is_finite());
    let two = Session::new_for(&tiny(2, &[]), columns(2), Device::Cpu).unwrap();
    let e = two.model.flow_matching_loss(&x, &Ctx::train()).unwrap_err().to_string();
    assert!(e.contains("model.blocks = 1"), "{e}");
    let realnvp = Config::load(&root().join("configs/realnvp_moons.toml")).unwrap();
    let e = Session::new_for(&realnvp, columns(2), Device::Cpu).unwrap().model.flow_matching_loss(&x, &Ctx::train()).unwrap_err().to_string();
    assert!(e.contains("no flow-matching objective"), "{e}");
}

#[test]
fn the_cli_trains_evaluates_and_samples_a_tiny_ffjord() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let run_s = run.to_str().unwrap();
    let flowzoo = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_flowzoo")).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
        assert!(o.status.success(), "flowzoo {args:?}:\n{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let mut args = vec!["train", "--config", CONFIGS[1], "--out", run_s, "-q"];
    for s in [
        "model.cnf.hidden=[8, 8]",
        "model.cnf.rtol=1e-3",
        "model.cnf.atol=1e-3",
        "model.cnf.eval_solver=rk4",
        "model.cnf.eval_steps=4",
        "train.max_steps=4",
        "train.eval_every=2",
        "train.checkpoint_every=2",
        "train.threads=1",
        "train.device=cpu",
    ] {
        args.extend(["--set", s]);
    }
    let out = flowzoo(&args);
    assert!(out.contains("trained 4 steps"), "{out}");
    assert!(run.join("samples/final.png").is_file() && run.join("best.safetensors").is_file());
    let json: serde_json::Value = serde_json::from_str(&flowzoo(&["eval", "--model", run_s, "--json"])).unwrap();
    assert_eq!(json["n"], 2000);
    assert!(json["mean_log_prob"].as_f64().unwrap().is_finite(), "{json}");
    let csv = d.path().join("s.csv");
    flowzoo(&["sample", "--model", run_s, "-n", "10", "-o", csv.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 11);
    let info = flowzoo(&["info", "--model", run_s]);
    assert!(info.contains("FFJORD"), "{info}");
}
