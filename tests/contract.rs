//! The layer contract itself: `Inverse`, conditional couplings, every elementwise bijection on
//! its own, the sink for regularisers and counters, stochastic log-dets, bases, and `Send`.
use flowzoo::flows::testing::{brute_force_logdet, check_flow, perturb, BaseFlow, NoisyScale};
use flowzoo::flows::*;
use tch::{nn::VarStore, Device, Kind, Tensor};

const F64: (Kind, Device) = (Kind::Double, Device::Cpu);

fn assert_ok(name: &str, flow: &dyn Flow, x: &Tensor, ctx: &Ctx) {
    let c = check_flow(flow, x, ctx).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    assert!(c.inverse_err < 1e-10, "{name}: inverse error {}", c.inverse_err);
    assert!(c.logdet_err < 1e-6, "{name}: log-det differs from brute force by {}", c.logdet_err);
    assert!(c.inverse_logdet_err < 1e-10, "{name}: forward + inverse log-det = {}", c.inverse_logdet_err);
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

/// `Inverse(f)` runs `f` backwards: its forward is `f`'s inverse, the log-dets negate, and the
/// inverse of the inverse is `f` again.
#[test]
fn inverse_swaps_directions_and_negates_logdets() {
    tch::manual_seed(0);
    let mut vs = VarStore::new(Device::Cpu);
    let lu = InvConv1x1Lu::new(vs.root() / "w", 4);
    let an = ActNorm::new(vs.root() / "a", 4, 4, ActNormParam::Log);
    perturb(&vs, 0.3);
    vs.double();
    let x = Tensor::randn([3, 4, 2, 2], F64);
    let ctx = Ctx::eval();
    let (y, ld) = lu.forward(&x, &ctx).unwrap();
    let inv = Inverse(lu);
    let (x_back, ld_inv) = inv.forward(&y, &ctx).unwrap();
    assert!(max_abs(&(&x_back - &x)) < 1e-12);
    assert!(max_abs(&(&ld_inv + &ld)) < 1e-12, "log-dets must negate");
    let (y2, ld2) = inv.inverse(&x, &ctx).unwrap();
    assert!(max_abs(&(&y2 - &y)) < 1e-12 && max_abs(&(&ld2 - &ld)) < 1e-12);
    // Inverse of the inverse is the layer.
    let twice = Inverse(Inverse(an));
    let (a, lda) = twice.forward(&x, &ctx).unwrap();
    let (b, ldb) = twice.inner().inner().forward(&x, &ctx).unwrap();
    assert!(max_abs(&(&a - &b)) == 0.0 && max_abs(&(&lda - &ldb)) == 0.0);
    assert_ok("Inverse(InvConv1x1Lu)", &inv, &x, &ctx);
    assert_eq!(inv.layer_name(), "Inverse(InvConv1x1Lu)");
}

/// A coupling whose conditioner reads a context: the output depends on it, the brute-force
/// log-det still matches, and a missing or mis-shaped context is an error naming the shape.
#[test]
fn conditional_couplings_depend_on_the_context() {
    tch::manual_seed(1);
    type Build = Box<dyn Fn(&VarStore) -> Coupling>;
    let cases: Vec<(&str, Vec<i64>, Build)> = vec![
        (
            "conv net",
            vec![3, 4, 4, 4],
            Box::new(|vs| Coupling::with_conv_net(vs.root() / "c", Box::new(ChannelHalves::new(false)), Box::new(Affine::glow()), 4, 8, 3).unwrap()),
        ),
        (
            "mlp",
            vec![3, 5],
            Box::new(|vs| {
                let (p, t): (Box<dyn Partition>, Box<dyn ElementwiseBijection>) = (Box::new(Alternating::new(0)), Box::new(Affine::exp_tanh()));
                let (c_in, c_out) = Coupling::net_features(p.as_ref(), t.as_ref(), 5);
                let net = MlpNet::with_context(vs.root() / "net", c_in, 3, 8, 2, c_out, Activation::Tanh).unwrap();
                Coupling::new(5, p, t, Box::new(net)).unwrap()
            }),
        ),
    ];
    for (name, shape, build) in cases {
        let mut vs = VarStore::new(Device::Cpu);
        let c = build(&vs);
        perturb(&vs, 0.3);
        vs.double();
        let x = Tensor::randn(shape.as_slice(), F64);
        let ctx_a = Tensor::randn([3, 3], F64);
        let ctx_b = Tensor::randn([3, 3], F64);
        let (ya, _) = c.forward(&x, &Ctx::eval().with_cond(Some(&ctx_a))).unwrap();
        let (yb, _) = c.forward(&x, &Ctx::eval().with_cond(Some(&ctx_b))).unwrap();
        assert!(max_abs(&(&ya - &yb)) > 1e-3, "{name}: the output must depend on the context");
        assert_ok(name, &c, &x, &Ctx::eval().with_cond(Some(&ctx_a)));
        let err = c.forward(&x, &Ctx::eval()).err().expect("context required").to_string();
        assert!(err.contains("pass a context of shape [B, 3]"), "{name}: {err}");
        let wrong = Tensor::randn([3, 2], F64);
        let err = c.forward(&x, &Ctx::eval().with_cond(Some(&wrong))).err().expect("shape checked").to_string();
        assert!(err.contains("expected a context of shape [3, 3], got [3, 2]"), "{name}: {err}");
    }
}

/// Every elementwise bijection on its own, in float64: inverse(forward(x)) = x to 1e-10 and
/// the log-derivative equal to autograd's d f / d x, feature by feature.
#[test]
fn every_elementwise_bijection_inverts_and_has_the_right_derivative() {
    tch::manual_seed(2);
    let bijections: Vec<Box<dyn ElementwiseBijection>> = vec![
        Box::new(Affine::new(ScaleFn::Sigmoid2, ParamLayout::Interleaved)),
        Box::new(Affine::new(ScaleFn::Sigmoid2, ParamLayout::Contiguous)),
        Box::new(Affine::new(ScaleFn::ExpTanh, ParamLayout::Interleaved)),
        Box::new(Affine::new(ScaleFn::ExpTanh, ParamLayout::Contiguous)),
        Box::new(Additive),
    ];
    for b in bijections {
        let name = b.name();
        let p = b.params_per_feature();
        for shape in [vec![4i64, 3], vec![2, 3, 2, 2]] {
            let x = Tensor::randn(shape.as_slice(), F64).set_requires_grad(true);
            let mut hs = shape.clone();
            hs[1] *= p;
            let h = Tensor::randn(hs.as_slice(), F64) * 2.0;
            let (y, ld) = b.forward(&x, &h).unwrap();
            let (x2, ld2) = b.inverse(&y.detach(), &h).unwrap();
            assert!(max_abs(&(&x2 - &x.detach())) < 1e-10, "{name}: inverse error");
            // Elementwise maps: d y_i / d x_i is the diagonal of the Jacobian, i.e. the gradient
            // of Σ y with respect to x.
            let g = Tensor::run_backward(&[y.sum(Kind::Double)], &[&x], false, false).pop().unwrap();
            let want = g.log();
            match (ld, ld2) {
                (Some(l), Some(l2)) => {
                    assert!(max_abs(&(&l - &want)) < 1e-10, "{name}: log-derivative differs from autograd");
                    assert!(max_abs(&(&l2 - &l)) < 1e-10, "{name}: the inverse must report the forward log-derivative");
                }
                (None, None) => {
                    assert!(b.volume_preserving(), "{name}");
                    assert!(max_abs(&want) < 1e-12, "{name}: volume preserving but d f / d x != 1");
                }
                _ => panic!("{name}: forward and inverse disagree on the log-derivative"),
            }
            let bad = Tensor::randn([4, 3 * p + 1], F64);
            if shape.len() == 2 {
                let err = b.forward(&x, &bad).err().expect("parameter shape checked").to_string();
                assert!(err.contains("per feature"), "{name}: {err}");
            }
        }
    }
}

/// A coupling refuses a conditioner whose sizes do not fit its partition and bijection.
#[test]
fn coupling_checks_its_parts_fit() {
    let vs = VarStore::new(Device::Cpu);
    let net = MlpNet::new(vs.root() / "net", 2, 8, 1, 4, Activation::Relu).unwrap();
    let err = Coupling::new(5, Box::new(Alternating::new(0)), Box::new(Affine::exp_tanh()), Box::new(net)).err().unwrap().to_string();
    assert!(err.contains("needs a conditioner 3 -> 4, got 2 -> 4"), "{err}");
}

/// The sink collects penalties and counters from every layer of a composite; a stochastic
/// log-det is unbiased (its mean over many draws is the exact value within a few standard
/// errors) and the exact one is used whenever `stochastic_logdet` is off.
#[test]
fn sink_and_stochastic_logdets() {
    tch::manual_seed(3);
    let mut vs = VarStore::new(Device::Cpu);
    let mut s = Sequential::new();
    s.push(NoisyScale::new(vs.root() / "a", 6));
    s.push(NoisyScale::new(vs.root() / "b", 6));
    perturb(&vs, 0.5);
    vs.double();
    let x = Tensor::randn([4000, 6], F64);
    let exact = s.forward(&x, &Ctx::eval()).unwrap().1;
    let sink = Sink::new();
    let ctx = Ctx { stochastic_logdet: true, ..Ctx::train() }.with_sink(&sink);
    let (_, est) = s.forward(&x, &ctx).unwrap();
    assert_eq!(sink.counters()["nfe"], 2.0);
    let pens = sink.penalties();
    assert_eq!(pens.len(), 2);
    assert!(pens.iter().all(|(n, t)| n == "kinetic" && t.size() == [4000]));
    let total = sink.total_penalty().unwrap().unwrap().double_value(&[]);
    let by_hand: f64 = pens.iter().map(|(_, t)| t.mean(Kind::Double).double_value(&[])).sum();
    assert!((total - by_hand).abs() < 1e-12 && total > 0.0);
    let e = exact.double_value(&[0]);
    assert!(max_abs(&(&exact - e)) < 1e-12, "the exact log-det is the same for every sample");
    let mean = est.mean(Kind::Double).double_value(&[]);
    let sem = est.std(true).double_value(&[]) / (4000f64).sqrt();
    assert!(sem > 0.0, "a stochastic estimate must vary");
    assert!((mean - e).abs() < 4.0 * sem, "biased estimate: mean {mean}, exact {e}, stderr {sem}");
    // Without a sink nothing is collected and nothing fails.
    assert!(s.forward(&x, &Ctx::eval()).is_ok());
    assert_ok("NoisyScale (exact)", &s, &Tensor::randn([3, 6], F64), &Ctx::eval());
}

/// Bases as bijections onto noise: log-dets against brute force, `log_prob` against the
/// closed-form Gaussian density, reparameterised samples that carry gradients.
#[test]
fn bases_are_gaussians_with_exact_log_dets() {
    tch::manual_seed(4);
    let mut vs = VarStore::new(Device::Cpu);
    let diag = DiagGaussian::new(vs.root() / "base", 3);
    perturb(&vs, 0.5);
    vs.double();
    let z = Tensor::randn([5, 3], F64);
    assert_ok("DiagGaussian", &BaseFlow(diag), &z, &Ctx::eval());
    let mut vs2 = VarStore::new(Device::Cpu);
    let diag = DiagGaussian::new(vs2.root() / "base", 3);
    vs2.double();
    let _ = tch::no_grad(|| diag.loc.shallow_clone().f_copy_(&Tensor::from_slice(&[1.0f64, -2.0, 0.5])));
    let _ = tch::no_grad(|| diag.log_std.shallow_clone().f_copy_(&Tensor::from_slice(&[0.3f64, -0.7, 0.0])));
    let lp = diag.log_prob(&z, &Ctx::eval()).unwrap();
    let mut want = Tensor::zeros([5], F64);
    for (j, (m, ls)) in [(1.0f64, 0.3f64), (-2.0, -0.7), (0.5, 0.0)].into_iter().enumerate() {
        let zj = z.select(1, j as i64);
        let t = ((&zj - m) / ls.exp()).square() * -0.5 - ls - 0.5 * (2.0 * std::f64::consts::PI).ln();
        want += t;
    }
    assert!(max_abs(&(&lp - &want)) < 1e-12);
    assert!(max_abs(&(StandardNormal.log_prob(&z, &Ctx::eval()).unwrap() - standard_normal_log_prob(&z).unwrap())) == 0.0);
    let (s, lq) = diag.rsample(4, 3, 1.0, &Ctx::eval(), F64).unwrap();
    assert!(max_abs(&(diag.log_prob(&s, &Ctx::eval()).unwrap() - &lq)) < 1e-12, "rsample's log q is the base's log_prob");
    let g = Tensor::run_backward(&[s.sum(Kind::Double)], &[&diag.loc], false, false);
    assert!(max_abs(&(&g[0] - 4.0)) < 1e-12, "samples are reparameterised");
    let err = diag.to_noise(&Tensor::zeros([2, 4], F64), &Ctx::eval()).err().unwrap().to_string();
    assert!(err.contains("expected latents [B, 3], got [2, 4]"), "{err}");
}

/// Models and layers are `Send` (evaluation and distributed training can move them to threads).
#[test]
fn layers_and_models_are_send() {
    fn is_send<T: Send>() {}
    is_send::<Coupling>();
    is_send::<InvConv1x1Lu>();
    is_send::<Sequential>();
    is_send::<Box<dyn Flow>>();
    is_send::<Box<dyn Base>>();
    is_send::<Box<dyn flowzoo::models::DensityModel>>();
    is_send::<flowzoo::session::Session>();
    // ... and actually usable from another thread.
    let vs = VarStore::new(Device::Cpu);
    let lu = InvConv1x1Lu::new(vs.root() / "w", 3);
    let x = Tensor::randn([2, 3], (Kind::Float, Device::Cpu));
    let ld = std::thread::spawn(move || {
        let _g = tch::no_grad_guard();
        lu.forward(&x, &Ctx::eval()).unwrap().1
    })
    .join()
    .unwrap();
    assert_eq!(ld.size(), vec![2]);
}

/// The brute-force check itself can fail: a layer that misreports its log-det is caught.
#[test]
fn brute_force_check_catches_a_wrong_logdet() {
    struct Liar;
    impl Flow for Liar {
        fn forward(&self, x: &Tensor, _ctx: &Ctx) -> anyhow::Result<(Tensor, Tensor)> {
            Ok((x * 2.0, Tensor::zeros([x.size()[0]], (x.kind(), x.device()))))
        }
        fn inverse(&self, y: &Tensor, _ctx: &Ctx) -> anyhow::Result<(Tensor, Tensor)> {
            Ok((y / 2.0, Tensor::zeros([y.size()[0]], (y.kind(), y.device()))))
        }
    }
    let x = Tensor::randn([2, 3], F64);
    let brute = brute_force_logdet(&Liar, &x, &Ctx::eval()).unwrap();
    assert!(max_abs(&(brute - 3.0 * 2f64.ln())) < 1e-12);
    assert!(check_flow(&Liar, &x, &Ctx::eval()).unwrap().logdet_err > 2.0);
}
