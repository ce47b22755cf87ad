//! Conditional density estimation on tabular data: `data.context_columns` and
//! `data.label_column` from the config to the table, every tabular model reading the context,
//! `flowzoo train / eval / sample / export` end to end on the rotated moons (the context moves
//! the density), and every user error naming what is wrong.
mod common;
use common::{fails, ok};
use flowzoo::config::{Config, DataKind};
use flowzoo::data::labels::{label_classes, label_indices};
use flowzoo::data::tabular::{load_table, split_table};
use flowzoo::flows::testing::perturb;
use flowzoo::models::{self, DataInfo};
use std::path::Path;

use tch::{nn::VarStore, Device, Kind, Tensor};

fn tabular(sets: &[&str]) -> anyhow::Result<Config> {
    let mut c = Config::default();
    c.data.kind = DataKind::Tabular;
    c.model.kind = flowzoo::config::ModelKind::Maf;
    c.with_overrides(&sets.iter().map(|s| s.to_string()).collect::<Vec<_>>())
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn config_keys_are_checked_by_name() {
    let err = |sets: &[&str]| format!("{:#}", tabular(sets).unwrap_err());
    assert!(err(&["data.context_columns=[\"c\"]", "data.label_column=y"]).contains("condition on one or the other"));
    assert!(err(&["data.context_columns=[\"c\", \"c\"]"]).contains("names \"c\" twice"));
    assert!(err(&["data.context_columns=[\"\"]"]).contains("data.context_columns[0] is empty"));
    assert!(err(&["data.columns=[\"x\", \"c\"]", "data.context_columns=[\"c\"]"]).contains("\"c\" is also in data.columns"));
    let images = Config::default().with_overrides(&["data.label_column=y".to_string()]).unwrap_err();
    assert!(format!("{images:#}").contains("data.label_column conditions a tabular model"), "{images:#}");
    let c = tabular(&["data.context_columns=[\"c\"]"]).unwrap();
    assert_eq!(c.data.conditioning_columns(), vec!["c".to_string()]);
    assert_eq!(tabular(&["data.label_column=y"]).unwrap().data.conditioning_key(), "data.label_column");
}

#[test]
fn tables_split_their_context_with_their_rows() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("t.csv");
    let mut text = String::from("a,c,b,y\n");
    for i in 0..40 {
        text += &format!("{i},{},{},{}\n", 100 + i, -i, i % 3);
    }
    write(&f, &text);
    // By name, and by index; the modelled columns are the others.
    for ctx in ["c", "1"] {
        let c = tabular(&[&format!("data.context_columns=[\"{ctx}\", \"y\"]")]).unwrap();
        let t = load_table(&f, &c.data).unwrap();
        assert_eq!(t.columns, vec!["a", "b"]);
        assert_eq!(t.context_columns, vec!["c", "y"]);
        let ctx = t.context.as_ref().unwrap();
        assert_eq!(ctx.size(), vec![40, 2]);
        let s = split_table(&t, &c.data, 3).unwrap();
        let [tr, va, te] = s.context.as_ref().unwrap();
        // Each context row stays with its own row (c = a + 100, y = a mod 3).
        for (rows, ctx) in [(&s.train, tr), (&s.val, va), (&s.test, te)] {
            assert_eq!(rows.size()[0], ctx.size()[0]);
            let a = rows.select(1, 0);
            assert!(ctx.select(1, 0).equal(&(&a + 100.0)));
            assert!(ctx.select(1, 1).equal(&a.fmod(3.0)));
        }
    }
    let label = tabular(&["data.label_column=y", "data.columns=[\"a\"]"]).unwrap();
    let t = load_table(&f, &label.data).unwrap();
    assert_eq!((t.columns.clone(), t.context_columns.clone()), (vec!["a".to_string()], vec!["y".to_string()]));
    let classes = label_classes(t.context.as_ref().unwrap(), "y").unwrap();
    assert_eq!(classes, vec!["0", "1", "2"]);
    let idx = label_indices(&Tensor::from_slice(&[2.0, 0.0]), &classes, "rows").unwrap();
    assert_eq!(Vec::<i64>::try_from(&idx).unwrap(), vec![2, 0]);
    let e = format!("{:#}", label_indices(&Tensor::from_slice(&[1.0, 7.0]), &classes, "--csv x.csv").unwrap_err());
    assert!(e.contains("--csv x.csv: row 2 has the label 7, which is not one of the model's classes (0, 1, 2)"), "{e}");
    let many = Tensor::arange(2000, (Kind::Double, Device::Cpu));
    assert!(format!("{:#}", label_classes(&many, "y").unwrap_err()).contains("2000 distinct values"));
    // Missing columns are named with the key and what the file has.
    let e = format!("{:#}", load_table(&f, &tabular(&["data.context_columns=[\"speed\"]"]).unwrap().data).err().unwrap());
    assert!(e.contains("data.context_columns names \"speed\", which is neither a column (a, c, b, y)"), "{e}");
    let e = format!("{:#}", load_table(&f, &tabular(&["data.context_columns=[\"a\", \"b\", \"c\", \"y\"]"]).unwrap().data).err().unwrap());
    assert!(e.contains("no column is left to model"), "{e}");
    let e = format!("{:#}", load_table(&f, &tabular(&["data.context_columns=[\"c\", \"1\"]"]).unwrap().data).err().unwrap());
    assert!(e.contains("names column \"c\" twice"), "{e}");
}

/// Every tabular model built with a context reads it: the density of the same points changes
/// with the context, and a missing context is an error (never a silent unconditional model).
#[test]
fn every_tabular_model_reads_its_context() {
    let _rng = common::rng_lock();
    let info = DataInfo { classes: vec![], columns: vec!["x".into(), "y".into()] };
    for sets in [
        &["model.kind=realnvp", "model.blocks=2", "model.width=8"][..],
        &["model.kind=nice", "model.blocks=2", "model.width=8"],
        &["model.kind=ffjord", "model.blocks=1", "model.cnf.hidden=[8]"],
        &["model.kind=maf", "model.blocks=2", "model.width=8"],
        &["model.kind=iaf", "model.blocks=2", "model.width=8"],
        &["model.kind=nsf", "model.blocks=2", "model.width=8"],
        &["model.kind=nsf", "model.structure=coupling", "model.blocks=2", "model.width=8"],
    ] {
        let mut all: Vec<&str> = sets.to_vec();
        all.push("data.context_columns=[\"c\", \"d\"]");
        let cfg = tabular(&all).unwrap();
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let m = models::build_for(&cfg, vs.root(), &info).unwrap();
        perturb(&vs, 0.3);
        let _g = tch::no_grad_guard();
        let x = Tensor::randn([5, 2], (Kind::Float, Device::Cpu));
        let (c1, c2) = (Tensor::zeros([5, 2], (Kind::Float, Device::Cpu)), Tensor::ones([5, 2], (Kind::Float, Device::Cpu)));
        let lp = |c: &Tensor| m.log_prob(&x, &flowzoo::flows::Ctx::eval().with_cond(Some(c))).unwrap();
        let moved = (lp(&c1) - lp(&c2)).abs().max().double_value(&[]);
        assert!(moved > 1e-4, "{sets:?}: the context does not change the density ({moved:e})");
        assert!(m.describe().contains("context 2"), "{sets:?}: {}", m.describe());
        let err = m.log_prob(&x, &flowzoo::flows::Ctx::eval()).err().expect("a conditional model without its context");
        assert!(format!("{err:#}").contains("conditional"), "{sets:?}: {err:#}");
    }
    // A label column: the one-hot of the run's classes, as a class-conditional model.
    let cfg = tabular(&["model.kind=maf", "model.blocks=1", "model.width=8", "data.label_column=y"]).unwrap();
    let vs = VarStore::new(Device::Cpu);
    let m = models::build_for(&cfg, vs.root(), &DataInfo { classes: vec!["0".into(), "5".into(), "9".into()], ..info.clone() }).unwrap();
    assert_eq!(m.n_classes(), Some(3));
    let err = models::build_for(&cfg, VarStore::new(Device::Cpu).root(), &info).err().unwrap();
    assert!(format!("{err:#}").contains("needs the label's classes"));
}

/// The rotated moons end to end: a conditional NSF trains from the CLI, its density follows
/// the context (each row scores higher under its own rotation than under the opposite one),
/// eval scores rows given their context, sample draws at a context (from the flag or a CSV),
/// the export takes the context, and every misuse is a clear error.
#[test]
fn conditional_nsf_from_the_command_line() {
    let d = tempfile::tempdir().unwrap();
    let p = |name: &str| d.path().join(name).to_str().unwrap().to_string();
    let data = p("rot.csv");
    ok(&["toy", "moons", "-n", "3000", "--seed", "1", "--rotate", "-o", &data]);
    let run = p("run");
    let sets = [
        "--set", "model.blocks=2", "--set", "model.width=32", "--set", "train.max_steps=500", "--set", "train.eval_every=250",
        "--set", "train.checkpoint_every=250", "--set", "train.threads=1", "--set", "train.device=\"cpu\"", "--set",
    ];
    let path_set = format!("data.path={data}");
    let mut args = vec!["train", "--config", "configs/nsf_moons_conditional.toml", "--out", &run, "-q"];
    args.extend_from_slice(&sets);
    args.push(&path_set);
    ok(&args);
    assert!(Path::new(&run).join("samples/final.png").is_file(), "the conditional 2-D plot");
    let names: Vec<String> = flowzoo::io::read_safetensors(&Path::new(&run).join("best.safetensors")).unwrap().0.into_keys().collect();
    assert!(names.contains(&"context_standardize.mean".to_string()) && names.contains(&"context_standardize.std".to_string()), "{names:?}");

    // The density follows the context: the same rows with the opposite rotation score lower.
    let text = std::fs::read_to_string(&data).unwrap();
    let mut own = String::from("x,y,rotation\n");
    let mut turned = own.clone();
    for line in text.lines().skip(1).take(600) {
        let v: Vec<f64> = line.split(',').map(|f| f.parse().unwrap()).collect();
        own += &format!("{},{},{}\n", v[0], v[1], v[2]);
        turned += &format!("{},{},{}\n", v[0], v[1], (v[2] + 0.5) % 1.0);
    }
    write(Path::new(&p("own.csv")), &own);
    write(Path::new(&p("turned.csv")), &turned);
    let score = |f: &str| -> f64 {
        let j: serde_json::Value = serde_json::from_str(ok(&["eval", "--model", &run, "--csv", f, "--json"]).trim()).unwrap();
        assert_eq!(j["n"], 600);
        j["mean_log_prob"].as_f64().unwrap()
    };
    let (a, b) = (score(&p("own.csv")), score(&p("turned.csv")));
    assert!(a > b + 0.5, "log p(x | own rotation) = {a:.3} should beat log p(x | rotation + 1/2) = {b:.3}");

    // Sampling at one context, and one context per row of a CSV (with or without a header).
    ok(&["sample", "--model", &run, "--context", "0.25", "-n", "7", "-o", &p("s.csv")]);
    let s = std::fs::read_to_string(p("s.csv")).unwrap();
    assert!(s.starts_with("x,y,rotation\n") && s.lines().count() == 8 && s.lines().skip(1).all(|l| l.ends_with(",0.250000")), "{s}");
    write(Path::new(&p("ctx.csv")), "rotation\n0\n0.5\n0.75\n");
    write(Path::new(&p("bare.csv")), "0.1\n0.2\n");
    ok(&["sample", "--model", &run, "--context-csv", &p("ctx.csv"), "-o", &p("s2.csv")]);
    let s2 = std::fs::read_to_string(p("s2.csv")).unwrap();
    assert_eq!(s2.lines().count(), 4, "{s2}");
    assert!(s2.lines().nth(2).unwrap().ends_with(",0.500000"), "{s2}");
    ok(&["sample", "--model", &run, "--context-csv", &p("bare.csv"), "-o", &p("s3.csv")]);
    ok(&["sample", "--model", &run, "--context-csv", &p("ctx.csv"), "-n", "300", "-o", &p("s.png")]);
    assert!(Path::new(&p("s.png")).is_file());

    // Errors name what is wrong.
    fails(&["sample", "--model", &run, "-o", &p("x.csv")], "pass --context V1,V2,... (1 value(s)) or --context-csv FILE");
    fails(&["sample", "--model", &run, "--context", "0.5,1", "-o", &p("x.csv")], "this model reads 1 context value(s) (rotation), got 2");
    fails(&["sample", "--model", &run, "--context", "half", "-o", &p("x.csv")], "\"half\" is not a finite number");
    fails(&["sample", "--model", &run, "--label", "1", "-o", &p("x.csv")], "not on a label");
    write(Path::new(&p("wrong.csv")), "speed\n1\n");
    fails(&["sample", "--model", &run, "--context-csv", &p("wrong.csv"), "-o", &p("x.csv")], "needs the context column(s) rotation");
    write(Path::new(&p("xy.csv")), "x,y\n0,0\n");
    fails(&["eval", "--model", &run, "--csv", &p("xy.csv")], "data.context_columns names \"rotation\", which is neither a column (x, y)");
    fails(&["eval", "--model", &run, "--tensors", "none.safetensors:x"], "score rows with their context from a table");

    // The export takes the context (`log_prob(x, context)`; checked against the model when
    // written; tests/python checks it from PyTorch).
    let out = ok(&["export", "--model", &run, "--torchscript", &p("m.pt")]);
    assert!(out.contains("context 1"), "{out}");
    let m = tch::CModule::load(p("m.pt")).unwrap();
    // (Away from the origin, about which the context turns the density.)
    let x = Tensor::from_slice(&[0.8f32, 0.3, -0.5, 0.6, 0.2, -0.9]).reshape([3, 2]);
    let lp = |c: f64| m.method_is("log_prob", &[tch::IValue::Tensor(x.shallow_clone()), tch::IValue::Tensor(Tensor::from_slice(&[c as f32]))]);
    let (l0, l1) = (lp(0.0).unwrap(), lp(0.5).unwrap());
    let (tch::IValue::Tensor(l0), tch::IValue::Tensor(l1)) = (l0, l1) else { panic!("log_prob returns a tensor") };
    assert!((l0 - l1).abs().max().double_value(&[]) > 1e-3, "the exported density ignores its context");
    assert!(m.method_is("log_prob", &[tch::IValue::Tensor(x.shallow_clone())]).is_err(), "a missing context is an error");

    // An unconditional run refuses a context.
    let plain = p("plain");
    let mut args = vec!["train", "--config", "configs/nsf_moons.toml", "--out", &plain, "-q", "--set", "train.max_steps=2", "--set", "train.eval_every=1"];
    args.extend_from_slice(&["--set", "train.threads=1", "--set", "model.blocks=1", "--set", "model.width=8"]);
    ok(&args);
    fails(&["sample", "--model", &plain, "--context", "1", "-o", &p("x.csv")], "this model is not conditional");
}

/// A label column end to end: classes from the file, `--label` and `--context` (the label's
/// value) choose the class, a label that is no class is named, samples carry their label, and
/// the export takes class indices as `labels`, matching the model.
#[test]
fn label_conditional_maf_from_the_command_line() {
    let d = tempfile::tempdir().unwrap();
    let p = |name: &str| d.path().join(name).to_str().unwrap().to_string();
    let mut text = String::from("x,y,moon\n");
    let moons = std::fs::read_to_string("data/toys/moons.csv").unwrap();
    for (i, line) in moons.lines().skip(1).take(1200).enumerate() {
        // The toy alternates its two moons; label them 3 and 8.
        text += &format!("{line},{}\n", if i % 2 == 0 { 3 } else { 8 });
    }
    write(Path::new(&p("lab.csv")), &text);
    let run = p("run");
    let path_set = format!("data.path={}", p("lab.csv"));
    ok(&[
        "train", "--config", "configs/maf_moons.toml", "--out", &run, "-q", "--set", &path_set, "--set", "data.label_column=moon",
        "--set", "model.blocks=2", "--set", "model.width=16", "--set", "train.max_steps=300", "--set", "train.eval_every=150",
        "--set", "train.threads=1",
    ]);
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(Path::new(&run).join("state.json")).unwrap()).unwrap();
    assert_eq!(state["classes"], serde_json::json!(["3", "8"]));
    // Samples of each moon lie on its side: the upper moon (3) has larger y on average.
    let mean_y = |args: &[&str]| -> f64 {
        let mut all = vec!["sample", "--model", &run, "-n", "400", "-o", args[0]];
        all.extend_from_slice(&args[1..]);
        ok(&all);
        let s = std::fs::read_to_string(args[0]).unwrap();
        let ys: Vec<f64> = s.lines().skip(1).map(|l| l.split(',').nth(1).unwrap().parse().unwrap()).collect();
        ys.iter().sum::<f64>() / ys.len() as f64
    };
    let (upper, lower) = (mean_y(&[&p("a.csv"), "--label", "0"]), mean_y(&[&p("b.csv"), "--context", "8"]));
    assert!(upper > lower + 0.3, "moon 3 at y {upper:.2}, moon 8 at y {lower:.2}");
    assert!(std::fs::read_to_string(p("b.csv")).unwrap().lines().skip(1).all(|l| l.ends_with(",8.000000")));
    // Without a label the samples cycle through the classes, each row with its label.
    ok(&["sample", "--model", &run, "-n", "4", "-o", &p("c.csv")]);
    let c = std::fs::read_to_string(p("c.csv")).unwrap();
    let labels: Vec<&str> = c.lines().skip(1).map(|l| l.rsplit(',').next().unwrap()).collect();
    assert_eq!(labels, vec!["3.000000", "8.000000", "3.000000", "8.000000"], "{c}");
    fails(&["sample", "--model", &run, "--context", "5", "-o", &p("x.csv")], "the label 5, which is not one of the model's classes (3, 8)");
    fails(&["sample", "--model", &run, "--label", "2", "-o", &p("x.csv")], "--label 2: the model has classes 0..1 (3, 8)");
    let j: serde_json::Value = serde_json::from_str(ok(&["eval", "--model", &run, "--csv", &p("lab.csv"), "--json"]).trim()).unwrap();
    assert_eq!(j["n"], 1200);
    // The export: labels are class indices; the module matches the model (checked on export).
    let out = ok(&["export", "--model", &run, "--torchscript", &p("m.pt")]);
    assert!(out.contains("max |log_prob difference|"), "{out}");
    let m = tch::CModule::load(p("m.pt")).unwrap();
    let x = Tensor::from_slice(&[0.0f32, 0.5, 0.5, -0.5]).reshape([2, 2]);
    let lp = |k: i64| match m.method_is("log_prob", &[tch::IValue::Tensor(x.shallow_clone()), tch::IValue::Tensor(Tensor::from_slice(&[k, k]))]).unwrap() {
        tch::IValue::Tensor(t) => t,
        v => panic!("{v:?}"),
    };
    assert!((lp(0) - lp(1)).abs().max().double_value(&[]) > 0.1);
}
