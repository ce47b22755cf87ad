//! Dormand–Prince 5(4) with adaptive steps (Dormand & Prince 1980; Hairer, Nørsett & Wanner,
//! "Solving ODEs I", II.4): the 5th-order solution is propagated, the embedded 4th-order one
//! estimates the error, and the last stage is the next step's first (FSAL), so an accepted step
//! costs six evaluations.
//!
//! Step control as in Hairer's DOPRI5 and torchdiffeq: `h ← h · clamp(0.9 · err^(-1/5), 0.2,
//! 10)`, never growing after a rejection; the first step from Hairer's heuristic (II.4, one extra
//! evaluation, done under no-grad so it adds nothing to a training graph). One host read per
//! step attempt: the error norm and, in the same read, whether the dynamics at the current state
//! are finite.
use super::{check_derivative, lincomb, Dynamics, ErrorNorm, OdeError, SolveStats, Solution, SolverOptions};
use anyhow::Result;
use tch::{Device, Kind, Tensor};

const NAME: &str = "dopri5";
/// Nodes of the stages 2..7.
pub(crate) const C: [f64; 6] = [1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0, 1.0];
/// Rows 2..7 of the Butcher tableau; the last row is the 5th-order solution's weights `b`.
pub(crate) const A: [&[f64]; 6] = [
    &[1.0 / 5.0],
    &[3.0 / 40.0, 9.0 / 40.0],
    &[44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0],
    &[19372.0 / 6561.0, -25360.0 / 2187.0, 64448.0 / 6561.0, -212.0 / 729.0],
    &[9017.0 / 3168.0, -355.0 / 33.0, 46732.0 / 5247.0, 49.0 / 176.0, -5103.0 / 18656.0],
    &[35.0 / 384.0, 0.0, 500.0 / 1113.0, 125.0 / 192.0, -2187.0 / 6784.0, 11.0 / 84.0],
];
/// `b - b*`: the 5th-order weights minus the embedded 4th-order ones (stage 7 included).
pub(crate) const E: [f64; 7] = [
    71.0 / 57600.0,
    0.0,
    -71.0 / 16695.0,
    71.0 / 1920.0,
    -17253.0 / 339200.0,
    22.0 / 525.0,
    -1.0 / 40.0,
];
pub(crate) const SAFETY: f64 = 0.9;
pub(crate) const MIN_FACTOR: f64 = 0.2;
pub(crate) const MAX_FACTOR: f64 = 10.0;

pub(super) fn solve(f: &mut Dynamics, t0: f64, t1: f64, y0: Vec<Tensor>, opts: &SolverOptions, controlled: &[bool]) -> Result<Solution> {
    let dir = (t1 - t0).signum();
    let span = (t1 - t0).abs();
    let ctl: Vec<bool> = (0..y0.len()).map(|i| controlled.get(i).copied().unwrap_or(true)).collect();
    anyhow::ensure!(ctl.iter().any(|c| *c), "{NAME}: no state is under error control");
    let mut stats = SolveStats::default();
    let mut k1 = f(t0, &y0)?;
    check_derivative(NAME, &y0, &k1)?;
    stats.nfe += 1;
    let mut h = match opts.first_step {
        Some(h) => h,
        None => {
            stats.nfe += 1;
            initial_step(f, t0, &y0, &k1, dir, opts, &ctl)?
        }
    }
    .min(span);
    let (mut t, mut y) = (t0, y0);
    let mut attempts = 0i64;
    let mut nonfinite_trials = false;
    while dir * (t1 - t) > 0.0 {
        if attempts >= opts.max_steps {
            return Err(OdeError::MaxSteps {
                method: NAME,
                max_steps: opts.max_steps,
                t,
                t0,
                t1,
                accepted: stats.accepted,
                rejected: stats.rejected,
            }
            .into());
        }
        attempts += 1;
        let remaining = (t1 - t).abs();
        // Stretch the step to t1 when only a sliver would be left (as Hairer's code does).
        let last = h * 1.01 >= remaining;
        let dt = dir * if last { remaining } else { h };
        let mut ks: Vec<Vec<Tensor>> = vec![k1];
        let mut y_next = None;
        for (row, c) in A.iter().zip(C) {
            let terms: Vec<(f64, &[Tensor])> = row.iter().zip(&ks).map(|(a, k)| (a * dt, k.as_slice())).collect();
            let yi = lincomb(&y, &terms)?;
            let k = f(t + c * dt, &yi)?;
            check_derivative(NAME, &yi, &k)?;
            ks.push(k);
            y_next = Some(yi);
        }
        stats.nfe += 6;
        let y_next = y_next.expect("six stages");
        let (err, k1_finite) = error_ratio(&y, &y_next, &ks, dt, opts, &ctl)?;
        let accepted = err <= 1.0;
        if !k1_finite {
            return Err(OdeError::NonFinite { method: NAME, t, what: "derivative at the current state" }.into());
        }
        let factor = if !err.is_finite() {
            nonfinite_trials = true;
            MIN_FACTOR
        } else if err == 0.0 {
            MAX_FACTOR
        } else {
            (SAFETY * err.powf(-0.2)).clamp(MIN_FACTOR, MAX_FACTOR)
        };
        let step = dt.abs();
        if accepted {
            stats.accepted += 1;
            stats.nfe_in_graph += 6;
            t = if last { t1 } else { t + dt };
            y = y_next;
            k1 = ks.pop().expect("seven stages");
            nonfinite_trials = false;
            h = step * factor;
        } else {
            stats.rejected += 1;
            k1 = ks.swap_remove(0);
            h = step * factor.min(1.0);
        }
        if dir * (t1 - t) > 0.0 && h < opts.min_step {
            if nonfinite_trials {
                return Err(OdeError::NonFinite { method: NAME, t, what: "state of every trial step down to min_step" }.into());
            }
            return Err(OdeError::MinStep { method: NAME, dt: h, min_step: opts.min_step, t, t0, t1 }.into());
        }
    }
    Ok(Solution { state: y, stats })
}

/// The scaled error norm of the step `y -> y_next` (infinite when anything is NaN/Inf) and
/// whether the first stage (the dynamics at `y`) is finite, in one host read.
fn error_ratio(y: &[Tensor], y_next: &[Tensor], ks: &[Vec<Tensor>], dt: f64, opts: &SolverOptions, ctl: &[bool]) -> Result<(f64, bool)> {
    let _g = tch::no_grad_guard();
    let mut parts = vec![];
    let mut counts = vec![];
    for j in (0..y.len()).filter(|j| ctl[*j]) {
        let mut err: Option<Tensor> = None;
        for (e, k) in E.iter().zip(ks) {
            if *e != 0.0 {
                let term = k[j].f_mul_scalar(e * dt)?;
                err = Some(match err {
                    Some(a) => a.f_add(&term)?,
                    None => term,
                });
            }
        }
        let scale = y[j].f_abs()?.f_maximum(&y_next[j].f_abs()?)?.f_mul_scalar(opts.rtol)?.f_add_scalar(opts.atol)?;
        let ratio = err.expect("nonzero weights").f_div(&scale)?;
        parts.push(reduce(&ratio, opts.norm)?);
        counts.push(ratio.numel() as f64);
    }
    for k in &ks[0] {
        parts.push(k.f_sum(Kind::Double)?);
    }
    let host = to_host(&parts)?;
    let n_ctl = counts.len();
    let k1_finite = host[n_ctl..].iter().all(|v| v.is_finite());
    let err = combine(&host[..n_ctl], &counts, opts.norm);
    Ok((if err.is_nan() { f64::INFINITY } else { err }, k1_finite))
}

/// Per tensor: the sum of squares (RMS norm) or the largest magnitude (max norm), as a 0-dim
/// double tensor.
fn reduce(ratio: &Tensor, norm: ErrorNorm) -> Result<Tensor> {
    Ok(match norm {
        ErrorNorm::Rms => ratio.f_square()?.f_sum(Kind::Double)?,
        ErrorNorm::Max => ratio.f_abs()?.f_max()?.f_to_kind(Kind::Double)?,
    })
}

fn combine(parts: &[f64], counts: &[f64], norm: ErrorNorm) -> f64 {
    if parts.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    match norm {
        ErrorNorm::Rms => (parts.iter().sum::<f64>() / counts.iter().sum::<f64>().max(1.0)).sqrt(),
        ErrorNorm::Max => parts.iter().copied().fold(0.0, f64::max),
    }
}

fn to_host(parts: &[Tensor]) -> Result<Vec<f64>> {
    let s = Tensor::f_stack(parts, 0)?.f_to_device(Device::Cpu)?;
    Ok(Vec::<f64>::try_from(&s)?)
}

/// Hairer's starting step (Solving ODEs I, II.4): `h0` from the sizes of `y0` and `f0`, one
/// explicit Euler probe to estimate the second derivative, then `(0.01 / max(d1, d2))^(1/5)`.
fn initial_step(f: &mut Dynamics, t0: f64, y0: &[Tensor], f0: &[Tensor], dir: f64, opts: &SolverOptions, ctl: &[bool]) -> Result<f64> {
    let _g = tch::no_grad_guard();
    let idx: Vec<usize> = (0..y0.len()).filter(|j| ctl[*j]).collect();
    let scale: Vec<Tensor> = idx
        .iter()
        .map(|&j| y0[j].f_abs()?.f_mul_scalar(opts.rtol)?.f_add_scalar(opts.atol))
        .collect::<Result<_, _>>()?;
    let counts: Vec<f64> = idx.iter().map(|&j| y0[j].numel() as f64).collect();
    let norm_of = |ts: &[Tensor]| -> Result<Vec<Tensor>> {
        idx.iter().zip(&scale).map(|(&j, s)| reduce(&ts[j].f_div(s)?, opts.norm)).collect()
    };
    let mut parts = norm_of(y0)?;
    parts.extend(norm_of(f0)?);
    let host = to_host(&parts)?;
    let n = idx.len();
    let d0 = combine(&host[..n], &counts, opts.norm);
    let d1 = combine(&host[n..], &counts, opts.norm);
    if !d1.is_finite() {
        return Err(OdeError::NonFinite { method: NAME, t: t0, what: "derivative at the initial state" }.into());
    }
    let h0 = if d0 < 1e-5 || d1 < 1e-5 { 1e-6 } else { 0.01 * d0 / d1 };
    let y1 = lincomb(y0, &[(dir * h0, f0)])?;
    let f1 = f(t0 + dir * h0, &y1)?;
    check_derivative(NAME, &y1, &f1)?;
    let diff: Vec<Tensor> = f1.iter().zip(f0).map(|(a, b)| a.f_sub(b)).collect::<Result<_, _>>()?;
    let d2 = combine(&to_host(&norm_of(&diff)?)?, &counts, opts.norm) / h0;
    let big = d1.max(d2);
    let h1 = if !big.is_finite() {
        h0 // the probe blew up: start small and let the controller find its way
    } else if big <= 1e-15 {
        (h0 * 1e-3).max(1e-6)
    } else {
        (0.01 / big).powf(0.2)
    };
    Ok((100.0 * h0).min(h1).max(opts.min_step))
}
