//! Every layer: inverse(forward(x)) == x in float64 to 1e-10, and its log-det equal to the
//! brute-force log|det J| from autograd to 1e-6, with every parameter moved off its init.
use flowzoo::flows::testing::{check_flow, perturb, BaseFlow};
use flowzoo::flows::*;
use tch::{nn::VarStore, Device, Kind, Tensor};

fn assert_ok(name: &str, flow: &dyn Flow, x: &Tensor, ctx: &Ctx) {
    let c = check_flow(flow, x, ctx).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    assert!(c.inverse_err < 1e-10, "{name}: inverse error {}", c.inverse_err);
    assert!(c.logdet_err < 1e-6, "{name}: log-det differs from brute force by {}", c.logdet_err);
    assert!(c.inverse_logdet_err < 1e-10, "{name}: forward + inverse log-det = {}", c.inverse_logdet_err);
}

/// Builds a layer in a fresh store, perturbs it, casts to float64, checks it.
fn check_layer<F: Flow>(name: &str, shape: &[i64], build: impl FnOnce(&VarStore) -> F) {
    tch::manual_seed(7);
    let mut vs = VarStore::new(Device::Cpu);
    let flow = build(&vs);
    perturb(&vs, 0.3);
    vs.double();
    let x = Tensor::randn(shape, (Kind::Double, Device::Cpu));
    assert_ok(name, &flow, &x, &Ctx::eval());
}

#[test]
fn actnorm_log_and_linear() {
    check_layer("ActNorm log", &[3, 4, 3, 3], |vs| ActNorm::new(vs.root() / "a", 4, 4, ActNormParam::Log));
    check_layer("ActNorm linear", &[3, 4, 3, 3], |vs| ActNorm::new(vs.root() / "a", 4, 4, ActNormParam::Linear));
    check_layer("ActNorm vector", &[5, 6], |vs| ActNorm::new(vs.root() / "a", 6, 2, ActNormParam::Log));
}

#[test]
fn actnorm_data_init_gives_zero_mean_unit_variance() {
    for param in [ActNormParam::Log, ActNormParam::Linear] {
        let vs = VarStore::new(Device::Cpu);
        let an = ActNorm::new(vs.root() / "a", 3, 4, param);
        let x = Tensor::randn([64, 3, 4, 4], (Kind::Float, Device::Cpu)) * 5.0 + 3.0;
        assert!(!an.is_initialized());
        let ctx = Ctx { data_init: true, ..Ctx::default() };
        let (y, _) = tch::no_grad(|| an.forward(&x, &ctx)).unwrap();
        assert!(an.is_initialized());
        let mean = y.mean_dim(Some(&[0i64, 2, 3][..]), false, Kind::Float);
        let var = y.var_dim(Some(&[0i64, 2, 3][..]), false, false);
        let max_mean = mean.abs().max().double_value(&[]);
        let max_var_err = (var - 1.0).abs().max().double_value(&[]);
        assert!(max_mean < 1e-5, "{param:?}: channel means {max_mean}");
        assert!(max_var_err < 1e-3, "{param:?}: channel variance off by {max_var_err}");
        // Once initialised it stays: a second batch does not re-initialise.
        let before = an.shift.copy();
        let _ = tch::no_grad(|| an.forward(&(x * 2.0), &ctx)).unwrap();
        assert_eq!(before.f_sub(&an.shift).unwrap().abs().max().double_value(&[]), 0.0);
    }
}

#[test]
fn invconv_plain_and_lu() {
    check_layer("InvConv1x1", &[2, 4, 3, 3], |vs| InvConv1x1::new(vs.root() / "c", 4));
    check_layer("InvConv1x1Lu", &[2, 4, 3, 3], |vs| InvConv1x1Lu::new(vs.root() / "c", 4));
    check_layer("InvConv1x1Lu vector", &[3, 5], |vs| InvConv1x1Lu::new(vs.root() / "c", 5));
}

#[test]
fn lu_masks_ignore_entries_outside_the_triangles() {
    let mut vs = VarStore::new(Device::Cpu);
    let lu = InvConv1x1Lu::new(vs.root() / "c", 4);
    vs.double();
    let w0 = lu.weight().unwrap();
    tch::no_grad(|| {
        // Fill the upper part of `lower` and the lower part (and diagonal) of `upper`.
        let _ = lu.lower.shallow_clone().f_add_(&Tensor::ones([4, 4], (Kind::Double, Device::Cpu)).triu(0)).unwrap();
        let _ = lu.upper.shallow_clone().f_add_(&Tensor::ones([4, 4], (Kind::Double, Device::Cpu)).tril(0)).unwrap();
    });
    let w1 = lu.weight().unwrap();
    assert!(w1.f_sub(&w0).unwrap().abs().max().double_value(&[]) == 0.0);
}

#[test]
fn permutations_and_squeeze() {
    check_layer("Permutation reverse", &[2, 5, 2, 2], |vs| Permutation::reverse(vs.root() / "p", 5));
    check_layer("Permutation shuffle", &[2, 5, 2, 2], |vs| Permutation::shuffle(vs.root() / "p", 5));
    check_layer("Squeeze", &[2, 2, 4, 4], |_| Squeeze);
}

#[test]
fn squeeze_is_channel_major() {
    // out[4c + 2dy + dx, i, j] = x[c, 2i + dy, 2j + dx]
    let x = Tensor::arange(2 * 4 * 4, (Kind::Double, Device::Cpu)).reshape([1, 2, 4, 4]);
    let (y, _) = Squeeze.forward(&x, &Ctx::eval()).unwrap();
    for c in 0..2i64 {
        for dy in 0..2i64 {
            for dx in 0..2i64 {
                for i in 0..2i64 {
                    for j in 0..2i64 {
                        let a = y.double_value(&[0, 4 * c + 2 * dy + dx, i, j]);
                        let b = x.double_value(&[0, c, 2 * i + dy, 2 * j + dx]);
                        assert_eq!(a, b);
                    }
                }
            }
        }
    }
    assert!(Squeeze.forward(&Tensor::zeros([1, 1, 3, 4], (Kind::Float, Device::Cpu)), &Ctx::eval()).is_err());
}

fn partitions() -> Vec<Box<dyn Fn() -> Box<dyn Partition>>> {
    vec![
        Box::new(|| Box::new(ChannelHalves::new(false))),
        Box::new(|| Box::new(ChannelHalves::new(true))),
        Box::new(|| Box::new(Checkerboard::new(0))),
        Box::new(|| Box::new(Checkerboard::new(1))),
    ]
}

#[test]
fn couplings_all_masks_and_layouts() {
    let transforms: Vec<Box<dyn Fn() -> Box<dyn ElementwiseBijection>>> = vec![
        Box::new(|| Box::new(Affine::new(ScaleFn::Sigmoid2, ParamLayout::Interleaved))),
        Box::new(|| Box::new(Affine::new(ScaleFn::Sigmoid2, ParamLayout::Contiguous))),
        Box::new(|| Box::new(Affine::new(ScaleFn::ExpTanh, ParamLayout::Interleaved))),
        Box::new(|| Box::new(Additive)),
    ];
    for transform in &transforms {
        for partition in partitions() {
            let name = format!("Coupling {} {}", transform().name(), partition().name());
            check_layer(&name, &[2, 4, 4, 4], |vs| Coupling::with_conv_net(vs.root() / "coupling", partition(), transform(), 4, 8, 0).unwrap());
        }
    }
    // Odd channel counts split unevenly but still invert.
    check_layer("Coupling odd channels", &[2, 5, 2, 2], |vs| {
        Coupling::with_conv_net(vs.root() / "c", Box::new(ChannelHalves::new(false)), Box::new(Affine::glow()), 5, 8, 0).unwrap()
    });
}

#[test]
fn coupling_starts_as_identity() {
    let vs = VarStore::new(Device::Cpu);
    let c = Coupling::with_conv_net(vs.root() / "c", Box::new(ChannelHalves::new(false)), Box::new(Additive), 4, 8, 0).unwrap();
    let x = Tensor::randn([2, 4, 4, 4], (Kind::Float, Device::Cpu));
    let (y, ld) = c.forward(&x, &Ctx::eval()).unwrap();
    assert_eq!(y.f_sub(&x).unwrap().abs().max().double_value(&[]), 0.0);
    assert_eq!(ld.abs().max().double_value(&[]), 0.0);
}

#[test]
fn zero_conv_one_padding_differs_at_the_border() {
    let vs = VarStore::new(Device::Cpu);
    let mut z = ZeroConv2d::new(vs.root() / "z", 1, 1);
    let _ = tch::no_grad(|| z.weight.shallow_clone().f_fill_(1.0).unwrap());
    let x = Tensor::zeros([1, 1, 3, 3], (Kind::Float, Device::Cpu));
    assert_eq!(z.forward(&x).unwrap().abs().sum(Kind::Float).double_value(&[]), 0.0);
    z.pad_value = 1.0;
    let y = z.forward(&x).unwrap();
    // corner sees 5 padded ones, edge 3, centre 0
    assert_eq!(y.double_value(&[0, 0, 0, 0]), 5.0);
    assert_eq!(y.double_value(&[0, 0, 0, 1]), 3.0);
    assert_eq!(y.double_value(&[0, 0, 1, 1]), 0.0);
}

#[test]
fn split_prior_and_learned_prior() {
    check_layer("SplitPrior", &[2, 4, 2, 2], |vs| {
        let inner = Box::new(Flatten { shape: vec![2, 2, 2] });
        SplitPrior::new(vs.root() / "split", [4, 2, 2], inner)
    });
    check_layer("SplitPrior contiguous", &[2, 4, 2, 2], |vs| {
        let inner = Box::new(Flatten { shape: vec![2, 2, 2] });
        let mut s = SplitPrior::new(vs.root() / "split", [4, 2, 2], inner);
        s.layout = ParamLayout::Contiguous;
        s
    });
    check_layer("LearnedPrior", &[2, 12], |vs| BaseFlow(LearnedPrior::new(vs.root() / "prior", [3, 2, 2], 0, true, None)));
    check_layer("LearnedPrior after 5 split entries", &[2, 17], |vs| BaseFlow(LearnedPrior::new(vs.root() / "prior", [3, 2, 2], 5, true, None)));
}

#[test]
fn class_conditional_prior() {
    tch::manual_seed(3);
    let mut vs = VarStore::new(Device::Cpu);
    let p = BaseFlow(LearnedPrior::new(vs.root() / "prior", [3, 2, 2], 2, true, Some(4)));
    perturb(&vs, 0.3);
    vs.double();
    let x = Tensor::randn([3, 14], (Kind::Double, Device::Cpu));
    let y = Tensor::from_slice(&[0i64, 3, 1]).one_hot(4).to_kind(Kind::Double);
    assert_ok("LearnedPrior conditional", &p, &x, &Ctx::eval().with_cond(Some(&y)));
    let err = p.forward(&x, &Ctx::eval()).err().expect("labels are required").to_string();
    assert!(err.contains("class-conditional"), "{err}");
}

#[test]
fn sequential_composes() {
    check_layer("Sequential", &[2, 4, 2, 2], |vs| {
        let mut s = Sequential::new();
        s.push(ActNorm::new(vs.root() / "a", 4, 4, ActNormParam::Log));
        s.push(InvConv1x1Lu::new(vs.root() / "b", 4));
        s.push(Coupling::with_conv_net(vs.root() / "c", Box::new(ChannelHalves::new(false)), Box::new(Affine::glow()), 4, 8, 0).unwrap());
        s
    });
}
