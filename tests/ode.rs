//! The ODE solvers on problems with closed-form solutions: Dormand–Prince meets its tolerance
//! (forward and backward in time), RK4 and Euler converge at their orders, gradients flow through
//! the solve, and every limit fails with an error naming it and the time.
use flowzoo::flows::ode::{solve, ErrorNorm, Method, OdeError, SolverOptions};
use tch::{Device, Kind, Tensor};

const F64: (Kind, Device) = (Kind::Double, Device::Cpu);

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

/// `y' = cos(t) · y`, so `y(t) = y(0) · exp(sin t)`, on a `[3, 2]` state.
fn cos_field(t: f64, y: &[Tensor]) -> anyhow::Result<Vec<Tensor>> {
    Ok(vec![&y[0] * t.cos()])
}

fn exact_cos(y0: &Tensor, t0: f64, t1: f64) -> Tensor {
    y0 * (t1.sin() - t0.sin()).exp()
}

fn ode_error(e: &anyhow::Error) -> OdeError {
    e.downcast_ref::<OdeError>().unwrap_or_else(|| panic!("not an OdeError: {e:#}")).clone()
}

#[test]
fn dopri5_meets_its_tolerance_forward_and_backward() {
    let y0 = Tensor::from_slice(&[1.0, -2.0, 0.5, 3.0, -0.1, 1e-3]).reshape([3, 2]).to_kind(Kind::Double);
    let mut last_err = f64::INFINITY;
    for tol in [1e-4, 1e-7, 1e-10] {
        let opts = SolverOptions::dopri5(tol, tol);
        let sol = solve(&mut cos_field, 0.0, 6.0, vec![y0.copy()], &opts, &[]).unwrap();
        let err = max_abs(&(&sol.state[0] - exact_cos(&y0, 0.0, 6.0)));
        // Global error stays within a small multiple of the local tolerance on this smooth
        // problem, and falls as the tolerance does.
        assert!(err < 16.0 * tol, "tol {tol}: error {err}");
        assert!(err < last_err, "tol {tol}: error {err} did not fall below {last_err}");
        last_err = err;
        let s = sol.stats;
        assert_eq!(s.nfe, 2 + 6 * (s.accepted + s.rejected), "{s:?}");
        assert_eq!(s.nfe_in_graph, 6 * s.accepted, "{s:?}");
        // Backwards in time from the end recovers the start.
        let back = solve(&mut cos_field, 6.0, 0.0, vec![sol.state[0].copy()], &opts, &[]).unwrap();
        let err_back = max_abs(&(&back.state[0] - &y0));
        assert!(err_back < 32.0 * tol, "tol {tol}: backward error {err_back}");
    }
    // The max norm is stricter than the RMS norm: never fewer steps.
    let rms = solve(&mut cos_field, 0.0, 6.0, vec![y0.copy()], &SolverOptions::dopri5(1e-6, 1e-6), &[]).unwrap();
    let opts = SolverOptions { norm: ErrorNorm::Max, ..SolverOptions::dopri5(1e-6, 1e-6) };
    let max = solve(&mut cos_field, 0.0, 6.0, vec![y0.copy()], &opts, &[]).unwrap();
    assert!(max.stats.accepted >= rms.stats.accepted, "max {:?} vs rms {:?}", max.stats, rms.stats);
}

#[test]
fn fixed_step_methods_converge_at_their_orders() {
    let y0 = Tensor::from_slice(&[1.0, 2.0]).to_kind(Kind::Double);
    for (method, order, evals) in [(Method::Rk4, 4.0, 4), (Method::Euler, 1.0, 1)] {
        let err = |n: i64| {
            let sol = solve(&mut cos_field, 0.0, 2.0, vec![y0.copy()], &SolverOptions::fixed(method, n), &[]).unwrap();
            assert_eq!(sol.stats.nfe, evals * n as usize);
            max_abs(&(&sol.state[0] - exact_cos(&y0, 0.0, 2.0)))
        };
        let (e1, e2) = (err(40), err(80));
        let observed = (e1 / e2).log2();
        assert!((observed - order).abs() < 0.25, "{method:?}: observed order {observed} (errors {e1}, {e2})");
    }
}

#[test]
fn gradients_flow_through_the_solve() {
    // y' = λ y: y(T) = y0 exp(λT), so dy(T)/dy0 = exp(λT) and dy(T)/dλ = T y0 exp(λT).
    let lambda = Tensor::from_slice(&[0.7, -1.3]).to_kind(Kind::Double).set_requires_grad(true);
    let y0 = Tensor::from_slice(&[1.5, -0.5]).to_kind(Kind::Double).set_requires_grad(true);
    let t1 = 1.7;
    for opts in [SolverOptions::dopri5(1e-9, 1e-9), SolverOptions::fixed(Method::Rk4, 200)] {
        let mut f = |_t: f64, y: &[Tensor]| Ok(vec![&y[0] * &lambda]);
        let sol = solve(&mut f, 0.0, t1, vec![y0.shallow_clone()], &opts, &[]).unwrap();
        let g = Tensor::run_backward(&[sol.state[0].sum(Kind::Double)], &[&y0, &lambda], false, false);
        let growth = (&lambda.detach() * t1).exp();
        assert!(max_abs(&(&g[0] - &growth)) < 1e-6, "{:?}: d/dy0 {:?}", opts.method, g[0]);
        assert!(max_abs(&(&g[1] - &y0.detach() * t1 * &growth)) < 1e-6, "{:?}: d/dλ", opts.method);
    }
}

#[test]
fn uncontrolled_states_are_integrated_but_do_not_choose_the_steps() {
    // A second state y2' = 1000 cos(20 t) would force many small steps if it were controlled.
    let y0 = Tensor::from_slice(&[1.0]).to_kind(Kind::Double);
    let mut f = |t: f64, y: &[Tensor]| Ok(vec![&y[0] * t.cos(), y[1].ones_like() * (1000.0 * (20.0 * t).cos())]);
    let opts = SolverOptions::dopri5(1e-6, 1e-6);
    let both = solve(&mut f, 0.0, 3.0, vec![y0.copy(), y0.zeros_like()], &opts, &[true, true]).unwrap();
    let first = solve(&mut f, 0.0, 3.0, vec![y0.copy(), y0.zeros_like()], &opts, &[true, false]).unwrap();
    assert!(first.stats.accepted * 3 < both.stats.accepted, "{:?} vs {:?}", first.stats, both.stats);
    let want = 1000.0 * (60.0f64).sin() / 20.0;
    assert!((both.state[1].double_value(&[0]) - want).abs() < 1e-3 * want.abs().max(1.0));
    assert!(max_abs(&(&first.state[0] - exact_cos(&y0, 0.0, 3.0))) < 1e-4);
}

#[test]
fn the_step_limit_is_an_error_naming_it_and_the_time() {
    let y0 = Tensor::ones([2], F64);
    let opts = SolverOptions { max_steps: 5, ..SolverOptions::dopri5(1e-10, 1e-10) };
    let e = solve(&mut cos_field, 0.0, 50.0, vec![y0], &opts, &[]).err().expect("5 steps cannot cover 50 time units at 1e-10");
    match ode_error(&e) {
        OdeError::MaxSteps { max_steps, t, .. } => {
            assert_eq!(max_steps, 5);
            assert!(t > 0.0 && t < 50.0, "t = {t}");
        }
        other => panic!("expected MaxSteps, got {other:?}"),
    }
    let msg = e.to_string();
    assert!(msg.contains("max_steps = 5") && msg.contains("at t = "), "{msg}");
}

#[test]
fn a_collapsing_step_is_an_error_naming_min_step_and_the_time() {
    // y' = y², y(0) = 1: y = 1/(1 - t) blows up at t = 1, and the steps shrink towards it.
    let mut f = |_t: f64, y: &[Tensor]| Ok(vec![y[0].square()]);
    let opts = SolverOptions { min_step: 1e-6, max_steps: 100_000, ..SolverOptions::dopri5(1e-6, 1e-6) };
    let e = solve(&mut f, 0.0, 2.0, vec![Tensor::ones([1], F64)], &opts, &[]).err().expect("no solution past t = 1");
    match ode_error(&e) {
        OdeError::MinStep { t, min_step, dt, .. } => {
            assert!(t > 0.99 && t < 1.0, "t = {t}");
            assert!(dt < min_step && min_step == 1e-6);
        }
        other => panic!("expected MinStep, got {other:?}"),
    }
    assert!(e.to_string().contains("fell below min_step = 1.0e-6 at t = 0.99"), "{e}");
}

#[test]
fn nan_and_inf_are_errors_naming_the_time() {
    // NaN from the start.
    let mut nan_now = |_t: f64, y: &[Tensor]| Ok(vec![&y[0] * f64::NAN]);
    let e = solve(&mut nan_now, 0.0, 1.0, vec![Tensor::ones([2], F64)], &SolverOptions::default(), &[]).unwrap_err();
    assert!(matches!(ode_error(&e), OdeError::NonFinite { t, .. } if t == 0.0), "{e}");
    // Finite before t = 0.5, NaN after: adaptive steps shrink up to it, then the error says where.
    let mut nan_later = |t: f64, y: &[Tensor]| Ok(vec![&y[0] * if t > 0.5 { f64::NAN } else { 1.0 }]);
    let e = solve(&mut nan_later, 0.0, 1.0, vec![Tensor::ones([2], F64)], &SolverOptions::default(), &[]).unwrap_err();
    match ode_error(&e) {
        OdeError::NonFinite { t, .. } => assert!((t - 0.5).abs() < 1e-3, "t = {t}"),
        other => panic!("expected NonFinite, got {other:?}"),
    }
    assert!(e.to_string().contains("non-finite (NaN or Inf) at t = 0.5"), "{e}");
    // Fixed steps: Inf after t = 0.5 is found at the end of the solve and named.
    let mut inf_later = |t: f64, y: &[Tensor]| Ok(vec![&y[0] * if t > 0.5 { f64::INFINITY } else { 1.0 }]);
    let e = solve(&mut inf_later, 0.0, 1.0, vec![Tensor::ones([2], F64)], &SolverOptions::fixed(Method::Rk4, 10), &[]).unwrap_err();
    match ode_error(&e) {
        OdeError::NonFinite { t, .. } => assert!((t - 0.6).abs() < 1e-9, "t = {t}"),
        other => panic!("expected NonFinite, got {other:?}"),
    }
}

#[test]
fn bad_settings_and_bad_dynamics_are_errors() {
    let y0 = vec![Tensor::ones([2], F64)];
    let bad = SolverOptions { rtol: 0.0, ..SolverOptions::default() };
    assert!(solve(&mut cos_field, 0.0, 1.0, y0.iter().map(|t| t.copy()).collect(), &bad, &[]).unwrap_err().to_string().contains("rtol = 0"));
    let bad = SolverOptions::fixed(Method::Euler, 0);
    assert!(solve(&mut cos_field, 0.0, 1.0, y0.iter().map(|t| t.copy()).collect(), &bad, &[]).unwrap_err().to_string().contains("steps = 0"));
    let mut wrong_shape = |_t: f64, _y: &[Tensor]| Ok(vec![Tensor::ones([3], F64)]);
    let e = solve(&mut wrong_shape, 0.0, 1.0, y0.iter().map(|t| t.copy()).collect(), &SolverOptions::default(), &[]).unwrap_err().to_string();
    assert!(e.contains("returned shape [3] for state 0 of shape [2]"), "{e}");
    // A zero-length interval costs nothing.
    let sol = solve(&mut cos_field, 1.0, 1.0, y0, &SolverOptions::default(), &[]).unwrap();
    assert_eq!(sol.stats.nfe, 0);
}
