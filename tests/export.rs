//! TorchScript export (src/export): every layer's TorchScript against the layer itself, the
//! whole Glow module against the model, and `flowzoo export`'s errors on missing or truncated
//! run directories. The Python side (tests/python/test_export.py) loads trained, exported
//! models in plain PyTorch.
use flowzoo::config::{Config, PermutationChoice};
use flowzoo::export::{self, ExportOptions};
use flowzoo::flows::testing::{perturb, BaseFlow};
use flowzoo::flows::{
    Activation, ActNorm, ActNormParam, Additive, Affine, Alternating, BatchNormFlow, ChannelHalves, Checkerboard, ConvNet, Coupling,
    Ctx, DiagGaussian, ElementwiseAffine, ElementwiseBijection, Flatten, Flow, InvConv1x1, InvConv1x1Lu, Inverse, LearnedPrior,
    MlpNet, ParamLayout, Partition, Permutation, ScaleFn, Sequential, SplitPrior, Squeeze,
};
use flowzoo::script::ScriptBuilder;
use flowzoo::models::DataInfo;
use flowzoo::io::tensors::named_variables;
use flowzoo::io::{read_safetensors, Checkpoint, RunDir, RunState};
use flowzoo::session::Session;
use std::path::Path;
use std::process::Command;
use tch::{nn, nn::VarStore, Device, IValue, Kind, Tensor};

const F64: (Kind, Device) = (Kind::Double, Device::Cpu);

mod common;
use common::{check_flow_script, max_diff, opt, pair, rng_lock, tensor};

/// Every branch of every exportable layer: both ActNorm parametrisations, both 1×1 convs,
/// permutations, affine/additive couplings with channel (both flips) and checkerboard masks,
/// both output layouts, conv nets with and without hidden ActNorm, zero-convs padded with 0 and
/// 1, split priors (both layouts) and learned priors (learn_top, class-conditional).
#[test]
fn every_layer_matches_its_torchscript() {
    let _rng = rng_lock();
    tch::manual_seed(0);
    let x = Tensor::randn([3, 4, 4, 4], F64) * 0.5;
    type Build = Box<dyn Fn(&nn::Path) -> Box<dyn Flow>>;
    let mut cases: Vec<(&str, Build)> = vec![
        ("actnorm log", Box::new(|p| Box::new(ActNorm::new(p / "an", 4, 4, ActNormParam::Log)))),
        ("actnorm linear", Box::new(|p| Box::new(ActNorm::new(p / "an", 4, 4, ActNormParam::Linear)))),
        ("invconv", Box::new(|p| Box::new(InvConv1x1::new(p / "w", 4)))),
        ("invconv lu", Box::new(|p| Box::new(InvConv1x1Lu::new(p / "w", 4)))),
        ("reverse", Box::new(|p| Box::new(Permutation::reverse(p / "perm", 4)))),
        ("shuffle", Box::new(|p| Box::new(Permutation::shuffle(p / "perm", 4)))),
        ("squeeze", Box::new(|_| Box::new(Squeeze))),
    ];
    for additive in [false, true] {
        for m in 0..4 {
            for (layout, hidden_actnorm, pad, context) in [(ParamLayout::Interleaved, true, 0.0, 0), (ParamLayout::Contiguous, false, 1.0, 0), (ParamLayout::Interleaved, true, 0.0, 3)] {
                let name: &'static str = Box::leak(format!("coupling additive={additive} mask {m} {layout:?} actnorm={hidden_actnorm} pad={pad} context={context}").into_boxed_str());
                cases.push((
                    name,
                    Box::new(move |p| {
                        let partition: Box<dyn Partition> = match m {
                            0 => Box::new(ChannelHalves::new(false)),
                            1 => Box::new(ChannelHalves::new(true)),
                            k => Box::new(Checkerboard::new(k - 2)),
                        };
                        let transform: Box<dyn ElementwiseBijection> =
                            if additive { Box::new(Additive) } else { Box::new(Affine::new(ScaleFn::Sigmoid2, layout)) };
                        let (c_in, c_out) = Coupling::net_features(partition.as_ref(), transform.as_ref(), 4);
                        let mut net = ConvNet::with_context(p / "coupling" / "net", c_in, context, 8, c_out, hidden_actnorm);
                        net.out.pad_value = pad;
                        Box::new(Coupling::new(4, partition, transform, Box::new(net)).unwrap())
                    }),
                ));
            }
        }
    }
    // An inverted layer exports with its two methods swapped.
    cases.push(("inverse of invconv lu", Box::new(|p| Box::new(Inverse(InvConv1x1Lu::new(p / "w", 4))))));
    let context = Tensor::randn([3, 3], F64);
    for (name, build) in &cases {
        let mut vs = VarStore::new(Device::Cpu);
        let flow = build(&vs.root());
        perturb(&vs, 0.3);
        vs.double();
        let cond = name.ends_with("context=3").then_some(&context);
        check_flow_script(name, &vs, flow.as_ref(), &x, cond);
    }

    // Priors: a split whose inner flow ends in a flatten, and a (class-conditional) learned
    // prior over the flat latent it produces.
    for (layout, pad, learn_top, classes) in
        [(ParamLayout::Interleaved, 0.0, true, None), (ParamLayout::Contiguous, 1.0, true, Some(3)), (ParamLayout::Interleaved, 0.0, false, Some(3))]
    {
        let mut vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        let mut inner = Sequential::new();
        inner.push(ActNorm::new(&root / "inner_an", 2, 4, ActNormParam::Log));
        inner.push(Flatten { shape: vec![2, 4, 4] });
        let mut split = SplitPrior::new(&root / "split", [4, 4, 4], Box::new(inner));
        split.layout = layout;
        split.prior.pad_value = pad;
        let mut prior = LearnedPrior::new(&root / "prior", [2, 4, 4], 32, learn_top, classes);
        if let Some(conv) = &mut prior.conv {
            conv.pad_value = pad;
        }
        let mut model = Sequential::new();
        model.push(split);
        model.push(BaseFlow(prior));
        perturb(&vs, 0.3);
        vs.double();
        let cond = classes.map(|k| Tensor::from_slice(&[0i64, 2, 1]).one_hot(k).to_kind(Kind::Double));
        check_flow_script(&format!("split {layout:?} pad={pad} learn_top={learn_top} classes={classes:?}"), &vs, &model, &x, cond.as_ref());
    }
}

/// The layers of vector models: MLP conditioners (every activation) in couplings with both
/// scale functions and every mask, batch norm (eval: running statistics) on vectors and images,
/// the elementwise affine maps (standardisation, NICE's scaling, a diagonal Gaussian base).
#[test]
fn every_vector_layer_matches_its_torchscript() {
    let _rng = rng_lock();
    tch::manual_seed(1);
    let x = Tensor::randn([3, 6], F64);
    type Build = Box<dyn Fn(&nn::Path) -> Box<dyn Flow>>;
    let mut cases: Vec<(String, Build)> = vec![
        ("batchnorm vectors".into(), Box::new(|p| Box::new(BatchNormFlow::new(p / "bn", 6, 2)))),
        ("standardize".into(), Box::new(|p| {
            let mean = Tensor::randn([6], F64);
            let std = Tensor::rand([6], F64) + 0.5;
            Box::new(ElementwiseAffine::standardize(p / "std", &mean, &std))
        })),
        ("scaling".into(), Box::new(|p| Box::new(ElementwiseAffine::scaling(p / "scaling", 6)))),
        ("diag gaussian".into(), Box::new(|p| Box::new(BaseFlow(DiagGaussian::new(p / "base", 6))))),
    ];
    let activations = [Activation::Relu, Activation::Tanh, Activation::Elu, Activation::LeakyRelu, Activation::Gelu, Activation::Silu];
    for (i, act) in activations.into_iter().enumerate() {
        for additive in [false, true] {
            let scale_fn = if i % 2 == 0 { ScaleFn::ExpTanh } else { ScaleFn::Sigmoid2 };
            let context = if i % 3 == 0 { 2 } else { 0 };
            cases.push((
                format!("mlp coupling {act:?} additive={additive} mask {} {scale_fn:?} context={context}", i % 6),
                Box::new(move |p| {
                    let partition: Box<dyn Partition> = match i % 6 {
                        0 => Box::new(ChannelHalves::new(false)),
                        1 => Box::new(ChannelHalves::new(true)),
                        2 => Box::new(Checkerboard::new(0)),
                        3 => Box::new(Checkerboard::new(1)),
                        4 => Box::new(Alternating::new(0)),
                        _ => Box::new(Alternating::new(1)),
                    };
                    let transform: Box<dyn ElementwiseBijection> =
                        if additive { Box::new(Additive) } else { Box::new(Affine::new(scale_fn, ParamLayout::Interleaved)) };
                    let (c_in, c_out) = Coupling::net_features(partition.as_ref(), transform.as_ref(), 6);
                    let net = MlpNet::with_context(p / "coupling" / "net", c_in, context, 8, 2, c_out, act).unwrap();
                    Box::new(Coupling::new(6, partition, transform, Box::new(net)).unwrap())
                }),
            ));
        }
    }
    let context = Tensor::randn([3, 2], F64);
    for (name, build) in &cases {
        let mut vs = VarStore::new(Device::Cpu);
        let flow = build(&vs.root());
        perturb(&vs, 0.3);
        vs.double();
        let cond = name.ends_with("context=2").then_some(&context);
        check_flow_script(name, &vs, flow.as_ref(), &x, cond);
    }
    // Batch norm with running statistics away from (0, 1), on images too.
    for (shape, ndim) in [(vec![3i64, 6], 2usize), (vec![3, 6, 2, 2], 4)] {
        let mut vs = VarStore::new(Device::Cpu);
        let bn = BatchNormFlow::new(vs.root() / "bn", 6, ndim);
        perturb(&vs, 0.3);
        tch::no_grad(|| {
            bn.running_mean.shallow_clone().copy_(&(bn.running_mean.randn_like() * 0.5));
            bn.running_var.shallow_clone().copy_(&(bn.running_var.rand_like() + 0.3));
        });
        vs.double();
        let x = Tensor::randn(&shape[..], F64);
        check_flow_script(&format!("batchnorm {ndim}-d, running statistics"), &vs, &bn, &x, None);
    }
}

struct Mystery;

impl Flow for Mystery {
    fn forward(&self, x: &Tensor, _ctx: &Ctx) -> anyhow::Result<(Tensor, Tensor)> {
        Ok((x.shallow_clone(), x.zeros_like().sum_dim_intlist(Some(&[1i64, 2, 3][..]), false, None::<Kind>)))
    }
    fn inverse(&self, y: &Tensor, ctx: &Ctx) -> anyhow::Result<(Tensor, Tensor)> {
        self.forward(y, ctx)
    }
}

#[test]
fn a_layer_without_torchscript_is_named() {
    let _rng = rng_lock();
    let vs = VarStore::new(Device::Cpu);
    let mut seq = Sequential::new();
    seq.push(ActNorm::new(vs.root() / "an", 2, 4, ActNormParam::Log));
    seq.push(Mystery);
    let mut ts = ScriptBuilder::new("Test").unwrap();
    ts.register_variables(&named_variables(&vs)).unwrap();
    let err = format!("{:#}", seq.to_torchscript(&mut ts).unwrap_err());
    assert!(err.contains("layer 1 (Mystery)") && err.contains("Mystery cannot be exported to TorchScript yet"), "{err}");
}

fn tiny_glow(perm: PermutationChoice, conditional: bool, extra: &[&str]) -> Config {
    let mut c = Config::default();
    c.data.image_size = 8;
    c.data.channels = 1;
    c.data.n_bits = 4;
    c.model.levels = 2;
    c.model.steps = 2;
    c.model.width = 8;
    c.model.permutation = perm;
    c.model.conditional = conditional;
    c.train.max_steps = 1;
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    c.with_overrides(&extra).unwrap()
}

/// The whole module of a Glow session against the session's model, float64: forward,
/// log_prob, bits_per_dim, inverse and seeded sample, two batch sizes.
#[test]
fn glow_module_matches_the_model() {
    let _rng = rng_lock();
    for (perm, conditional, extra) in [
        (PermutationChoice::InvconvLu, false, &[][..]),
        (PermutationChoice::Invconv, false, &["model.coupling=additive", "model.learn_top=false"][..]),
        (PermutationChoice::Shuffle, true, &[][..]),
    ] {
        let cfg = tiny_glow(perm, conditional, extra);
        let classes: Vec<String> = (0..3).map(|i| i.to_string()).collect();
        let mut sess = Session::new(&cfg, classes, Device::Cpu).unwrap();
        perturb(&sess.vs, 0.05);
        sess.vs.double();
        let module = export::session_module(&sess).unwrap();
        let m = module.to_cmodule().unwrap();
        let _g = tch::no_grad_guard();
        for b in [2i64, 5] {
            let x = Tensor::rand([b, 1, 8, 8], F64) - 0.5;
            let labels = conditional.then(|| Tensor::arange(b, (Kind::Int64, Device::Cpu)).remainder(3));
            let cond = labels.as_ref().map(|l| sess.one_hot(l).unwrap().unwrap());
            let ctx = Ctx::eval().with_cond(cond.as_ref());
            let args = |t: &Tensor| vec![IValue::Tensor(t.shallow_clone()), opt(labels.as_ref())];
            let (z, ld) = sess.model.to_noise(&x, &ctx).unwrap();
            let (zs, lds) = pair(m.forward_is(&args(&x)).unwrap());
            let lp = sess.model.log_prob(&x, &ctx).unwrap();
            let lps = tensor(m.method_is("log_prob", &args(&x)).unwrap());
            let bpd = flowzoo::data::bits_per_dim(&lp, 64, 4).unwrap();
            let bpds = tensor(m.method_is("bits_per_dim", &args(&x)).unwrap());
            let xs = tensor(m.method_is("inverse", &args(&z)).unwrap());
            let (xr, _) = sess.model.from_noise(&z, &ctx).unwrap();
            tch::manual_seed(9);
            let s = sess.model.sample(b, 0.7, &ctx, F64).unwrap();
            tch::manual_seed(9);
            let ss = tensor(m.method_is("sample", &[IValue::Int(b), IValue::Double(0.7), opt(labels.as_ref())]).unwrap());
            assert!(bool::try_from(s.isfinite().all()).unwrap(), "{perm:?}: the model's samples are not finite");
            for (what, a, r) in [("z", &zs, &z), ("logdet", &lds, &ld), ("log_prob", &lps, &lp), ("bpd", &bpds, &bpd), ("inverse", &xs, &xr), ("sample", &ss, &s)] {
                let d = max_diff(a, r);
                assert!(d < 1e-10, "{perm:?} conditional={conditional} B={b}: {what} differs by {d:e} (max abs {:e} vs {:e})", a.abs().max().double_value(&[]), r.abs().max().double_value(&[]));
            }
        }
        // A conditional model without labels, and an unconditional one with labels, are refused.
        let x = Tensor::rand([2, 1, 8, 8], F64);
        let labels = Tensor::from_slice(&[0i64, 1]);
        let err = if conditional {
            m.method_is("log_prob", &[IValue::Tensor(x)]).unwrap_err().to_string()
        } else {
            m.method_is("log_prob", &[IValue::Tensor(x), IValue::Tensor(labels)]).unwrap_err().to_string()
        };
        let want = if conditional { "this model is class-conditional" } else { "not class-conditional" };
        assert!(err.contains(want), "{err}");
    }
}

/// RealNVP (images and vectors) and NICE: the module against the model, float64.
#[test]
fn other_families_match_the_model() {
    let _rng = rng_lock();
    let cases: [(&str, &[&str], Option<i64>); 4] = [
        ("realnvp images", &["model.kind=realnvp", "model.width=8", "model.norm=batchnorm"], None),
        ("realnvp vectors", &["data.kind=tabular", "model.kind=realnvp", "model.blocks=3", "model.width=8", "model.norm=batchnorm", "model.base=diag_gaussian"], Some(5)),
        ("realnvp vectors halves", &["data.kind=tabular", "model.kind=realnvp", "model.blocks=2", "model.width=8", "model.norm=actnorm", "model.mask=halves", "model.permutation=invconv_lu"], Some(4)),
        ("nice", &["data.kind=tabular", "model.kind=nice", "model.blocks=3", "model.width=8"], Some(6)),
    ];
    for (what, sets, columns) in cases {
        let cfg = tiny_glow(PermutationChoice::Shuffle, false, sets);
        let info = DataInfo {
            classes: vec!["0".into()],
            columns: (0..columns.unwrap_or(0)).map(|i| format!("c{i}")).collect(),
        };
        let mut sess = Session::new_for(&cfg, info, Device::Cpu).unwrap();
        perturb(&sess.vs, 0.05);
        sess.vs.double();
        let module = export::session_module(&sess).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        let m = module.to_cmodule().unwrap();
        let _g = tch::no_grad_guard();
        let mut shape = vec![4i64];
        shape.extend(sess.model.event_shape());
        let x = Tensor::rand(&shape[..], F64) - 0.5;
        let ctx = Ctx::eval();
        let (z, ld) = sess.model.to_noise(&x, &ctx).unwrap();
        let (zs, lds) = pair(m.forward_is(&[IValue::Tensor(x.shallow_clone())]).unwrap());
        let lp = sess.model.log_prob(&x, &ctx).unwrap();
        let lps = tensor(m.method_is("log_prob", &[IValue::Tensor(x.shallow_clone())]).unwrap());
        let (xr, _) = sess.model.from_noise(&z, &ctx).unwrap();
        let xs = tensor(m.method_is("inverse", &[IValue::Tensor(z.shallow_clone())]).unwrap());
        tch::manual_seed(4);
        let s = sess.model.sample(3, 0.5, &ctx, F64).unwrap();
        tch::manual_seed(4);
        let ss = tensor(m.method_is("sample", &[IValue::Int(3), IValue::Double(0.5)]).unwrap());
        for (name, a, r) in [("z", &zs, &z), ("logdet", &lds, &ld), ("log_prob", &lps, &lp), ("inverse", &xs, &xr), ("sample", &ss, &s)] {
            let d = max_diff(a, r);
            assert!(d < 1e-10, "{what}: {name} differs by {d:e}");
        }
        let names = module.to_cmodule().unwrap().named_parameters().unwrap();
        assert!(names.iter().all(|(n, _)| sess.vs.variables().contains_key(n)), "{what}");
    }
}

/// A run directory written without training (fresh weights, a state file).
fn fake_run(dir: &Path) -> Config {
    let cfg = tiny_glow(PermutationChoice::InvconvLu, false, &[]);
    let run = RunDir::create(dir).unwrap();
    run.save_config(&cfg).unwrap();
    let sess = Session::new(&cfg, vec!["0".into()], Device::Cpu).unwrap();
    perturb(&sess.vs, 0.1);
    sess.save_weights(&run.weights_path(), 1).unwrap();
    sess.save_weights(&run.best_path(), 1).unwrap();
    run.save_state(&RunState { step: 1, classes: vec!["0".into()], ..RunState::default() }).unwrap();
    cfg
}

fn opts(pt: &Path) -> ExportOptions {
    ExportOptions { checkpoint: Checkpoint::Best, torchscript: Some(pt.to_path_buf()), safetensors: None, python: None, device: Device::Cpu, ode_solver: None, ode_steps: None, reference_in: None, reference_out: None }
}

#[test]
fn export_writes_a_module_with_the_run_weights() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    fake_run(&run);
    let pt = dir.path().join("model.pt");
    let st = dir.path().join("exported.safetensors");
    let lines = export::export_run(&run, &ExportOptions { safetensors: Some(st.clone()), ..opts(&pt) }).unwrap();
    assert!(lines[0].contains("model.pt") && lines[0].contains("Glow"), "{lines:?}");
    let m = tch::CModule::load(&pt).unwrap();
    let (weights, _) = read_safetensors(&run.join("best.safetensors")).unwrap();
    let (exported, _) = read_safetensors(&st).unwrap();
    assert_eq!(weights.keys().collect::<Vec<_>>(), exported.keys().collect::<Vec<_>>());
    // Parameters are the trainable variables, by their flowzoo names and values.
    let params = m.named_parameters().unwrap();
    assert!(!params.is_empty());
    for (name, p) in &params {
        let w = weights.get(name).unwrap_or_else(|| panic!("parameter {name} is not in the weights"));
        assert_eq!(max_diff(p, w), 0.0, "{name}");
    }
    let n_buffers = weights.keys().filter(|k| k.ends_with("initialized") || k.ends_with(".p") || k.ends_with("sign_s")).count();
    assert_eq!(params.len() + n_buffers, weights.len());
}

fn export_cli(run: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flowzoo"))
        .arg("export")
        .arg("--model")
        .arg(run)
        .args(extra)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn export_errors_name_what_is_wrong() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let pt = dir.path().join("model.pt");
    let pt_arg = pt.to_str().unwrap();
    let err = |run: &Path, o: &ExportOptions| format!("{:#}", export::export_run(run, o).unwrap_err());

    // Missing directory (library and CLI: exit status 1, one clear line, no panic).
    let missing = dir.path().join("nope");
    let e = err(&missing, &opts(&pt));
    assert!(e.contains("nope") && e.contains("does not exist"), "{e}");
    let (ok, stderr) = export_cli(&missing, &["--torchscript", pt_arg]);
    assert!(!ok && stderr.starts_with("error: ") && stderr.contains("does not exist") && !stderr.contains("panicked"), "{stderr}");

    let run = dir.path().join("run");
    fake_run(&run);
    // Nothing asked for.
    let e = err(&run, &ExportOptions { torchscript: None, ..opts(&pt) });
    assert!(e.contains("--torchscript"), "{e}");

    let cases: Vec<(&str, Box<dyn Fn(&Path)>, Vec<&str>)> = vec![
        ("state.json missing", Box::new(|r: &Path| std::fs::remove_file(r.join("state.json")).unwrap()), vec!["state.json", "is missing"]),
        ("config.toml missing", Box::new(|r: &Path| std::fs::remove_file(r.join("config.toml")).unwrap()), vec!["config.toml", "is missing"]),
        ("state.json truncated", Box::new(|r: &Path| truncate(&r.join("state.json"))), vec!["state.json", "truncated"]),
        ("config.toml truncated", Box::new(|r: &Path| std::fs::write(r.join("config.toml"), "[data]\npath = \"data/dig").unwrap()), vec!["config.toml"]),
        ("best.safetensors truncated", Box::new(|r: &Path| truncate(&r.join("best.safetensors"))), vec!["best.safetensors", "truncated"]),
        (
            "no weights at all",
            Box::new(|r: &Path| {
                std::fs::remove_file(r.join("best.safetensors")).unwrap();
                std::fs::remove_file(r.join("weights.safetensors")).unwrap();
            }),
            vec!["no weights", "weights.safetensors", "is missing"],
        ),
    ];
    for (what, damage, want) in cases {
        let run = dir.path().join(what.replace(' ', "_"));
        fake_run(&run);
        damage(&run);
        let e = err(&run, &opts(&pt));
        for w in &want {
            assert!(e.contains(w), "{what}: {w:?} not in {e:?}");
        }
        assert!(e.contains("cannot export"), "{what}: {e}");
        let (ok, stderr) = export_cli(&run, &["--torchscript", pt_arg]);
        assert!(!ok && stderr.contains(want[0]) && !stderr.contains("panicked"), "{what}: {stderr}");
        assert!(!pt.exists(), "{what}: a module was written");
    }
    // `--checkpoint last` reads weights.safetensors: truncated, it is named (best is fine).
    let run = dir.path().join("last");
    fake_run(&run);
    truncate(&run.join("weights.safetensors"));
    export::export_run(&run, &opts(&pt)).unwrap();
    std::fs::remove_file(&pt).unwrap();
    let e = err(&run, &ExportOptions { checkpoint: Checkpoint::Last, ..opts(&pt) });
    assert!(e.contains("weights.safetensors") && e.contains("truncated"), "{e}");
    let (ok, stderr) = export_cli(&run, &["--torchscript", pt_arg, "--checkpoint", "last"]);
    assert!(!ok && stderr.contains("weights.safetensors"), "{stderr}");
}

fn truncate(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
}
