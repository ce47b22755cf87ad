//! The continuous flow layer: closed forms on a linear field, the log-det against a brute-force
//! Jacobian, invertibility, Hutchinson's estimator is unbiased, the regularisers and counters
//! reach the sink, gradients reach the end time, the context matters, and flow matching trains.
use flowzoo::flows::testing::{brute_force_logdet, perturb};
use flowzoo::flows::cnf::flow_matching_loss;
use flowzoo::flows::*;
use flowzoo::flows::ode::{Method, SolverOptions};
use tch::{nn::VarStore, Device, Kind, Tensor};

const F64: (Kind, Device) = (Kind::Double, Device::Cpu);

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

fn options(solver: SolverOptions) -> CnfOptions {
    CnfOptions { train_solver: solver.clone(), eval_solver: solver, ..CnfOptions::default() }
}

/// A CNF whose field is exactly `f(z) = A z` at every time: one concat-squash layer with zero
/// time weights, the gate's constant `σ(b_g)` divided out of the weight, and zero biases.
fn linear_cnf(vs: &mut VarStore, a: &Tensor, time_length: f64, opts: CnfOptions) -> Cnf {
    let d = a.size()[0];
    let cnf = Cnf::new(vs.root() / "cnf", d, 0, &[], OdeActivation::Tanh, time_length, true, opts).unwrap();
    vs.double();
    let _g = tch::no_grad_guard();
    let l = &cnf.net.concat_squash().unwrap()[0];
    let gate_b = 0.3;
    let _ = l.gate_weight.shallow_clone().zero_();
    let _ = l.gate_bias.shallow_clone().fill_(gate_b);
    let _ = l.hyper_bias.shallow_clone().zero_();
    let _ = l.bias.shallow_clone().zero_();
    let _ = l.weight.shallow_clone().copy_(&(a / (1.0 / (1.0 + (-gate_b as f64).exp()))));
    cnf
}

fn random_matrix(d: i64) -> Tensor {
    Tensor::randn([d, d], F64) * 0.5
}

#[test]
fn a_linear_field_has_closed_form_flow_and_log_det() {
    tch::manual_seed(0);
    let mut vs = VarStore::new(Device::Cpu);
    let a = random_matrix(3);
    let cnf_t = 0.8;
    let cnf = linear_cnf(&mut vs, &a, cnf_t, options(SolverOptions::dopri5(1e-9, 1e-9)));
    // The end time is stored as sqrt(T) in float32 before the store turns double: compare with the T it holds.
    let t_end = cnf.end_time().unwrap().double_value(&[]);
    assert!((t_end - 0.8).abs() < 1e-6);
    let x = Tensor::randn([5, 3], F64);
    let _g = tch::no_grad_guard();
    let (z, ld) = cnf.forward(&x, &Ctx::eval()).unwrap();
    let want = x.matmul(&(&a * t_end).linalg_matrix_exp().tr());
    assert!(max_abs(&(&z - &want)) < 1e-7, "z(T) differs from exp(TA) z(0) by {}", max_abs(&(&z - &want)));
    let tr = a.trace().double_value(&[]) * t_end;
    assert!(max_abs(&(&ld - tr)) < 1e-7, "log-det {ld:?} differs from T tr(A) = {tr}");
    // Inverse: back to x, with the negated log-det.
    let (x2, ld2) = cnf.inverse(&z, &Ctx::eval()).unwrap();
    assert!(max_abs(&(&x2 - &x)) < 1e-7 && max_abs(&(&ld2 + tr)) < 1e-7);
    // Fixed-step RK4 at 50 steps is accurate to ~1e-8 here too.
    let rk4 = linear_cnf(&mut vs, &a, cnf_t, options(SolverOptions::fixed(Method::Rk4, 50)));
    let (z4, ld4) = rk4.forward(&x, &Ctx::eval()).unwrap();
    assert!(max_abs(&(&z4 - &want)) < 1e-7 && max_abs(&(&ld4 - tr)) < 1e-7);
}

/// A small CNF with every parameter moved off its initial value, in float64.
fn random_cnf(vs: &mut VarStore, d: i64, context: i64, opts: CnfOptions) -> Cnf {
    random_cnf_of(vs, LayerType::ConcatSquash, d, context, opts)
}

fn random_cnf_of(vs: &mut VarStore, kind: LayerType, d: i64, context: i64, opts: CnfOptions) -> Cnf {
    let net = OdeNet::with_layers(vs.root() / "cnf" / "net", kind, 2, d, context, &[16, 16], OdeActivation::Softplus).unwrap();
    let cnf = Cnf::with_net(vs.root() / "cnf", net, 0.7, true, opts).unwrap();
    perturb(vs, 0.2);
    vs.double();
    cnf
}

#[test]
fn log_det_matches_the_brute_force_jacobian_and_inverse_inverts() {
    tch::manual_seed(1);
    let cases = [
        (LayerType::ConcatSquash, OdeActivation::Softplus),
        (LayerType::ConcatSquash, OdeActivation::Tanh),
        (LayerType::ConcatSquash, OdeActivation::Elu),
        (LayerType::Mlp, OdeActivation::Tanh),
    ];
    for (kind, act) in cases {
        let mut vs = VarStore::new(Device::Cpu);
        let mut cnf = random_cnf_of(&mut vs, kind, 3, 0, options(SolverOptions::dopri5(1e-9, 1e-9)));
        cnf.net.activation = act;
        let x = Tensor::randn([4, 3], F64);
        let ctx = Ctx::eval();
        let (z, ld) = cnf.forward(&x, &ctx).unwrap();
        let brute = brute_force_logdet(&cnf, &x, &ctx).unwrap();
        assert!(max_abs(&(&ld - &brute)) < 1e-6, "{kind:?} {act:?}: log-det {ld:?} vs brute force {brute:?}");
        assert!(max_abs(&(&z - &x)) > 1e-2, "{act:?}: the flow must move the points");
        let (x2, ld2) = cnf.inverse(&z, &ctx).unwrap();
        assert!(max_abs(&(&x2 - &x)) < 1e-6, "{act:?}: inverse error {}", max_abs(&(&x2 - &x)));
        assert!(max_abs(&(&ld2 + &ld)) < 1e-6);
    }
}

#[test]
fn exact_trace_in_chunks_equals_the_trace_in_one_piece() {
    tch::manual_seed(2);
    let mut vs = VarStore::new(Device::Cpu);
    let cnf = random_cnf(&mut vs, 5, 0, options(SolverOptions::fixed(Method::Rk4, 4)));
    // 5000 rows: 16384 / 5000 = 3 copies per chunk, so chunks of 3 + 2 basis vectors.
    let x = Tensor::randn([5000, 5], F64);
    let _g = tch::no_grad_guard();
    let (_, big) = cnf.forward(&x, &Ctx::eval()).unwrap();
    let (_, small) = cnf.forward(&x.narrow(0, 0, 4), &Ctx::eval()).unwrap();
    assert!(max_abs(&(&big.narrow(0, 0, 4) - &small)) < 1e-10);
}

#[test]
fn hutchinson_is_unbiased_and_only_used_where_allowed() {
    tch::manual_seed(3);
    for noise in [Noise::Rademacher, Noise::Gaussian] {
        let mut vs = VarStore::new(Device::Cpu);
        // Fixed steps, so every draw integrates along the same grid: the estimate is then exactly
        // unbiased for the discretised log-det.
        let opts = CnfOptions { trace: TraceChoice::Hutchinson, noise, ..options(SolverOptions::fixed(Method::Rk4, 8)) };
        let cnf = random_cnf(&mut vs, 4, 0, opts);
        let x = Tensor::randn([1, 4], F64).repeat([4000, 1]);
        let _g = tch::no_grad_guard();
        let (_, exact) = cnf.forward(&x.narrow(0, 0, 1), &Ctx::eval()).unwrap();
        let stochastic = Ctx { stochastic_logdet: true, ..Ctx::eval() };
        let (_, est) = cnf.forward(&x, &stochastic).unwrap();
        let (mean, sd) = (est.mean(Kind::Double).double_value(&[]), est.std(true).double_value(&[]));
        let se = sd / (4000f64).sqrt();
        let exact = exact.double_value(&[0]);
        assert!(sd > 1e-3, "{noise:?}: the estimate does not vary (sd {sd}): is it the exact trace?");
        assert!((mean - exact).abs() < 4.0 * se, "{noise:?}: mean {mean} vs exact {exact} (standard error {se})");
        // Without the flag (evaluation) the log-det is exact.
        let (_, ld) = cnf.forward(&x.narrow(0, 0, 3), &Ctx::eval()).unwrap();
        assert!(max_abs(&(&ld - exact)) < 1e-12);
    }
}

#[test]
fn regularisers_and_counters_reach_the_sink() {
    tch::manual_seed(4);
    let mut vs = VarStore::new(Device::Cpu);
    let a = random_matrix(2);
    let opts = CnfOptions { kinetic_weight: 0.5, jacobian_weight: 2.0, ..options(SolverOptions::dopri5(1e-9, 1e-9)) };
    let cnf = linear_cnf(&mut vs, &a, 0.6, opts);
    // The stored sqrt(T) went through float32: take T as the layer has it.
    let t_end = cnf.end_time().unwrap().double_value(&[]);
    let x = Tensor::randn([6, 2], F64);
    let sink = Sink::new();
    let ctx = Ctx::train().with_sink(&sink);
    let _ = cnf.forward(&x, &ctx).unwrap();
    let penalties: std::collections::BTreeMap<String, Tensor> = sink.penalties().into_iter().collect();
    // ∫₀¹ ‖T A z(s)‖² ds with z(s) = exp(sTA) x, by Simpson's rule on 200 panels.
    let n = 200;
    let mut ke = Tensor::zeros([6], F64);
    for i in 0..=n {
        let s = i as f64 / n as f64;
        let w = if i == 0 || i == n { 1.0 } else if i % 2 == 1 { 4.0 } else { 2.0 };
        let zs = x.matmul(&(&a * (s * t_end)).linalg_matrix_exp().tr());
        ke += zs.matmul(&(&a * t_end).tr()).square().sum_dim_intlist(1, false, Kind::Double) * (w / (3.0 * n as f64));
    }
    let got = &penalties["kinetic_energy"];
    assert_eq!(got.size(), [6]);
    assert!(max_abs(&(got - &ke * 0.5)) < 1e-7, "kinetic energy {got:?} vs {:?}", &ke * 0.5);
    // With the exact trace the Jacobian norm is exact: ∫ ‖T A‖²_F ds = T² ‖A‖²_F.
    let frob = a.square().sum(Kind::Double).double_value(&[]) * t_end * t_end;
    assert!(max_abs(&(&penalties["jacobian_norm"] - frob * 2.0)) < 1e-7, "Jacobian norm {:?} vs {}", penalties["jacobian_norm"], frob * 2.0);
    let c = sink.counters();
    assert!(c["nfe_forward"] >= 8.0 && c["nfe_backward"] >= 6.0 && c["nfe_backward"] <= c["nfe_forward"], "{c:?}");
    // Hutchinson's Jacobian norm is unbiased too (E εεᵀ = I).
    let h = CnfOptions { trace: TraceChoice::Hutchinson, ..cnf.options.clone() };
    let cnf_h = linear_cnf(&mut vs, &a, 0.6, h);
    let sink = Sink::new();
    let _ = cnf_h.forward(&Tensor::randn([4000, 2], F64), &Ctx { stochastic_logdet: true, ..Ctx::train() }.with_sink(&sink)).unwrap();
    let jn = sink.penalties().into_iter().find(|(n, _)| n == "jacobian_norm").unwrap().1;
    let (m, se) = (jn.mean(Kind::Double).double_value(&[]), jn.std(true).double_value(&[]) / (4000f64).sqrt());
    assert!((m - frob * 2.0).abs() < 4.0 * se, "Hutchinson Jacobian norm {m} vs {} (se {se})", frob * 2.0);
    // In evaluation nothing is integrated for the penalties, and no graph means no backward NFE.
    let sink = Sink::new();
    let _g = tch::no_grad_guard();
    let _ = cnf.forward(&x, &Ctx::eval().with_sink(&sink)).unwrap();
    assert!(sink.penalties().is_empty());
    assert!(sink.counters().contains_key("nfe_forward") && !sink.counters().contains_key("nfe_backward"));
}

#[test]
fn gradients_reach_the_end_time_and_the_net_through_the_solver() {
    tch::manual_seed(5);
    let mut vs = VarStore::new(Device::Cpu);
    let a = random_matrix(3);
    let cnf = linear_cnf(&mut vs, &a, 0.9, options(SolverOptions::dopri5(1e-9, 1e-9)));
    let x = Tensor::randn([4, 3], F64);
    // log-det = T tr(A) = sqrt_T² tr(A): d/d sqrt_T = 2 sqrt_T tr(A) per sample.
    let (_, ld) = cnf.forward(&x, &Ctx::train()).unwrap();
    let g = Tensor::run_backward(&[ld.sum(Kind::Double)], &[&cnf.sqrt_end_time, &cnf.net.concat_squash().unwrap()[0].weight], false, false);
    let sqrt_t = cnf.sqrt_end_time.double_value(&[]);
    let want = 4.0 * 2.0 * sqrt_t * a.trace().double_value(&[]);
    assert!((g[0].double_value(&[]) - want).abs() < 1e-6, "d log-det / d sqrt_T = {:?}, want {want}", g[0]);
    // d tr(W·σ(b_g)) T / dW = σ(b_g) T I per sample.
    let want_w = Tensor::eye(3, F64) * (4.0 * sqrt_t * sqrt_t / (1.0 + (-0.3f64).exp()));
    assert!(max_abs(&(&g[1] - want_w)) < 1e-6, "d log-det / d W = {:?}", g[1]);
}

#[test]
fn a_conditional_cnf_depends_on_its_context() {
    tch::manual_seed(6);
    let mut vs = VarStore::new(Device::Cpu);
    let cnf = random_cnf(&mut vs, 2, 3, options(SolverOptions::dopri5(1e-8, 1e-8)));
    let x = Tensor::randn([4, 2], F64);
    let (ca, cb) = (Tensor::randn([4, 3], F64), Tensor::randn([4, 3], F64));
    let (za, lda) = cnf.forward(&x, &Ctx::eval().with_cond(Some(&ca))).unwrap();
    let (zb, _) = cnf.forward(&x, &Ctx::eval().with_cond(Some(&cb))).unwrap();
    assert!(max_abs(&(&za - &zb)) > 1e-3);
    let brute = brute_force_logdet(&cnf, &x, &Ctx::eval().with_cond(Some(&ca))).unwrap();
    assert!(max_abs(&(&lda - brute)) < 1e-6);
    let e = cnf.forward(&x, &Ctx::eval()).unwrap_err().to_string();
    assert!(e.contains("pass a context of shape [B, 3]"), "{e}");
    let e = cnf.forward(&Tensor::randn([4, 5], F64), &Ctx::eval()).unwrap_err().to_string();
    assert!(e.contains("expected input with 2 channels"), "{e}");
}

#[test]
fn a_step_limit_inside_the_layer_says_which_layer_and_which_limit() {
    tch::manual_seed(7);
    let mut vs = VarStore::new(Device::Cpu);
    let solver = SolverOptions { max_steps: 2, ..SolverOptions::dopri5(1e-12, 1e-12) };
    let cnf = random_cnf(&mut vs, 2, 0, options(solver));
    let e = cnf.forward(&Tensor::randn([3, 2], F64), &Ctx::eval()).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("Cnf (2 features): integrating s from 0 to 1 with dopri5") && msg.contains("max_steps = 2"), "{msg}");
}

#[test]
fn flow_matching_lowers_its_loss_and_gives_a_finite_exact_likelihood() {
    for kind in [LayerType::ConcatSquash, LayerType::Mlp] {
        flow_matching_trains(kind);
    }
}

fn flow_matching_trains(kind: LayerType) {
    tch::manual_seed(8);
    let vs = VarStore::new(Device::Cpu);
    let net = OdeNet::with_layers(vs.root() / "cnf" / "net", kind, 3, 2, 0, &[32, 32], OdeActivation::Tanh).unwrap();
    let cnf = Cnf::with_net(vs.root() / "cnf", net, 1.0, false, options(SolverOptions::dopri5(1e-4, 1e-4))).unwrap();
    // Two well-separated Gaussian blobs.
    let data = |n: i64| {
        let centre = (Tensor::randint(2, [n, 1], (Kind::Float, Device::Cpu)) * 2.0 - 1.0) * Tensor::from_slice(&[2.0f32, 0.0]);
        centre + Tensor::randn([n, 2], (Kind::Float, Device::Cpu)) * 0.3
    };
    let test = data(512);
    let log_lik = |cnf: &Cnf| {
        let _g = tch::no_grad_guard();
        let (z, ld) = cnf.forward(&test, &Ctx::eval()).unwrap();
        (standard_normal_log_prob(&z).unwrap() + ld).mean(Kind::Double).double_value(&[])
    };
    let before = log_lik(&cnf);
    let mut opt = tch::nn::OptimizerConfig::build(tch::nn::Adam::default(), &vs, 3e-3).unwrap();
    let mut losses = vec![];
    let sink = Sink::new();
    for _ in 0..300 {
        let loss = flow_matching_loss(&cnf, &data(256), &Ctx::train().with_sink(&sink)).unwrap();
        opt.backward_step(&loss);
        losses.push(loss.double_value(&[]));
    }
    let first: f64 = losses[..30].iter().sum::<f64>() / 30.0;
    let last: f64 = losses[270..].iter().sum::<f64>() / 30.0;
    assert!(last < 0.8 * first, "{kind:?}: flow-matching loss went from {first} to {last}");
    assert_eq!(sink.counters()["nfe_forward"], 300.0, "one network call per step");
    let after = log_lik(&cnf);
    assert!(after.is_finite() && after > before + 0.3, "{kind:?}: test log-likelihood {before} -> {after}");
}

/// Flow matching's per-row field (a time per row) equals the field at each row's time, for the
/// dense concat-squash, the MLP and the conv field, with a context.
#[test]
fn the_per_row_field_is_the_field_at_each_rows_time() {
    tch::manual_seed(12);
    let nets: Vec<(&str, Box<dyn Fn(&VarStore) -> OdeNet>)> = vec![
        ("concat-squash", Box::new(|vs: &VarStore| OdeNet::with_layers(vs.root() / "n", LayerType::ConcatSquash, 0, 8, 2, &[6, 6], OdeActivation::Tanh).unwrap())),
        ("mlp", Box::new(|vs: &VarStore| OdeNet::with_layers(vs.root() / "n", LayerType::Mlp, 3, 8, 2, &[6], OdeActivation::Softplus).unwrap())),
        ("conv", Box::new(|vs: &VarStore| OdeNet::conv(vs.root() / "n", [2, 2, 2], 2, &[3, 3], OdeActivation::Elu).unwrap())),
    ];
    for (what, build) in nets {
        let mut vs = VarStore::new(Device::Cpu);
        let net = build(&vs);
        perturb(&vs, 0.3);
        vs.double();
        let (z, cond) = (Tensor::randn([4, 8], F64), Tensor::randn([4, 2], F64));
        let t = Tensor::rand([4, 1], F64);
        let per_row = net.forward_per_row(&t, &z, Some(&cond)).unwrap();
        for r in 0..4 {
            let maps = net.at_time(&t.get(r).squeeze()).unwrap();
            let one = net.apply(&maps, &z.narrow(0, r, 1), Some(&cond.narrow(0, r, 1))).unwrap();
            let d = max_abs(&(per_row.narrow(0, r, 1) - one));
            assert!(d < 1e-12, "{what}: row {r} differs by {d:e}");
        }
        assert!(max_abs(&(per_row.narrow(0, 0, 1) - per_row.narrow(0, 1, 1))) > 1e-6, "{what}: a constant field");
    }
}
