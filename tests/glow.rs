//! The Glow model as a whole: exact inverse and log-det, priors, sampling.
use flowzoo::config::{Config, PermutationChoice};
use flowzoo::flows::testing::{check_flow, perturb};
use flowzoo::flows::Ctx;
use flowzoo::models;
use tch::{nn::VarStore, Device, Kind, Tensor};

/// libtorch's generator is global to the process: tests that seed it take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn tiny(levels: i64, perm: PermutationChoice, conditional: bool) -> Config {
    let mut c = Config::default();
    c.data.image_size = 4;
    c.data.channels = 1;
    c.model.levels = levels;
    c.model.steps = 2;
    c.model.width = 8;
    c.model.permutation = perm;
    c.model.conditional = conditional;
    c
}

#[test]
fn glow_inverts_and_logdet_matches_brute_force() {
    let _serial = serial();
    for (levels, perm) in [(2, PermutationChoice::InvconvLu), (1, PermutationChoice::Invconv), (2, PermutationChoice::Shuffle), (2, PermutationChoice::Reverse)] {
        tch::manual_seed(1);
        let mut vs = VarStore::new(Device::Cpu);
        let m = models::build(&tiny(levels, perm, false), vs.root(), 1).unwrap();
        perturb(&vs, 0.2);
        vs.double();
        let x = Tensor::randn([2, 1, 4, 4], (Kind::Double, Device::Cpu)) * 0.3;
        let c = check_flow(m.flow(), &x, &Ctx::eval()).unwrap();
        assert!(c.inverse_err < 1e-10, "L={levels} {perm:?}: inverse error {}", c.inverse_err);
        assert!(c.logdet_err < 1e-6, "L={levels} {perm:?}: log-det error {}", c.logdet_err);
    }
}

#[test]
fn conditional_glow_and_sampling_is_seeded() {
    let _serial = serial();
    tch::manual_seed(2);
    let mut vs = VarStore::new(Device::Cpu);
    let m = models::build(&tiny(2, PermutationChoice::InvconvLu, true), vs.root(), 3).unwrap();
    perturb(&vs, 0.2);
    vs.double();
    let y = Tensor::from_slice(&[0i64, 2]).one_hot(3).to_kind(Kind::Double);
    let ctx = Ctx::eval().with_cond(Some(&y));
    let x = Tensor::randn([2, 1, 4, 4], (Kind::Double, Device::Cpu)) * 0.3;
    let c = check_flow(m.flow(), &x, &ctx).unwrap();
    assert!(c.inverse_err < 1e-10 && c.logdet_err < 1e-6);
    let like = (Kind::Double, Device::Cpu);
    tch::manual_seed(5);
    let a = m.sample(2, 0.7, &ctx, like).unwrap();
    tch::manual_seed(5);
    let b = m.sample(2, 0.7, &ctx, like).unwrap();
    assert_eq!(a.size(), vec![2, 1, 4, 4]);
    assert_eq!(a.f_sub(&b).unwrap().abs().max().double_value(&[]), 0.0);
    // The labels change the density.
    let y2 = Tensor::from_slice(&[1i64, 1]).one_hot(3).to_kind(Kind::Double);
    let lp1 = m.log_prob(&x, &ctx).unwrap();
    let lp2 = m.log_prob(&x, &Ctx::eval().with_cond(Some(&y2))).unwrap();
    assert!(lp1.f_sub(&lp2).unwrap().abs().max().double_value(&[]) > 1e-6);
}

#[test]
fn temperature_scales_every_prior() {
    let _serial = serial();
    // A sample at temperature T is f⁻¹(T·ε): pushed back through the flow it must give exactly
    // T·ε, in every level's factored-out half as in the top latent. A temperature that reached
    // only the top prior (or none) leaves the split levels' parts at ε and fails here.
    tch::manual_seed(4);
    let mut vs = VarStore::new(Device::Cpu);
    let m = models::build(&tiny(2, PermutationChoice::InvconvLu, false), vs.root(), 1).unwrap();
    // Small weights: the inverse direction divides by the coupling scales, and a strongly
    // perturbed model maps some noise to Inf (then nothing is compared).
    perturb(&vs, 0.05);
    vs.double();
    let like = (Kind::Double, Device::Cpu);
    let d = m.dim();
    // The split level's factored-out half comes first in the flat latent: 8 of its 16 values.
    let split_part = 8;
    for t in [0.0, 0.5, 1.0] {
        tch::manual_seed(7);
        let eps = Tensor::randn([3, d], like);
        tch::manual_seed(7);
        let x = m.sample(3, t, &Ctx::eval(), like).unwrap();
        assert!(bool::try_from(x.isfinite().all()).unwrap(), "T={t}: non-finite sample");
        let (z, _) = m.to_noise(&x, &Ctx::eval()).unwrap();
        let err = z.f_sub(&(&eps * t)).unwrap().abs().max().double_value(&[]);
        assert!(err < 1e-9, "T={t}: latent differs from T·eps by {err}");
        let split_norm = z.narrow(1, 0, split_part).abs().max().double_value(&[]);
        if t > 0.0 {
            assert!(split_norm > 0.1 * t, "T={t}: the split level's latent is {split_norm}");
        }
    }
    // T = 0: every latent at its prior's mean, whatever the noise; a real image, not the same
    // as a T > 0 sample.
    tch::manual_seed(5);
    let a = m.sample(3, 0.0, &Ctx::eval(), like).unwrap();
    tch::manual_seed(99);
    let b = m.sample(3, 0.0, &Ctx::eval(), like).unwrap();
    assert!(a.f_sub(&b).unwrap().abs().max().double_value(&[]) < 1e-12);
    let mode = m.from_noise(&Tensor::zeros([3, d], like), &Ctx::eval()).unwrap().0;
    assert!(a.f_sub(&mode).unwrap().abs().max().double_value(&[]) < 1e-12);
    let warm = m.sample(3, 0.7, &Ctx::eval(), like).unwrap();
    assert!(a.f_sub(&warm).unwrap().abs().max().double_value(&[]) > 1e-3);
}

#[test]
fn log_prob_matches_change_of_variables() {
    let _serial = serial();
    // log p(x) = log p_base(f(x)) + log|det f'(x)|, and the input shape is checked.
    let vs = VarStore::new(Device::Cpu);
    let m = models::build(&tiny(2, PermutationChoice::InvconvLu, false), vs.root(), 1).unwrap();
    let x = Tensor::randn([3, 1, 4, 4], (Kind::Float, Device::Cpu));
    let (z, ld) = m.flow().forward(&x, &Ctx::eval()).unwrap();
    let manual = m.base().log_prob(&z, &Ctx::eval()).unwrap() + ld;
    let lp = m.log_prob(&x, &Ctx::eval()).unwrap();
    assert!(lp.f_sub(&manual).unwrap().abs().max().double_value(&[]) < 1e-5);
    let err = m.log_prob(&Tensor::zeros([3, 3, 4, 4], (Kind::Float, Device::Cpu)), &Ctx::eval()).unwrap_err().to_string();
    assert!(err.contains("[B, 1, 4, 4]") && err.contains("[3, 3, 4, 4]"), "{err}");
}

#[test]
fn parameter_names_are_dotted_and_unique() {
    let _serial = serial();
    let vs = VarStore::new(Device::Cpu);
    let _m = models::build(&tiny(2, PermutationChoice::InvconvLu, false), vs.root(), 1).unwrap();
    let names: Vec<String> = vs.variables().into_keys().collect();
    for must in ["levels.0.steps.1.coupling.net.0.conv.weight", "levels.0.steps.0.actnorm.logs", "levels.0.steps.0.invconv.lower", "levels.0.split.conv.weight", "levels.1.steps.1.invconv.p", "prior.learn_top.conv.bias"] {
        assert!(names.iter().any(|n| n == must), "missing {must} in {names:?}");
    }
    assert!(names.iter().all(|n| !n.contains("__")));
}
