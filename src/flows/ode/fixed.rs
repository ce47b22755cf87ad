//! Fixed-step methods: explicit Euler (1 evaluation a step, order 1) and classical Runge–Kutta
//! 4 (4 evaluations a step, order 4), `steps` equal steps over `[t0, t1]`.
//!
//! No host read inside the loop: each step records the sum of every state tensor (NaN and Inf
//! propagate into sums), and one read at the end finds the first step whose state went
//! non-finite, so the error can name its time.
use super::{check_derivative, lincomb, Dynamics, Method, OdeError, SolveStats, Solution, SolverOptions};
use anyhow::Result;
use tch::{Device, Kind, Tensor};

pub(super) fn solve(f: &mut Dynamics, t0: f64, t1: f64, y0: Vec<Tensor>, opts: &SolverOptions) -> Result<Solution> {
    let name = opts.method.name();
    let n = opts.steps;
    let dt = (t1 - t0) / n as f64;
    let mut stats = SolveStats::default();
    let mut y = y0;
    let mut sums = Vec::with_capacity(n as usize);
    for i in 0..n {
        let t = t0 + i as f64 * dt;
        let k1 = f(t, &y)?;
        check_derivative(name, &y, &k1)?;
        y = match opts.method {
            Method::Euler => lincomb(&y, &[(dt, &k1)])?,
            Method::Rk4 => {
                let k2 = f(t + dt / 2.0, &lincomb(&y, &[(dt / 2.0, &k1)])?)?;
                let k3 = f(t + dt / 2.0, &lincomb(&y, &[(dt / 2.0, &k2)])?)?;
                let k4 = f(t + dt, &lincomb(&y, &[(dt, &k3)])?)?;
                check_derivative(name, &y, &k4)?;
                lincomb(&y, &[(dt / 6.0, &k1), (dt / 3.0, &k2), (dt / 3.0, &k3), (dt / 6.0, &k4)])?
            }
            Method::Dopri5 => unreachable!("dispatched to dopri5"),
        };
        let evals = if opts.method == Method::Rk4 { 4 } else { 1 };
        stats.nfe += evals;
        stats.nfe_in_graph += evals;
        stats.accepted += 1;
        let _g = tch::no_grad_guard();
        let mut s = y[0].f_sum(Kind::Double)?;
        for yj in &y[1..] {
            s = s.f_add(&yj.f_sum(Kind::Double)?)?;
        }
        sums.push(s);
    }
    let host = Vec::<f64>::try_from(&Tensor::f_stack(&sums, 0)?.f_to_device(Device::Cpu)?)?;
    if let Some(i) = host.iter().position(|v| !v.is_finite()) {
        return Err(OdeError::NonFinite { method: name, t: t0 + (i + 1) as f64 * dt, what: "state" }.into());
    }
    Ok(Solution { state: y, stats })
}
