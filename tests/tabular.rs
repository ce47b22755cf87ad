//! Tabular models and data: the new layers, RealNVP and NICE as wholes, the loaders' bad
//! inputs, standardisation, early stopping, and the CLI on vectors.
use flowzoo::config::{BadRows, Config, DataConfig, DataKind};
use flowzoo::data::tabular::{load_table, split_table};
use flowzoo::flows::testing::{check_flow, perturb};
use flowzoo::flows::*;
use flowzoo::models::{self, DataInfo};
use std::path::Path;
use std::process::Command;
use tch::{nn::VarStore, Device, Kind, Tensor};

fn assert_ok(name: &str, flow: &dyn Flow, x: &Tensor, ctx: &Ctx) {
    let c = check_flow(flow, x, ctx).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    assert!(c.inverse_err < 1e-10, "{name}: inverse error {}", c.inverse_err);
    assert!(c.logdet_err < 1e-6, "{name}: log-det differs from brute force by {}", c.logdet_err);
    assert!(c.inverse_logdet_err < 1e-10, "{name}: forward + inverse log-det = {}", c.inverse_logdet_err);
}

/// Moves the batch-norm running statistics off (0, 1) too.
fn perturb_buffers(vs: &VarStore) {
    let _g = tch::no_grad_guard();
    for (name, mut t) in flowzoo::flows::testing::sorted_variables(vs) {
        if name.ends_with("running_mean") {
            let _ = t.f_add_(&(t.randn_like() * 0.5));
        }
        if name.ends_with("running_var") {
            let _ = t.f_mul_(&(t.rand_like() + 0.5));
        }
    }
}

fn check_vector_layer<F: Flow>(name: &str, d: i64, build: impl FnOnce(&VarStore) -> F) {
    tch::manual_seed(11);
    let mut vs = VarStore::new(Device::Cpu);
    let flow = build(&vs);
    perturb(&vs, 0.3);
    perturb_buffers(&vs);
    vs.double();
    let x = Tensor::randn([4, d], (Kind::Double, Device::Cpu));
    assert_ok(name, &flow, &x, &Ctx::eval());
}

fn model_cfg() -> flowzoo::config::ModelConfig {
    let mut m = Config::default().model;
    m.width = 8;
    m.depth = 2;
    m
}

#[test]
fn mlp_couplings_on_vectors() {
    let m = model_cfg();
    for additive in [false, true] {
        for mask in 0..6 {
            let partition = || -> Box<dyn Partition> {
                match mask {
                    0 => Box::new(Alternating::new(0)),
                    1 => Box::new(Alternating::new(1)),
                    2 => Box::new(Checkerboard::new(0)),
                    3 => Box::new(Checkerboard::new(1)),
                    4 => Box::new(ChannelHalves::new(false)),
                    _ => Box::new(ChannelHalves::new(true)),
                }
            };
            let transform = || -> Box<dyn ElementwiseBijection> { if additive { Box::new(Additive) } else { Box::new(Affine::exp_tanh()) } };
            check_vector_layer(&format!("MLP coupling {} {}", transform().name(), partition().name()), 5, |vs| {
                Coupling::with_mlp(vs.root() / "c", partition(), transform(), 5, 0, m.width, m.depth, m.activation).unwrap()
            });
        }
    }
}

#[test]
fn mlp_coupling_starts_as_identity() {
    let vs = VarStore::new(Device::Cpu);
    let c = {
        let m = model_cfg();
        Coupling::with_mlp(vs.root() / "c", Box::new(Alternating::new(0)), Box::new(Affine::exp_tanh()), 5, 0, m.width, m.depth, m.activation).unwrap()
    };
    let x = Tensor::randn([3, 5], (Kind::Float, Device::Cpu));
    let (y, ld) = c.forward(&x, &Ctx::eval()).unwrap();
    assert_eq!(y.f_sub(&x).unwrap().abs().max().double_value(&[]), 0.0);
    assert_eq!(ld.abs().max().double_value(&[]), 0.0);
}

#[test]
fn batchnorm_flow_eval_and_train() {
    check_vector_layer("BatchNormFlow (eval)", 3, |vs| BatchNormFlow::new(vs.root() / "bn", 3, 2));
    check_layer_images();
    // Training mode: batch statistics normalise the batch, the log-det uses them, and the
    // running statistics move towards them.
    let vs = VarStore::new(Device::Cpu);
    let bn = BatchNormFlow::new(vs.root() / "bn", 3, 2);
    let x = Tensor::randn([256, 3], (Kind::Float, Device::Cpu)) * 3.0 + 2.0;
    let (y, ld) = bn.forward(&x, &Ctx::train()).unwrap();
    let mean = y.mean_dim(Some(&[0i64][..]), false, Kind::Float);
    let var = y.var_dim(Some(&[0i64][..]), false, false);
    assert!(mean.abs().max().double_value(&[]) < 1e-5);
    assert!((var - 1.0).abs().max().double_value(&[]) < 1e-3);
    let batch_var = x.var_dim(Some(&[0i64][..]), false, false);
    let expect = -(batch_var + 1e-5).log().sum(Kind::Float).double_value(&[]) * 0.5;
    assert!((ld.double_value(&[0]) - expect).abs() < 1e-4, "{} vs {expect}", ld.double_value(&[0]));
    let rm = bn.running_mean.double_value(&[0, 0]);
    assert!((rm - 0.05 * x.mean_dim(Some(&[0i64][..]), false, Kind::Float).double_value(&[0])).abs() < 1e-5, "running mean {rm}");
    // Eval mode uses the running statistics: a different map from training mode.
    let (y_eval, _) = bn.forward(&x, &Ctx::eval()).unwrap();
    assert!(y_eval.f_sub(&y).unwrap().abs().max().double_value(&[]) > 0.1);
    // The inverse always uses the running statistics, so it inverts eval mode.
    let (x2, _) = bn.inverse(&y_eval, &Ctx::train()).unwrap();
    assert!(x2.f_sub(&x).unwrap().abs().max().double_value(&[]) < 1e-4);
}

fn check_layer_images() {
    tch::manual_seed(12);
    let mut vs = VarStore::new(Device::Cpu);
    let bn = BatchNormFlow::new(vs.root() / "bn", 2, 4);
    perturb(&vs, 0.3);
    perturb_buffers(&vs);
    vs.double();
    let x = Tensor::randn([2, 2, 3, 3], (Kind::Double, Device::Cpu));
    assert_ok("BatchNormFlow images (eval)", &bn, &x, &Ctx::eval());
}

#[test]
fn elementwise_affines() {
    check_vector_layer("scaling", 4, |vs| ElementwiseAffine::scaling(vs.root() / "s", 4));
    check_vector_layer("diag_gaussian", 4, |vs| flowzoo::flows::testing::BaseFlow(DiagGaussian::new(vs.root() / "b", 4)));
    let mean = Tensor::from_slice(&[1.0f64, -2.0, 3.0]);
    let std = Tensor::from_slice(&[0.5f64, 2.0, 4.0]);
    check_vector_layer("standardize", 3, |vs| ElementwiseAffine::standardize(vs.root() / "st", &mean, &std));
}

#[test]
fn standardization_round_trip_and_units() {
    let mut vs = VarStore::new(Device::Cpu);
    let mean = Tensor::from_slice(&[10.0f64, -3.0]);
    let std = Tensor::from_slice(&[2.0f64, 0.25]);
    let st = ElementwiseAffine::standardize(vs.root() / "standardize", &mean, &std);
    vs.double();
    let x = Tensor::from_slice(&[12.0f64, -3.5, 10.0, -3.0]).reshape([2, 2]);
    let (z, ld) = st.forward(&x, &Ctx::eval()).unwrap();
    assert_eq!(Vec::<f64>::try_from(&z.reshape([-1])).unwrap(), vec![1.0, -2.0, 0.0, 0.0]);
    // log|det| = -Σ log std, the change of units that makes likelihoods comparable.
    let expect = -(2.0f64.ln() + 0.25f64.ln());
    assert!((ld.double_value(&[0]) - expect).abs() < 1e-12);
    let (x2, _) = st.inverse(&z, &Ctx::eval()).unwrap();
    assert!(x2.f_sub(&x).unwrap().abs().max().double_value(&[]) < 1e-12);
    // Saved as buffers with the model.
    assert!(vs.variables().contains_key("standardize.mean") && vs.variables().contains_key("standardize.std"));
    assert!(!vs.variables()["standardize.mean"].requires_grad());
}

fn tab_config(kind: &str) -> Config {
    let mut c = Config::default();
    c.data.kind = DataKind::Tabular;
    c.model.kind = kind.parse().unwrap();
    c.model.blocks = 3;
    c.model.width = 8;
    c.model.depth = 1;
    c
}

#[test]
fn realnvp_and_nice_models_invert_with_exact_logdet() {
    let cols: Vec<String> = (0..5).map(|i| format!("c{i}")).collect();
    for (kind, norm, mask, base) in [
        ("realnvp", "batchnorm", "alternating", "normal"),
        ("realnvp", "actnorm", "halves", "diag_gaussian"),
        ("realnvp", "none", "halves", "normal"),
        ("nice", "none", "halves", "normal"),
        ("nice", "none", "alternating", "normal"),
    ] {
        let mut c = tab_config(kind);
        c = c.with_overrides(&[format!("model.norm=\"{norm}\""), format!("model.mask=\"{mask}\""), format!("model.base=\"{base}\"")]).unwrap();
        tch::manual_seed(5);
        let mut vs = VarStore::new(Device::Cpu);
        let m = models::build_for(&c, vs.root(), &DataInfo { classes: vec![], columns: cols.clone() }).unwrap();
        perturb(&vs, 0.2);
        perturb_buffers(&vs);
        vs.double();
        let x = Tensor::randn([3, 5], (Kind::Double, Device::Cpu));
        let name = format!("{kind} {norm} {mask} {base}");
        assert_ok(&name, m.flow(), &x, &Ctx::eval());
        assert_eq!(m.event_shape(), vec![5]);
    }
}

#[test]
fn realnvp_images_invert_with_exact_logdet() {
    let mut c = Config::default();
    c.model.kind = flowzoo::config::ModelKind::Realnvp;
    c.model.levels = 2;
    c.model.width = 8;
    c.model.norm = flowzoo::config::NormChoice::Actnorm;
    c.model.base = flowzoo::config::BaseChoice::DiagGaussian;
    c.data.image_size = 4;
    tch::manual_seed(6);
    let mut vs = VarStore::new(Device::Cpu);
    let m = models::build(&c, vs.root(), 1).unwrap();
    perturb(&vs, 0.2);
    vs.double();
    let x = Tensor::randn([2, 1, 4, 4], (Kind::Double, Device::Cpu)) * 0.3;
    assert_ok("RealNVP images", m.flow(), &x, &Ctx::eval());
    assert!(vs.variables().keys().any(|k| k.starts_with("levels.0.steps.3.coupling.net.")));
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn tab_data(path: &Path) -> DataConfig {
    DataConfig { kind: DataKind::Tabular, path: path.display().to_string(), ..DataConfig::default() }
}

#[test]
fn csv_loader_bad_rows_name_line_and_column() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "a.csv", "x,y,z\n1,2,3\n4,5,6\n7,oops,9\n1,2\n1,nan,3\n");
    let err = format!("{:#}", load_table(&p, &tab_data(&p)).err().unwrap());
    assert!(err.contains("a.csv") && err.contains("line 4, column 2") && err.contains("\"y\"") && err.contains("oops"), "{err}");
    let mut c = tab_data(&p);
    c.bad_rows = BadRows::Drop;
    let t = load_table(&p, &c).unwrap();
    assert_eq!(t.rows.size(), vec![2, 3]);
    assert_eq!(t.dropped, 3);
    // Wrong field count and NaN are named too.
    let p2 = write(d.path(), "b.csv", "1,2,3\n4,5\n");
    let err = format!("{:#}", load_table(&p2, &tab_data(&p2)).err().unwrap());
    assert!(err.contains("line 2: 2 fields, expected 3"), "{err}");
    let p3 = write(d.path(), "c.csv", "1,2\n3,NaN\n");
    let err = format!("{:#}", load_table(&p3, &tab_data(&p3)).err().unwrap());
    assert!(err.contains("line 2, column 2") && err.contains("not a finite number"), "{err}");
}

#[test]
fn csv_header_detection_and_column_subsets() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "h.csv", "a,b,c\n1,2,3\n4,5,6\n");
    let t = load_table(&p, &tab_data(&p)).unwrap();
    assert_eq!(t.columns, vec!["a", "b", "c"]);
    let p2 = write(d.path(), "n.csv", "1,2,3\n4,5,6\n");
    let t2 = load_table(&p2, &tab_data(&p2)).unwrap();
    assert_eq!(t2.rows.size(), vec![2, 3]);
    let mut c = tab_data(&p);
    c.columns = vec!["c".into(), "0".into()];
    let t3 = load_table(&p, &c).unwrap();
    assert_eq!(t3.columns, vec!["c", "a"]);
    assert_eq!(Vec::<f64>::try_from(&t3.rows.reshape([-1])).unwrap(), vec![3.0, 1.0, 6.0, 4.0]);
    c.columns = vec!["zz".into()];
    let err = format!("{:#}", load_table(&p, &c).err().unwrap());
    assert!(err.contains("\"zz\"") && err.contains("a, b, c"), "{err}");
    let empty = write(d.path(), "e.csv", "");
    assert!(format!("{:#}", load_table(&empty, &tab_data(&empty)).err().unwrap()).contains("is empty"));
    let missing = d.path().join("missing.csv");
    assert!(format!("{:#}", load_table(&missing, &tab_data(&missing)).err().unwrap()).contains("does not exist"));
}

#[test]
fn npy_and_npz_loaders() {
    let d = tempfile::tempdir().unwrap();
    let x = Tensor::arange(12, (Kind::Double, Device::Cpu)).reshape([4, 3]);
    let p = d.path().join("x.npy");
    x.write_npy(&p).unwrap();
    let t = load_table(&p, &tab_data(&p)).unwrap();
    assert_eq!(t.rows.size(), vec![4, 3]);
    let pz = d.path().join("x.npz");
    Tensor::write_npz(&[("train", &x), ("other", &x.narrow(1, 0, 2))], &pz).unwrap();
    let err = format!("{:#}", load_table(&pz, &tab_data(&pz)).err().unwrap());
    assert!(err.contains("several arrays") && err.contains("npz_key"), "{err}");
    let mut c = tab_data(&pz);
    c.npz_key = "other".into();
    assert_eq!(load_table(&pz, &c).unwrap().rows.size(), vec![4, 2]);
    let bad = write(d.path(), "bad.npy", "not numpy");
    assert!(format!("{:#}", load_table(&bad, &tab_data(&bad)).err().unwrap()).contains("bad.npy"));
}

#[test]
fn seeded_three_way_split() {
    let d = tempfile::tempdir().unwrap();
    let mut text = String::from("v\n");
    for i in 0..100 {
        text.push_str(&format!("{i}\n"));
    }
    let p = write(d.path(), "v.csv", &text);
    let mut c = tab_data(&p);
    c.test_fraction = 0.2;
    c.val_fraction = 0.1;
    let t = load_table(&p, &c).unwrap();
    let s = split_table(&t, &c, 1).unwrap();
    assert_eq!((s.train.size()[0], s.val.size()[0], s.test.size()[0]), (70, 10, 20));
    let all = Tensor::cat(&[&s.train, &s.val, &s.test], 0).sort(0, false).0;
    assert_eq!(all.reshape([-1]).f_sub(&Tensor::arange(100, (Kind::Double, Device::Cpu))).unwrap().abs().max().double_value(&[]), 0.0);
    let s2 = split_table(&t, &c, 1).unwrap();
    assert_eq!(s.test.f_sub(&s2.test).unwrap().abs().max().double_value(&[]), 0.0);
}

fn flowzoo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_flowzoo")).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = flowzoo(args);
    assert!(o.status.success(), "flowzoo {args:?}:\n{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn early_stopping_keeps_the_best_weights() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("r");
    // With a learning rate of 1e-30 no update changes a weight, so the validation score never
    // improves after the first evaluation and patience 2 stops at the third.
    let out = ok(&[
        "train", "--config", "configs/realnvp_moons.toml", "--out", run.to_str().unwrap(), "-q",
        "--set", "train.lr=1e-30", "--set", "model.norm=\"none\"", "--set", "train.eval_every=5", "--set", "train.patience=2",
        "--set", "train.max_steps=100", "--set", "model.blocks=2", "--set", "model.width=8", "--set", "train.threads=1",
        "--set", "train.device=\"cpu\"",
    ]);
    assert!(out.contains("trained 15 steps") && out.contains("stopped early"), "{out}");
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["best_step"], 5);
}

#[test]
fn tabular_cli_train_eval_sample_toy() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("r");
    let r = run.to_str().unwrap();
    let out = ok(&[
        "train", "--config", "configs/realnvp_moons.toml", "--out", r, "-q", "--set", "train.max_steps=30", "--set", "train.eval_every=10",
        "--set", "model.blocks=2", "--set", "model.width=16", "--set", "train.threads=1", "--set", "train.device=\"cpu\"",
    ]);
    assert!(out.contains("trained 30 steps") && out.contains("nats"), "{out}");
    let j: serde_json::Value = serde_json::from_str(&ok(&["eval", "--model", r, "--json"])).unwrap();
    assert_eq!(j["n"], 2000);
    let (m, se) = (j["mean_log_prob"].as_f64().unwrap(), j["stderr"].as_f64().unwrap());
    assert!(m.is_finite() && se > 0.0 && se < 1.0, "{m} ± {se}");
    assert_eq!(j["log_prob"].as_array().unwrap().len(), 2000);
    // --csv scores the given rows as they are.
    let rows = d.path().join("rows.csv");
    std::fs::write(&rows, "x,y\n0.0,0.0\n1.0,-0.5\n").unwrap();
    let j2: serde_json::Value = serde_json::from_str(&ok(&["eval", "--model", r, "--csv", rows.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(j2["n"], 2);
    let csv = d.path().join("s.csv");
    ok(&["sample", "--model", r, "-n", "50", "--seed", "3", "-o", csv.to_str().unwrap()]);
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().next().unwrap(), "x,y");
    assert_eq!(text.lines().count(), 51);
    let png = d.path().join("s.png");
    ok(&["sample", "--model", r, "-n", "500", "-o", png.to_str().unwrap()]);
    assert_eq!(image::image_dimensions(&png).unwrap(), (610, 300));
    assert!(run.join("samples/final.png").is_file());
    // Toys are seeded.
    let (a, b) = (d.path().join("a.csv"), d.path().join("b.csv"));
    ok(&["toy", "pinwheel", "-n", "100", "--seed", "4", "-o", a.to_str().unwrap()]);
    ok(&["toy", "pinwheel", "-n", "100", "--seed", "4", "-o", b.to_str().unwrap()]);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let o = flowzoo(&["toy", "spiral", "-o", a.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown toy"));
    // The bundled toy files are what the command writes.
    let fresh = d.path().join("moons.csv");
    ok(&["toy", "moons", "-n", "10000", "--seed", "0", "-o", fresh.to_str().unwrap()]);
    assert_eq!(std::fs::read(&fresh).unwrap(), std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("data/toys/moons.csv")).unwrap());
}

#[test]
fn tabular_digits64_configs_load() {
    for f in ["configs/realnvp_moons.toml", "configs/realnvp_digits64.toml", "configs/nice_digits64.toml"] {
        let c = Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join(f)).unwrap();
        assert_eq!(c.data.kind, DataKind::Tabular);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits64.csv");
    let t = load_table(&p, &tab_data(&p)).unwrap();
    assert_eq!(t.rows.size(), vec![1797, 64]);
}

/// Jacobian of the whole flow at `x` ([1, D] -> [D, D]).
fn jacobian(flow: &dyn Flow, x: &Tensor) -> Tensor {
    let xg = x.detach().set_requires_grad(true);
    let (y, _) = flow.forward(&xg, &Ctx::eval()).unwrap();
    let d = x.size()[1];
    let rows: Vec<Tensor> = (0..d).map(|j| Tensor::run_backward(&[y.select(1, j).sum(Kind::Double)], &[&xg], true, false).remove(0).reshape([d])).collect();
    Tensor::stack(&rows, 0)
}

#[test]
fn every_feature_is_transformed() {
    // A latent coordinate that is an untouched copy of one input coordinate has a unit row in
    // the Jacobian: masks and permutations that cancel out (alternating masks followed by a
    // reversal of an even number of features) would leave such rows.
    for (dim, mask, perm) in [(2, "alternating", "reverse"), (3, "alternating", "reverse"), (4, "halves", "reverse"), (2, "alternating", "none"), (4, "alternating", "shuffle"), (5, "halves", "none")] {
        let c = tab_config("realnvp")
            .with_overrides(&[format!("model.mask=\"{mask}\""), format!("model.permutation=\"{perm}\""), "model.norm=\"none\"".into(), "model.blocks=4".into()])
            .unwrap();
        tch::manual_seed(8);
        let mut vs = VarStore::new(Device::Cpu);
        let cols = (0..dim).map(|i| i.to_string()).collect();
        let m = models::build_for(&c, vs.root(), &DataInfo { classes: vec![], columns: cols }).unwrap();
        perturb(&vs, 0.5);
        vs.double();
        let j = jacobian(m.flow(), &Tensor::randn([1, dim], (Kind::Double, Device::Cpu)));
        for r in 0..dim {
            let row = j.select(0, r);
            let off = row.abs().sum(Kind::Double).double_value(&[]) - row.abs().max().double_value(&[]);
            assert!(off > 1e-6, "{mask}/{perm}, D={dim}: latent {r} copies one input (row {row:?})");
        }
    }
}

#[test]
fn standardization_statistics_include_the_noise() {
    use flowzoo::data::tabular::standardization;
    // column 0 varies, column 1 is constant
    let x = Tensor::from_slice(&[0.0f64, 5.0, 2.0, 5.0, 4.0, 5.0]).reshape([3, 2]);
    let (m, s) = standardization(&x, 0.0).unwrap();
    assert_eq!(Vec::<f64>::try_from(&m).unwrap(), vec![2.0, 5.0]);
    assert!((s.double_value(&[0]) - (8.0f64 / 3.0).sqrt()).abs() < 1e-12);
    assert_eq!(s.double_value(&[1]), 1.0, "a constant column keeps unit scale");
    // With U(0, 1) noise the constant column has std sqrt(1/12), not 1.
    let (m, s) = standardization(&x, 1.0).unwrap();
    assert!((m.double_value(&[1]) - 5.5).abs() < 1e-12);
    assert!((s.double_value(&[1]) - (1.0f64 / 12.0).sqrt()).abs() < 1e-12);
}

#[test]
fn column_names_with_commas_round_trip_through_samples() {
    let d = tempfile::tempdir().unwrap();
    let mut text = String::from("\"a,b\",\"say \"\"c\"\"\"\n");
    for i in 0..200 {
        let t = i as f64 / 200.0 * 6.0;
        text.push_str(&format!("{:.4},{:.4}\n", t.cos(), t.sin()));
    }
    let data = write(d.path(), "quoted.csv", &text);
    let run = d.path().join("r");
    let r = run.to_str().unwrap();
    ok(&[
        "train", "--config", "configs/realnvp_moons.toml", "--data", data.to_str().unwrap(), "--out", r, "-q",
        "--set", "train.max_steps=4", "--set", "train.eval_every=2", "--set", "model.blocks=1", "--set", "model.width=8",
        "--set", "train.threads=1", "--set", "train.device=\"cpu\"",
    ]);
    let samples = d.path().join("s.csv");
    ok(&["sample", "--model", r, "-n", "5", "-o", samples.to_str().unwrap()]);
    let mut rdr = csv::Reader::from_path(&samples).unwrap();
    assert_eq!(rdr.headers().unwrap().iter().collect::<Vec<_>>(), vec!["a,b", "say \"c\""]);
    assert_eq!(rdr.records().map(|r| r.unwrap().len()).collect::<Vec<_>>(), vec![2; 5]);
    // The samples are rows the run's own reader takes back, by those names.
    let mut c = tab_data(&samples);
    c.columns = vec!["say \"c\"".into(), "a,b".into()];
    let t = load_table(&samples, &c).unwrap();
    assert_eq!(t.rows.size(), vec![5, 2]);
    // metrics.csv is read back by name on --resume.
    ok(&["train", "--resume", "--out", r, "-q", "--set", "train.max_steps=6"]);
    let m = flowzoo::train::MetricsLog::read(&run.join("metrics.csv"), flowzoo::train::MetricsLog::TABULAR_COLUMNS, 100).unwrap();
    assert!(m.curve("val_nll").iter().any(|&(s, _)| s == 6.0), "{:?}", m.rows);
}
