//! `flowzoo import`: the `.pt` reader on files PyTorch wrote (tests/data/import, made by
//! make_fixtures.py), the rosinality-style Glow, the key maps, the conversion's error messages
//! and the all-or-nothing run directory. The comparisons with PyTorch are in
//! tests/python/test_import.py.
use flowzoo::config::{Config, CouplingChoice, GlowStyle, PermutationChoice};
use flowzoo::flows::testing::{check_flow, perturb};
use flowzoo::flows::Ctx;
use flowzoo::import::{convert, model_variables, rosinality, write_run, y0ast, KeyMap, Source};
use flowzoo::io::pt::read_weights;
use flowzoo::io::write_safetensors;
use flowzoo::models;
use flowzoo::session::Session;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{nn::VarStore, Device, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/import").join(name)
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

fn err_of<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

fn check_fixture_tensors(t: &BTreeMap<String, Tensor>) {
    assert_eq!(t.keys().cloned().collect::<Vec<_>>(), ["a", "h", "i", "s", "t", "u", "v"]);
    assert_eq!((t["a"].size(), t["a"].kind()), (vec![2, 3], Kind::Float));
    assert_eq!(values(&t["a"]), [0., 1., 2., 3., 4., 5.]);
    // arange(6).reshape(2, 3).t(): saved with strides (1, 3)
    assert_eq!((t["t"].size(), t["t"].kind()), (vec![3, 2], Kind::Double));
    assert_eq!(values(&t["t"]), [0., 3., 1., 4., 2., 5.]);
    // two views of one storage, one with an offset
    assert_eq!(values(&t["v"]), [3., 4., 5., 6.]);
    assert_eq!(values(&t["s"]), [0., 1.]);
    assert_eq!((t["u"].size(), t["u"].kind()), (vec![], Kind::Uint8));
    assert_eq!(t["u"].int64_value(&[]), 1);
    assert_eq!(t["i"].kind(), Kind::Int64);
    assert_eq!(values(&t["i"]), [5., -2., 7.]);
    assert_eq!(t["h"].kind(), Kind::Half);
    assert_eq!(values(&t["h"]), [0.5, -1.25]);
}

#[test]
fn reads_state_dicts_checkpoints_and_modules_written_by_pytorch() {
    let f = read_weights(&fixture("state_dict.pt")).unwrap();
    assert!(f.what.starts_with("a state_dict"), "{}", f.what);
    check_fixture_tensors(&f.tensors);

    let f = read_weights(&fixture("checkpoint.pt")).unwrap();
    assert!(f.what.contains("under key \"model\""), "{}", f.what);
    check_fixture_tensors(&f.tensors);

    let f = read_weights(&fixture("data_parallel.pt")).unwrap();
    assert_eq!(f.tensors.keys().cloned().collect::<Vec<_>>(), ["b", "w"]);
    assert!(f.what.contains("module."), "{}", f.what);

    for (file, what) in [("scripted.pt", "TorchScript"), ("whole_module.pt", "nn.Module")] {
        let f = read_weights(&fixture(file)).unwrap();
        assert!(f.what.contains(what), "{file}: {}", f.what);
        assert_eq!(f.tensors.keys().cloned().collect::<Vec<_>>(), ["bias", "inner.initialized", "inner.weight", "perm"], "{file}");
        assert_eq!(values(&f.tensors["inner.weight"]), [0., 1., 2., 3.]);
        assert_eq!(f.tensors["perm"].kind(), Kind::Int64);
    }
}

#[test]
fn unreadable_files_get_clear_errors() {
    let e = err_of(read_weights(&fixture("legacy.pt")));
    assert!(e.contains("legacy") && e.contains("torch.save(torch.load("), "{e}");
    let e = err_of(read_weights(&fixture("bool.pt")));
    assert!(e.contains("tensor b") && e.contains("unsupported"), "{e}");
    let e = err_of(read_weights(&fixture("two_dicts.pt")));
    assert!(e.contains("several dicts") && e.contains("\"a\""), "{e}");

    let d = tempfile::tempdir().unwrap();
    let junk = d.path().join("junk.pt");
    std::fs::write(&junk, b"hello, not a checkpoint").unwrap();
    let e = err_of(read_weights(&junk));
    assert!(e.contains("neither a PyTorch checkpoint"), "{e}");
    let e = err_of(read_weights(&d.path().join("absent.pt")));
    assert!(e.contains("cannot open"), "{e}");
    // a truncated zip
    let bytes = std::fs::read(fixture("state_dict.pt")).unwrap();
    let cut = d.path().join("cut.pt");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert!(read_weights(&cut).is_err());

    // safetensors go through the same entry point
    let st = d.path().join("w.safetensors");
    write_safetensors(&st, &[("module.x".to_string(), Tensor::from_slice(&[1f32, 2.]))], &BTreeMap::new()).unwrap();
    let f = read_weights(&st).unwrap();
    assert_eq!(f.tensors.keys().cloned().collect::<Vec<_>>(), ["x"]);
}

fn ros_config(levels: i64, affine: bool, perm: PermutationChoice) -> Config {
    let mut c = Config::default();
    c.data.image_size = 8;
    c.data.channels = 1;
    c.model.levels = levels;
    c.model.steps = 2;
    c.model.width = 8;
    c.model.coupling = if affine { CouplingChoice::Affine } else { CouplingChoice::Additive };
    c.model.permutation = perm;
    c.model.style = GlowStyle::Rosinality;
    c
}

#[test]
fn rosinality_style_glow_inverts_and_its_logdet_is_exact() {
    for (levels, affine, perm) in [(2, true, PermutationChoice::InvconvLu), (2, false, PermutationChoice::Invconv), (1, true, PermutationChoice::Invconv)] {
        tch::manual_seed(3);
        let mut vs = VarStore::new(Device::Cpu);
        let m = models::build(&ros_config(levels, affine, perm), vs.root(), 1).unwrap();
        perturb(&vs, 0.2);
        vs.double();
        let x = Tensor::randn([2, 1, 8, 8], (Kind::Double, Device::Cpu)) * 0.3;
        let c = check_flow(m.flow(), &x, &Ctx::eval()).unwrap();
        assert!(c.inverse_err < 1e-10, "L={levels}: inverse error {}", c.inverse_err);
        assert!(c.logdet_err < 1e-6, "L={levels}: log-det error {}", c.logdet_err);
        let names: Vec<String> = vs.variables().into_keys().collect();
        let last = levels - 1;
        // The last level is LU whatever the permutation says; the others follow it.
        assert!(names.contains(&format!("levels.{last}.steps.0.invconv.lower")), "{names:?}");
        if levels > 1 && perm == PermutationChoice::Invconv {
            assert!(names.contains(&"levels.0.steps.0.invconv.weight".to_string()));
        }
        assert!(names.contains(&"levels.0.steps.0.actnorm.scale".to_string()));
        assert!(names.contains(&"levels.0.steps.0.coupling.net.0.bias".to_string()));
        assert!(!names.iter().any(|n| n.contains("net.0.actnorm")));
        // top prior conv: C -> 2C
        let top_c = if levels == 2 { 8 } else { 4 };
        assert_eq!(vs.variables()["prior.learn_top.conv.weight"].size(), vec![2 * top_c, top_c, 3, 3]);
    }
}

#[test]
fn rosinality_top_prior_is_not_spatially_constant() {
    let vs = VarStore::new(Device::Cpu);
    let p = flowzoo::flows::LearnedPrior::with_conv_input(vs.root() / "prior", [4, 4, 4], 0, true, None, 4, 1.0);
    tch::no_grad(|| {
        let _ = p.conv.as_ref().unwrap().weight.shallow_clone().fill_(0.1);
    });
    let like = Tensor::zeros([1], (Kind::Float, Device::Cpu));
    let (mean, _) = p.mean_logs(1, &like, &Ctx::eval()).unwrap();
    // ones-padding: 5 padded taps at a corner, 3 on an edge, none inside (4 channels x 0.1 each)
    let at = |i: i64, j: i64| mean.double_value(&[0, 0, i, j]);
    assert!((at(0, 0) - 2.0).abs() < 1e-6 && (at(0, 1) - 1.2).abs() < 1e-6 && at(1, 1).abs() < 1e-6, "{}", at(0, 0));
}

#[test]
fn native_glow_is_unchanged_by_the_style_switch() {
    let mut c = Config::default();
    c.data.image_size = 8;
    c.model.steps = 2;
    c.model.width = 8;
    assert_eq!(c.model.style, GlowStyle::Flowzoo);
    let vs = VarStore::new(Device::Cpu);
    let _m = models::build(&c, vs.root(), 1).unwrap();
    let v = vs.variables();
    assert_eq!(v["prior.learn_top.conv.weight"].size(), vec![16, 16, 3, 3]);
    assert!(v.contains_key("levels.0.steps.0.coupling.net.0.actnorm.logs"));
    assert!(v.contains_key("levels.0.steps.0.actnorm.logs"));
    // the config round-trips with the new key
    let text = c.to_toml().unwrap();
    assert!(text.contains("style = \"flowzoo\""), "{text}");
    assert_eq!(Config::from_toml_str(&text, "x").unwrap(), c);
    let without: String = text.lines().filter(|l| !l.starts_with("style")).collect::<Vec<_>>().join("\n");
    assert_eq!(Config::from_toml_str(&without, "x").unwrap().model.style, GlowStyle::Flowzoo);
}

fn y0ast_hparams() -> y0ast::Hparams {
    y0ast::Hparams::from_json(&serde_json::json!({
        "K": 2, "L": 2, "hidden_channels": 8, "flow_coupling": "affine", "flow_permutation": "invconv",
        "LU_decomposed": true, "learn_top": true, "actnorm_scale": 1.0, "y_condition": false, "dataset": "cifar10"
    }))
    .unwrap()
}

#[test]
fn key_maps_cover_every_variable() {
    let hp = y0ast_hparams();
    let cfg = y0ast::config(&hp, 8, 3).unwrap();
    let sess = Session::new(&cfg, vec![], Device::Cpu).unwrap();
    let vars = model_variables(&sess);
    let map = y0ast::key_map(&cfg, &vars).unwrap();
    assert_eq!(map.sources.len(), vars.len());
    let key = |m: &KeyMap, n: &str| match &m.sources[n] {
        Source::Key { key, shape } => (key.clone(), shape.clone()),
        _ => (String::new(), vec![]),
    };
    // level i starts at layer i·(K+2): squeeze, K steps, split
    assert_eq!(key(&map, "levels.1.steps.1.invconv.lower").0, "flow.layers.6.invconv.lower");
    assert_eq!(key(&map, "levels.0.steps.0.coupling.net.4.logs").0, "flow.layers.1.block.4.logs");
    assert_eq!(key(&map, "levels.0.split.conv.weight").0, "flow.layers.3.conv.conv.weight");
    assert_eq!(key(&map, "prior.learn_top.logs").0, "learn_top_fn.logs");
    assert!(matches!(map.sources["levels.0.steps.0.actnorm.initialized"], Source::Fill(v) if v == 1.0));
    assert_eq!(map.fixed[0].key, "prior_h");
    assert_eq!(map.fixed[0].value.size(), vec![1, 48, 2, 2]);
    assert!(y0ast::config(&y0ast::Hparams { flow_permutation: "shuffle".into(), ..hp.clone() }, 8, 3).is_err());
    assert!(y0ast::config(&y0ast::Hparams { y_condition: true, ..hp }, 8, 3).is_err());

    let cfg = ros_config(2, true, PermutationChoice::InvconvLu);
    let sess = Session::new(&cfg, vec![], Device::Cpu).unwrap();
    let vars = model_variables(&sess);
    let map = rosinality::key_map(&cfg, &vars).unwrap();
    assert_eq!(map.sources.len(), vars.len());
    assert_eq!(key(&map, "levels.0.steps.1.invconv.lower").0, "blocks.0.flows.1.invconv.w_l");
    assert_eq!(key(&map, "levels.0.steps.1.coupling.net.4.logs"), ("blocks.0.flows.1.coupling.net.4.scale".into(), vec![1, 4, 1, 1]));
    assert_eq!(key(&map, "levels.0.split.logs").0, "blocks.0.prior.scale");
    assert_eq!(key(&map, "prior.learn_top.conv.weight").0, "blocks.1.prior.conv.weight");
    assert_eq!(map.fixed.len(), 3 * 4, "u_mask, l_mask, l_eye of each LU step");
}

#[test]
fn conversion_names_missing_unexpected_and_mismatched_keys() {
    let cfg = y0ast::config(&y0ast_hparams(), 8, 3).unwrap();
    let sess = Session::new(&cfg, vec![], Device::Cpu).unwrap();
    let vars = model_variables(&sess);
    let map = y0ast::key_map(&cfg, &vars).unwrap();
    // a complete y0ast state dict made from the flowzoo variables
    let mut ckpt = BTreeMap::new();
    for (n, v) in &vars {
        if let Source::Key { key, shape } = &map.sources[n] {
            ckpt.insert(key.clone(), v.reshape(&shape[..]).copy());
        }
    }
    ckpt.insert("prior_h".to_string(), map.fixed[0].value.copy());
    let ok = convert(&vars, &map, &ckpt, "ckpt", None).unwrap();
    assert_eq!(ok.len(), vars.len());
    assert_eq!(ok["levels.0.steps.0.actnorm.initialized"].double_value(&[]), 1.0);

    let mut bad = ckpt.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect::<BTreeMap<_, _>>();
    bad.remove("flow.layers.2.invconv.lower");
    bad.insert("flow.layers.2.invconv.upper".into(), Tensor::zeros([3, 3], (Kind::Float, Device::Cpu)));
    bad.insert("foo.bar".into(), Tensor::zeros([2], (Kind::Float, Device::Cpu)));
    bad.insert("prior_h".into(), Tensor::ones([1, 48, 2, 2], (Kind::Float, Device::Cpu)));
    let e = err_of(convert(&vars, &map, &bad, "ckpt.pt", Some("try this".into())));
    for needle in [
        "ckpt.pt does not match the model (4 problems)",
        "missing key flow.layers.2.invconv.lower (expected shape [12, 12])",
        "key flow.layers.2.invconv.upper: expected shape [12, 12], found [3, 3]",
        "unexpected key foo.bar (shape [2])",
        "key prior_h: expected zeros",
        "hint: try this",
    ] {
        assert!(e.contains(needle), "{needle:?} not in:\n{e}");
    }
    // integer data where floats belong
    let mut ints = ckpt.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect::<BTreeMap<_, _>>();
    ints.insert("flow.layers.1.actnorm.bias".into(), Tensor::zeros([1, 12, 1, 1], (Kind::Int64, Device::Cpu)));
    let e = err_of(convert(&vars, &map, &ints, "ckpt.pt", None));
    assert!(e.contains("key flow.layers.1.actnorm.bias: expected a floating-point tensor"), "{e}");

    // write_run: all or nothing
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("run");
    let mut partial = ok.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect::<BTreeMap<_, _>>();
    partial.remove("prior.learn_top.logs");
    let e = err_of(write_run(&out, &cfg, vec![], &partial, "test"));
    assert!(e.contains("nothing was written"), "{e}");
    assert!(std::fs::read_dir(d.path()).unwrap().next().is_none(), "left files behind");
    let imp = write_run(&out, &cfg, vec![], &ok, "test").unwrap();
    assert!(imp.check_bpd.is_finite());
    for f in ["config.toml", "state.json", "weights.safetensors", "best.safetensors", "optimizer.safetensors"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1, "only the run itself");
    let e = err_of(write_run(&out, &cfg, vec![], &ok, "test"));
    assert!(e.contains("already exists"), "{e}");
}
