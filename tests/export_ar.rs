//! TorchScript of the autoregressive and spline families against the Rust layers, float64 to
//! 1e-10: spline couplings (vectors and images), autoregressive layers with every bijection,
//! both inverse loops, residual MADEs, contexts, and IAF (`Inverse` of a layer); whole MAF, IAF
//! and NSF modules; conditional models with their context. (libtorch's generator is global:
//! every test here takes `rng_lock`, as seeded samples are compared.)
mod common;
use common::check_flow_script;
use flowzoo::flows::testing::perturb;
use flowzoo::flows::*;
use tch::{nn::VarStore, Device, Kind, Tensor};

const F64: (Kind, Device) = (Kind::Double, Device::Cpu);

#[test]
fn spline_couplings_match_their_torchscript() {
    let _rng = common::rng_lock();
    tch::manual_seed(0);
    // Vectors with an MLP conditioner (and a context; the circular spline), images with Glow's
    // conv net.
    for (shape, context) in [(vec![4i64, 5], 0i64), (vec![4, 5], 3), (vec![3, 4, 4, 4], 0), (vec![4, 5], 1)] {
        let mut vs = VarStore::new(Device::Cpu);
        let circular = context == 1;
        let spline = if circular { RationalQuadraticSpline::circular(4).unwrap() } else { RationalQuadraticSpline::new(4, 1.5).unwrap() };
        let c = if shape.len() == 2 {
            let p: Box<dyn Partition> = Box::new(Alternating::new(1));
            let (c_in, c_out) = Coupling::net_features(p.as_ref(), &spline, shape[1]);
            let net = MlpNet::with_context(vs.root() / "net", c_in, context, 8, 2, c_out, Activation::Relu).unwrap();
            Coupling::new(shape[1], p, Box::new(spline), Box::new(net)).unwrap()
        } else {
            Coupling::with_conv_net(vs.root() / "c", Box::new(ChannelHalves::new(true)), Box::new(spline), 4, 8, 0).unwrap()
        };
        // (Glow's conv net computes NHWC in Rust and NCHW in TorchScript: round-off apart, which
        // very uneven bins from large weights would amplify past 1e-10.)
        perturb(&vs, if shape.len() == 2 { 0.5 } else { 0.1 });
        vs.double();
        // Inputs inside and outside [-1.5, 1.5].
        let x = Tensor::randn(shape.as_slice(), F64) * 1.5;
        let cond = Tensor::randn([shape[0], context.max(1)], F64);
        check_flow_script(&format!("spline coupling {shape:?} context={context} circular={circular}"), &vs, &c, &x, (context > 0).then_some(&cond));
    }
}

#[test]
fn autoregressive_layers_match_their_torchscript() {
    let _rng = common::rng_lock();
    tch::manual_seed(1);
    let d = 4;
    let transforms: Vec<(&str, Box<dyn Fn() -> Box<dyn ElementwiseBijection>>)> = vec![
        ("affine", Box::new(|| Box::new(Affine::exp_tanh()))),
        ("additive", Box::new(|| Box::new(Additive))),
        ("spline", Box::new(|| Box::new(RationalQuadraticSpline::new(5, 2.0).unwrap()))),
    ];
    for (name, t) in &transforms {
        for inverse in [InverseMethod::Sequential, InverseMethod::Jacobi { tol: 1e-12 }] {
            for (residual, context, iaf) in [(false, 0i64, false), (true, 2, false), (false, 2, true)] {
                let mut vs = VarStore::new(Device::Cpu);
                let transform = t();
                let o = MadeOptions {
                    features: d,
                    params_per_feature: transform.params_per_feature(),
                    context_dim: context,
                    hidden: 11,
                    layers: 2,
                    order: MadeOrder::Random,
                    degrees: HiddenDegrees::Cyclic,
                    residual,
                    activation: Activation::Relu,
                };
                let layer = Autoregressive::new(Made::new(vs.root() / "made", &o).unwrap(), transform, inverse).unwrap();
                let flow: Box<dyn Flow> = if iaf { Box::new(Inverse(layer)) } else { Box::new(layer) };
                perturb(&vs, 0.4);
                vs.double();
                let x = Tensor::randn([5, d], F64) * 1.5;
                let cond = Tensor::randn([5, context.max(1)], F64);
                let what = format!("{name} {inverse:?} residual={residual} context={context} iaf={iaf}");
                check_flow_script(&what, &vs, flow.as_ref(), &x, (context > 0).then_some(&cond));
            }
        }
    }
}

/// Whole MAF, IAF and NSF (both structures) sessions exported as modules against the sessions'
/// models, float64: forward, log_prob, inverse (the sequential and Jacobi loops) and seeded
/// samples, two batch sizes.
#[test]
fn maf_iaf_nsf_modules_match_the_models() {
    use common::{opt, pair, rng_lock, tensor};
    use flowzoo::config::Config;
    use flowzoo::models::DataInfo;
    use flowzoo::session::Session;
    use tch::IValue;
    let _rng = rng_lock();
    let cases: &[(&str, &[&str])] = &[
        ("maf", &["model.kind=maf", "model.permutation=reverse", "model.norm=batchnorm"]),
        ("maf jacobi random order", &["model.kind=maf", "model.inverse=jacobi", "model.made_order=random", "model.permutation=invconv_lu", "model.norm=actnorm"]),
        ("iaf", &["model.kind=iaf", "model.made_order=alternating", "model.permutation=none", "model.base=diag_gaussian"]),
        ("nsf-ar residual", &["model.kind=nsf", "model.structure=autoregressive", "model.residual=true", "model.permutation=reverse"]),
        ("nsf-c", &["model.kind=nsf", "model.structure=coupling", "model.permutation=invconv_lu", "model.norm=batchnorm"]),
    ];
    for (what, sets) in cases {
        let mut cfg = Config::default();
        cfg.data.kind = flowzoo::config::DataKind::Tabular;
        let mut all: Vec<String> = ["model.blocks=3", "model.width=9", "model.depth=2", "model.bins=4", "model.tail_bound=2.5"].iter().map(|s| s.to_string()).collect();
        all.extend(sets.iter().map(|s| s.to_string()));
        let cfg = cfg.with_overrides(&all).unwrap();
        let info = DataInfo { classes: vec!["0".into()], columns: (0..4).map(|i| format!("c{i}")).collect() };
        let mut sess = Session::new_for(&cfg, info, Device::Cpu).unwrap();
        perturb(&sess.vs, 0.1);
        sess.vs.double();
        let module = flowzoo::export::session_module(&sess).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        let m = module.to_cmodule().unwrap();
        let _g = tch::no_grad_guard();
        for b in [2i64, 5] {
            let x = Tensor::randn([b, 4], F64) * 1.5;
            let ctx = Ctx::eval();
            let (z, ld) = sess.model.to_noise(&x, &ctx).unwrap();
            let (zs, lds) = pair(m.forward_is(&[IValue::Tensor(x.shallow_clone())]).unwrap());
            let lp = sess.model.log_prob(&x, &ctx).unwrap();
            let lps = tensor(m.method_is("log_prob", &[IValue::Tensor(x.shallow_clone())]).unwrap());
            let (xr, _) = sess.model.from_noise(&z, &ctx).unwrap();
            let xs = tensor(m.method_is("inverse", &[IValue::Tensor(z.shallow_clone())]).unwrap());
            tch::manual_seed(4);
            let s = sess.model.sample(b, 0.8, &ctx, F64).unwrap();
            tch::manual_seed(4);
            let ss = tensor(m.method_is("sample", &[IValue::Int(b), IValue::Double(0.8), opt(None)]).unwrap());
            for (name, a, r) in [("z", &zs, &z), ("logdet", &lds, &ld), ("log_prob", &lps, &lp), ("inverse", &xs, &xr), ("sample", &ss, &s)] {
                let d = common::max_diff(a, r);
                assert!(d < 1e-10, "{what} B={b}: {name} differs by {d:e}");
            }
            assert!(common::max_diff(&xr, &x) < 1e-8, "{what}: the model's own round trip");
        }
        // The masks and orders travel as buffers (registered: not trainable in PyTorch).
        let params: Vec<String> = m.named_parameters().unwrap().into_iter().map(|(n, _)| n).collect();
        let vars = sess.vs.variables();
        assert!(params.iter().all(|n| vars[n].requires_grad()), "{what}");
        if !what.starts_with("nsf-c") {
            assert!(vars.contains_key("blocks.0.made.order") && !params.contains(&"blocks.0.made.0.mask".to_string()), "{what}: {params:?}");
        }
    }
}

/// A conditional MAF, IAF and NSF (built at the library level with a context): the model's
/// flow and base in TorchScript take the context as `cond` and match the Rust model.
#[test]
fn conditional_models_match_their_torchscript() {
    use flowzoo::config::Config;
    use flowzoo::flows::testing::BaseFlow;
    use flowzoo::models::realnvp::VectorSpec;
    use flowzoo::models::{Maf, Nsf};
    let _rng = common::rng_lock();
    let spec = VectorSpec { dim: 3, standardize: true, context_dim: 2 };
    for (what, kind, sets) in [
        ("MAF", "maf", &["model.inverse=jacobi", "model.jacobi_tol=0"][..]),
        ("IAF", "iaf", &[][..]),
        ("NSF-AR", "nsf", &[][..]),
        ("NSF-C", "nsf", &["model.structure=coupling"][..]),
    ] {
        let mut cfg = Config::default();
        cfg.data.kind = flowzoo::config::DataKind::Tabular;
        let mut all: Vec<String> = [format!("model.kind={kind}"), "model.blocks=2".into(), "model.width=8".into(), "model.bins=3".into(), "model.permutation=reverse".into(), "model.norm=none".into()].to_vec();
        all.extend(sets.iter().map(|s| s.to_string()));
        let cfg = cfg.with_overrides(&all).unwrap();
        tch::manual_seed(3);
        let mut vs = VarStore::new(Device::Cpu);
        let model = if kind == "nsf" { Nsf::build(vs.root(), &cfg, &spec).unwrap() } else { Maf::build(vs.root(), &cfg, &spec, kind == "iaf").unwrap() };
        let mut whole = Sequential::new();
        whole.layers.push(Box::new(model.flow));
        whole.push(BaseFlow(model.base));
        perturb(&vs, 0.2);
        vs.double();
        let x = Tensor::randn([4, 3], F64);
        let cond = Tensor::randn([4, 2], F64);
        check_flow_script(&format!("conditional {what}"), &vs, &whole, &x, Some(&cond));
    }
}
