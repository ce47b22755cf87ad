//! TorchScript of the autoregressive and spline families against the Rust layers, float64 to
//! 1e-10: spline couplings (vectors and images), autoregressive layers with every bijection,
//! both inverse loops, residual MADEs, contexts, and IAF (`Inverse` of a layer).
mod common;
use common::check_flow_script;
use flowzoo::flows::testing::perturb;
use flowzoo::flows::*;
use tch::{nn::VarStore, Device, Kind, Tensor};

const F64: (Kind, Device) = (Kind::Double, Device::Cpu);

#[test]
fn spline_couplings_match_their_torchscript() {
    tch::manual_seed(0);
    // Vectors with an MLP conditioner (and a context), images with Glow's conv net.
    for (shape, context) in [(vec![4i64, 5], 0i64), (vec![4, 5], 3), (vec![3, 4, 4, 4], 0)] {
        let mut vs = VarStore::new(Device::Cpu);
        let spline = RationalQuadraticSpline::new(4, 1.5).unwrap();
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
        check_flow_script(&format!("spline coupling {shape:?} context={context}"), &vs, &c, &x, (context > 0).then_some(&cond));
    }
}

#[test]
fn autoregressive_layers_match_their_torchscript() {
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
