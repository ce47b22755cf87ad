//! MADE and autoregressive layers: the MADE's Jacobian is strictly triangular under its
//! ordering (and every output sees the context), the layers invert and match the brute-force
//! log-det for every bijection, the Jacobi inverse equals the sequential one, and IAF (the
//! inverse of a MAF layer) samples in one pass.
mod common;
use flowzoo::flows::testing::{check_flow, perturb};
use flowzoo::flows::*;
use tch::{nn::VarStore, Device, Kind, Tensor};

const F64: (Kind, Device) = (Kind::Double, Device::Cpu);

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

fn opts(d: i64, p: i64, k: i64, order: MadeOrder, degrees: HiddenDegrees, residual: bool) -> MadeOptions {
    MadeOptions { features: d, params_per_feature: p, context_dim: k, hidden: 3 * d + 2, layers: 2, order, degrees, residual, activation: Activation::Tanh }
}

/// d out[:, i·P + q] / d x[:, j] for one sample, `[D·P, D]` (and `[D·P, K]` for the context).
fn jacobian(made: &Made, x: &Tensor, c: Option<&Tensor>) -> (Tensor, Option<Tensor>) {
    let xg = x.detach().set_requires_grad(true);
    let cg = c.map(|c| c.detach().set_requires_grad(true));
    let out = made.forward(&xg, &Ctx::eval().with_cond(cg.as_ref())).unwrap();
    let (mut jx, mut jc) = (vec![], vec![]);
    for o in 0..out.size()[1] {
        let mut inputs = vec![&xg];
        if let Some(c) = &cg {
            inputs.push(c);
        }
        let g = Tensor::run_backward(&[out.select(1, o).sum(Kind::Double)], &inputs, true, false);
        jx.push(g[0].shallow_clone());
        if cg.is_some() {
            jc.push(g[1].shallow_clone());
        }
    }
    (Tensor::stack(&jx, 0).squeeze_dim(1), cg.map(|_| Tensor::stack(&jc, 0).squeeze_dim(1)))
}

#[test]
fn made_jacobian_is_strictly_triangular_under_its_ordering() {
    // Seeded draws: tests that use libtorch's global generator take turns.
    let _rng = common::rng_lock();
    tch::manual_seed(0);
    let d = 5;
    let p = 2;
    let given = vec![3i64, 0, 4, 1, 2];
    for (order, degrees, residual, k) in [
        (MadeOrder::Natural, HiddenDegrees::Cyclic, false, 0),
        (MadeOrder::Reversed, HiddenDegrees::Cyclic, false, 0),
        (MadeOrder::Random, HiddenDegrees::Random, false, 0),
        (MadeOrder::Given(given.clone()), HiddenDegrees::Cyclic, true, 0),
        (MadeOrder::Natural, HiddenDegrees::Cyclic, false, 3),
        (MadeOrder::Random, HiddenDegrees::Random, false, 3),
        (MadeOrder::Given(given.clone()), HiddenDegrees::Cyclic, true, 3),
    ] {
        let what = format!("{order:?} {degrees:?} residual={residual} context={k}");
        let mut vs = VarStore::new(Device::Cpu);
        let made = Made::new(vs.root() / "made", &opts(d, p, k, order.clone(), degrees, residual)).unwrap();
        perturb(&vs, 0.5);
        vs.double();
        let ord = made.order_vec().unwrap();
        match &order {
            MadeOrder::Natural => assert_eq!(ord, vec![0, 1, 2, 3, 4]),
            MadeOrder::Reversed => assert_eq!(ord, vec![4, 3, 2, 1, 0]),
            MadeOrder::Given(g) => assert_eq!(&ord, g),
            MadeOrder::Random => assert!(ord.iter().all(|&i| (0..d).contains(&i))),
        }
        let mut pos = vec![0usize; d as usize];
        for (k, &i) in ord.iter().enumerate() {
            pos[i as usize] = k;
        }
        let x = Tensor::randn([1, d], F64);
        let c = (k > 0).then(|| Tensor::randn([1, k], F64));
        let (jx, jc) = jacobian(&made, &x, c.as_ref());
        for i in 0..d as usize {
            for q in 0..p as usize {
                for j in 0..d as usize {
                    let v = jx.double_value(&[(i * p as usize + q) as i64, j as i64]);
                    if pos[j] >= pos[i] {
                        assert_eq!(v, 0.0, "{what}: output {i}.{q} depends on x_{j}, which is not before it");
                    } else if degrees == HiddenDegrees::Cyclic {
                        // Enough hidden units of every degree: every allowed connection exists.
                        assert!(v != 0.0, "{what}: output {i}.{q} does not depend on x_{j}, which is before it");
                    }
                }
            }
        }
        if let Some(jc) = jc {
            // Every output, the first feature's included, depends on the context.
            let per_output = jc.abs().sum_dim_intlist(Some(&[1i64][..]), false, None::<Kind>);
            assert!(bool::try_from(per_output.gt(0.0).all()).unwrap(), "{what}: some outputs ignore the context: {per_output:?}");
        }
    }
}

#[test]
fn made_saves_its_order_and_masks_and_refuses_bad_options() {
    // Seeded draws: tests that use libtorch's global generator take turns.
    let _rng = common::rng_lock();
    tch::manual_seed(1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let vs = VarStore::new(Device::Cpu);
    let a = Made::new(vs.root() / "made", &opts(6, 2, 0, MadeOrder::Random, HiddenDegrees::Random, false)).unwrap();
    perturb(&vs, 0.5);
    let names: Vec<String> = vs.variables().into_keys().collect();
    for n in ["made.order", "made.0.mask", "made.2.mask", "made.4.mask", "made.4.weight"] {
        assert!(names.contains(&n.to_string()), "{n} not in {names:?}");
    }
    assert!(!vs.variables()["made.order"].requires_grad() && !vs.variables()["made.0.mask"].requires_grad());
    vs.save(&path).unwrap();
    // Another draw, then the saved weights: the same order, masks and outputs.
    tch::manual_seed(2);
    let mut vs2 = VarStore::new(Device::Cpu);
    let b = Made::new(vs2.root() / "made", &opts(6, 2, 0, MadeOrder::Random, HiddenDegrees::Random, false)).unwrap();
    assert_ne!(a.order_vec().unwrap(), b.order_vec().unwrap(), "two draws should differ (seeded)");
    vs2.load(&path).unwrap();
    assert_eq!(a.order_vec().unwrap(), b.order_vec().unwrap());
    let x = Tensor::randn([3, 6], (Kind::Float, Device::Cpu));
    let (ya, yb) = (a.forward(&x, &Ctx::eval()).unwrap(), b.forward(&x, &Ctx::eval()).unwrap());
    assert_eq!(max_abs(&(ya - yb)), 0.0);
    let err = Made::new(vs.root() / "r", &opts(4, 2, 0, MadeOrder::Natural, HiddenDegrees::Random, true)).err().unwrap().to_string();
    assert!(err.contains("random hidden degrees are not allowed with residual blocks"), "{err}");
    let err = Made::new(vs.root() / "g", &opts(3, 2, 0, MadeOrder::Given(vec![0, 0, 2]), HiddenDegrees::Cyclic, false)).err().unwrap().to_string();
    assert!(err.contains("not a permutation of 0..3"), "{err}");
    let err = a.forward(&Tensor::zeros([2, 5], (Kind::Float, Device::Cpu)), &Ctx::eval()).unwrap_err().to_string();
    assert!(err.contains("expected input [B, 6], got [2, 5]"), "{err}");
    let _ = vs2.double();
}

fn layer(vs: &VarStore, d: i64, k: i64, transform: Box<dyn ElementwiseBijection>, inverse: InverseMethod, residual: bool) -> Autoregressive {
    let o = MadeOptions { params_per_feature: transform.params_per_feature(), ..opts(d, 1, k, MadeOrder::Random, HiddenDegrees::Cyclic, residual) };
    Autoregressive::new(Made::new(vs.root() / "made", &o).unwrap(), transform, inverse).unwrap()
}

fn transforms() -> Vec<(&'static str, Box<dyn Fn() -> Box<dyn ElementwiseBijection>>)> {
    vec![
        ("affine", Box::new(|| Box::new(Affine::exp_tanh()))),
        ("sigmoid affine", Box::new(|| Box::new(Affine::glow()))),
        ("additive", Box::new(|| Box::new(Additive))),
        ("spline", Box::new(|| Box::new(RationalQuadraticSpline::new(5, 2.0).unwrap()))),
    ]
}

/// Every bijection × both inverse methods × plain / residual MADE × with and without a context:
/// inverse to 1e-10, log-det against the brute-force Jacobian, forward + inverse log-det = 0.
#[test]
fn autoregressive_layers_invert_with_exact_log_dets() {
    // Seeded draws: tests that use libtorch's global generator take turns.
    let _rng = common::rng_lock();
    tch::manual_seed(3);
    let d = 4;
    for (name, t) in transforms() {
        for inverse in [InverseMethod::Sequential, InverseMethod::Jacobi { tol: 0.0 }] {
            for (residual, k) in [(false, 0), (true, 2), (false, 2)] {
                let what = format!("{name} {inverse:?} residual={residual} context={k}");
                let mut vs = VarStore::new(Device::Cpu);
                let l = layer(&vs, d, k, t(), inverse, residual);
                perturb(&vs, 0.4);
                vs.double();
                let x = Tensor::randn([5, d], F64) * 1.5;
                let c = Tensor::randn([5, k.max(1)], F64);
                let ctx = Ctx::eval().with_cond((k > 0).then_some(&c));
                let r = check_flow(&l, &x, &ctx).unwrap_or_else(|e| panic!("{what}: {e:#}"));
                assert!(r.inverse_err < 1e-10, "{what}: inverse error {}", r.inverse_err);
                assert!(r.logdet_err < 1e-8, "{what}: log-det differs from brute force by {}", r.logdet_err);
                assert!(r.inverse_logdet_err < 1e-10, "{what}: forward + inverse log-det = {}", r.inverse_logdet_err);
                if k > 0 {
                    let c2 = Tensor::randn([5, k], F64);
                    let y1 = l.forward(&x, &ctx).unwrap().0;
                    let y2 = l.forward(&x, &Ctx::eval().with_cond(Some(&c2))).unwrap().0;
                    // Every feature, the first in the ordering too, moves with the context.
                    let moved = (&y1 - &y2).abs().amax(&[0i64][..], false);
                    assert!(bool::try_from(moved.gt(1e-6).all()).unwrap(), "{what}: some features ignore the context: {moved:?}");
                    let err = l.forward(&x, &Ctx::eval()).unwrap_err().to_string();
                    assert!(err.contains("pass a context of shape [B, 2]"), "{what}: {err}");
                }
            }
        }
    }
}

/// The Jacobi iteration reaches the sequential inverse: with tolerance 0 it runs all D
/// iterations and agrees to round-off; with a tolerance it stops early where the layer is
/// close to the identity, still within that tolerance's reach.
#[test]
fn jacobi_inverse_equals_the_sequential_inverse() {
    // Seeded draws: tests that use libtorch's global generator take turns.
    let _rng = common::rng_lock();
    tch::manual_seed(4);
    let d = 6;
    for (name, t) in transforms() {
        let mut vs = VarStore::new(Device::Cpu);
        let mut l = layer(&vs, d, 0, t(), InverseMethod::Sequential, false);
        perturb(&vs, 0.4);
        vs.double();
        let y = Tensor::randn([7, d], F64);
        let count = |l: &Autoregressive, y: &Tensor| {
            let sink = Sink::new();
            let (x, ld) = l.inverse(y, &Ctx::eval().with_sink(&sink)).unwrap();
            (x, ld, sink.counters()["made_passes"])
        };
        let (xs, lds, ns) = count(&l, &y);
        assert_eq!(ns, d as f64, "{name}: the sequential inverse makes D passes");
        // ... each over a prefix of the (degree-sorted) hidden units; without sorted degrees it
        // falls back to whole passes, with the same result.
        let sizes = l.made.prefix_sizes().unwrap().expect("hidden degrees are sorted");
        assert_eq!(sizes[0][0], 0, "{name}: the first feature reads no hidden unit");
        assert_eq!(sizes[0][d as usize], l.made.layers[0].weight.size()[0]);
        let deg = l.made.layers[0].degrees.shallow_clone();
        let saved = deg.copy();
        let _ = tch::no_grad(|| deg.shallow_clone().copy_(&deg.flip([0])));
        assert!(l.made.prefix_sizes().unwrap().is_none());
        let (xf, ldf, _) = count(&l, &y);
        assert!(max_abs(&(&xf - &xs)) < 1e-12 && max_abs(&(&ldf - &lds)) < 1e-12, "{name}: whole passes differ from prefix passes");
        let _ = tch::no_grad(|| deg.shallow_clone().copy_(&saved));
        l.inverse_method = InverseMethod::Jacobi { tol: 0.0 };
        let (xj, ldj, nj) = count(&l, &y);
        assert!(nj <= d as f64, "{name}: at most D iterations, got {nj}");
        assert!(max_abs(&(&xj - &xs)) < 1e-12 && max_abs(&(&ldj - &lds)) < 1e-12, "{name}: Jacobi differs from sequential by {}", max_abs(&(&xj - &xs)));
        l.inverse_method = InverseMethod::Jacobi { tol: 1e-9 };
        let (xt, _, _) = count(&l, &y);
        assert!(max_abs(&(&xt - &xs)) < 1e-7, "{name}: Jacobi with tolerance 1e-9 is off by {}", max_abs(&(&xt - &xs)));
        // Near the identity the fixed point converges in fewer than D iterations.
        let mut vs = VarStore::new(Device::Cpu);
        let mut near = layer(&vs, d, 0, t(), InverseMethod::jacobi(), false);
        perturb(&vs, 1e-4);
        vs.double();
        let (_, _, n_near) = count(&near, &y);
        near.inverse_method = InverseMethod::Sequential;
        let (x_seq, _, _) = count(&near, &y);
        near.inverse_method = InverseMethod::jacobi();
        assert!(max_abs(&(near.inverse(&y, &Ctx::eval()).unwrap().0 - x_seq)) < 1e-6, "{name}");
        if name != "additive" {
            assert!(n_near < d as f64, "{name}: near the identity Jacobi should stop early, took {n_near}");
        }
    }
}

/// IAF is `Inverse` of an autoregressive layer: sampling (its inverse) is one network pass,
/// density (its forward) D passes; and it is a correct flow.
#[test]
fn iaf_samples_in_one_pass() {
    // Seeded draws: tests that use libtorch's global generator take turns.
    let _rng = common::rng_lock();
    tch::manual_seed(5);
    let d = 5;
    let mut vs = VarStore::new(Device::Cpu);
    let iaf = Inverse(layer(&vs, d, 0, Box::new(Affine::exp_tanh()), InverseMethod::Sequential, false));
    perturb(&vs, 0.4);
    vs.double();
    let eps = Tensor::randn([8, d], F64);
    let sink = Sink::new();
    let (x, _) = iaf.inverse(&eps, &Ctx::eval().with_sink(&sink)).unwrap();
    assert_eq!(sink.counters()["made_passes"], 1.0, "IAF sampling is one pass");
    let sink = Sink::new();
    let (e2, _) = iaf.forward(&x, &Ctx::eval().with_sink(&sink)).unwrap();
    assert_eq!(sink.counters()["made_passes"], d as f64, "IAF density is D passes");
    assert!(max_abs(&(e2 - &eps)) < 1e-10);
    let r = check_flow(&iaf, &x, &Ctx::eval()).unwrap();
    assert!(r.inverse_err < 1e-10 && r.logdet_err < 1e-8 && r.inverse_logdet_err < 1e-10);
    assert_eq!(iaf.layer_name(), "Inverse(Autoregressive(Affine(ExpTanh, Interleaved)))");
}

#[test]
fn autoregressive_checks_its_parts() {
    let vs = VarStore::new(Device::Cpu);
    let made = Made::new(vs.root() / "m", &opts(3, 2, 0, MadeOrder::Natural, HiddenDegrees::Cyclic, false)).unwrap();
    let err = Autoregressive::new(made, Box::new(RationalQuadraticSpline::standard()), InverseMethod::Sequential).err().unwrap().to_string();
    assert!(err.contains("needs 23 parameters per feature, the MADE produces 2"), "{err}");
}
