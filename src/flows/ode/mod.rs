//! ODE solvers on tch tensors, for continuous flows: adaptive Dormand–Prince 5(4)
//! ([`Method::Dopri5`]) and fixed-step classical Runge–Kutta 4 and Euler.
//!
//! The state is a list of tensors (a continuous flow integrates `[z, log-det]` and, in
//! training, its regulariser accumulators); the dynamics is a closure `f(t, y) -> dy/dt` over
//! that list. Time is a host `f64` and may run backwards (`t1 < t0`). Every solve reports how
//! many times it called `f` ([`SolveStats`]).
//!
//! Autograd: the solver is plain tensor arithmetic, so when the closure's outputs carry a graph,
//! the final state carries one too and `backward` differentiates through every stage
//! (discretise-then-optimise). Step sizes are host numbers chosen from error estimates computed
//! under no-grad: they are constants to autograd, as in torchdiffeq.
//!
//! Failures are errors, never hangs or panics: [`OdeError::MaxSteps`], [`OdeError::MinStep`]
//! and [`OdeError::NonFinite`] name the limit and the time `t` where they struck.
//!
//! This module is a leaf: it imports nothing from the rest of the crate.
use anyhow::Result;
use tch::Tensor;

pub(crate) mod dopri5;
mod fixed;

/// Which integrator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Dormand–Prince 5(4), adaptive steps (rtol / atol, first same as last).
    Dopri5,
    /// Classical 4th-order Runge–Kutta, `steps` equal steps.
    Rk4,
    /// Explicit Euler, `steps` equal steps.
    Euler,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Dopri5 => "dopri5",
            Method::Rk4 => "rk4",
            Method::Euler => "euler",
        }
    }
}

/// How the adaptive solver measures a step's error: both scale each component's error by
/// `atol + rtol · max(|y_n|, |y_{n+1}|)`, then take the root mean square over all controlled
/// components (Hairer's norm, torchdiffeq's and FFJORD's default) or their maximum (stricter:
/// the worst component of the batch decides, as in zuko).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorNorm {
    Rms,
    Max,
}

/// Settings of one solve.
#[derive(Clone, Debug, PartialEq)]
pub struct SolverOptions {
    pub method: Method,
    /// Relative and absolute tolerance (adaptive methods).
    pub rtol: f64,
    pub atol: f64,
    pub norm: ErrorNorm,
    /// Equal steps over `[t0, t1]` (fixed-step methods).
    pub steps: i64,
    /// Step attempts (accepted and rejected) after which an adaptive solve fails.
    pub max_steps: i64,
    /// A proposed step smaller than this (in |t|) fails an adaptive solve.
    pub min_step: f64,
    /// First step of an adaptive solve; `None`: Hairer's heuristic (one extra evaluation).
    pub first_step: Option<f64>,
}

impl Default for SolverOptions {
    fn default() -> Self {
        SolverOptions {
            method: Method::Dopri5,
            rtol: 1e-5,
            atol: 1e-5,
            norm: ErrorNorm::Rms,
            steps: 20,
            max_steps: 1000,
            min_step: 1e-8,
            first_step: None,
        }
    }
}

impl SolverOptions {
    pub fn fixed(method: Method, steps: i64) -> Self {
        SolverOptions { method, steps, ..SolverOptions::default() }
    }
    pub fn dopri5(rtol: f64, atol: f64) -> Self {
        SolverOptions { rtol, atol, ..SolverOptions::default() }
    }

    /// Range checks, with `what` (e.g. `model.cnf`) naming the settings in the message.
    pub fn validate(&self, what: &str) -> Result<()> {
        let ok = |c: bool, msg: String| if c { Ok(()) } else { Err(anyhow::anyhow!("{what}: {msg}")) };
        match self.method {
            Method::Dopri5 => {
                ok(self.rtol > 0.0 && self.rtol < 1.0, format!("rtol = {} must be in (0, 1)", self.rtol))?;
                ok(self.atol > 0.0 && self.atol.is_finite(), format!("atol = {} must be > 0", self.atol))?;
                ok(self.max_steps >= 1, format!("max_steps = {} must be >= 1", self.max_steps))?;
                ok(self.min_step > 0.0 && self.min_step < 1.0, format!("min_step = {} must be in (0, 1)", self.min_step))?;
                if let Some(h) = self.first_step {
                    ok(h > 0.0 && h.is_finite(), format!("first_step = {h} must be > 0"))?;
                }
            }
            Method::Rk4 | Method::Euler => {
                ok((1..=100_000).contains(&self.steps), format!("steps = {} must be between 1 and 100000", self.steps))?;
            }
        }
        Ok(())
    }
}

/// What a solve cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SolveStats {
    /// Calls of the dynamics, all of them (rejected steps and the first-step probe included).
    pub nfe: usize,
    /// Calls whose outputs the final state depends on: the evaluations a backward pass through
    /// the solve differentiates (those of accepted steps).
    pub nfe_in_graph: usize,
    pub accepted: usize,
    pub rejected: usize,
}

/// The final state and the cost.
#[derive(Debug)]
pub struct Solution {
    pub state: Vec<Tensor>,
    pub stats: SolveStats,
}

/// Why a solve stopped without reaching `t1`.
#[derive(Debug, Clone, PartialEq)]
pub enum OdeError {
    MaxSteps { method: &'static str, max_steps: i64, t: f64, t0: f64, t1: f64, accepted: usize, rejected: usize },
    MinStep { method: &'static str, dt: f64, min_step: f64, t: f64, t0: f64, t1: f64 },
    NonFinite { method: &'static str, t: f64, what: &'static str },
}

impl std::fmt::Display for OdeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OdeError::MaxSteps { method, max_steps, t, t0, t1, accepted, rejected } => write!(
                f,
                "{method}: reached max_steps = {max_steps} step attempts at t = {t:.6} (integrating from {t0} to {t1}; {accepted} accepted, {rejected} rejected): loosen rtol/atol, regularise the dynamics, or raise max_steps"
            ),
            OdeError::MinStep { method, dt, min_step, t, t0, t1 } => write!(
                f,
                "{method}: the step size {dt:.3e} fell below min_step = {min_step:.1e} at t = {t:.6} (integrating from {t0} to {t1}): the dynamics are too stiff for rtol/atol, or diverging"
            ),
            OdeError::NonFinite { method, t, what } => write!(f, "{method}: the {what} became non-finite (NaN or Inf) at t = {t:.6}"),
        }
    }
}

impl std::error::Error for OdeError {}

/// The dynamics `dy/dt = f(t, y)` over a list of tensors.
pub type Dynamics<'a> = dyn FnMut(f64, &[Tensor]) -> Result<Vec<Tensor>> + 'a;

/// Integrates `dy/dt = f(t, y)` from `y(t0) = y0` to `t1`. `controlled[i]` says whether state
/// `i` enters the adaptive error norm (missing entries: yes). A continuous flow leaves its
/// regulariser accumulators out: they never feed back into the dynamics and only weight the
/// loss, so controlling their error would cost steps without making `z` or the log-det more
/// accurate.
pub fn solve(f: &mut Dynamics, t0: f64, t1: f64, y0: Vec<Tensor>, opts: &SolverOptions, controlled: &[bool]) -> Result<Solution> {
    opts.validate("solver")?;
    anyhow::ensure!(t0.is_finite() && t1.is_finite(), "solver: t0 = {t0} and t1 = {t1} must be finite");
    anyhow::ensure!(!y0.is_empty(), "solver: the state is an empty list");
    if t0 == t1 {
        return Ok(Solution { state: y0, stats: SolveStats::default() });
    }
    match opts.method {
        Method::Dopri5 => dopri5::solve(f, t0, t1, y0, opts, controlled),
        Method::Rk4 | Method::Euler => fixed::solve(f, t0, t1, y0, opts),
    }
}

/// `y + Σ c_k · k` for every tensor of the state (`terms`: coefficient and a full state each;
/// zero coefficients skipped).
pub(crate) fn lincomb(y: &[Tensor], terms: &[(f64, &[Tensor])]) -> Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(y.len());
    for (j, yj) in y.iter().enumerate() {
        let mut acc: Option<Tensor> = None;
        for (c, k) in terms {
            if *c == 0.0 {
                continue;
            }
            let term = k[j].f_mul_scalar(*c)?;
            acc = Some(match acc {
                Some(a) => a.f_add(&term)?,
                None => term,
            });
        }
        out.push(match acc {
            Some(a) => yj.f_add(&a)?,
            None => yj.shallow_clone(),
        });
    }
    Ok(out)
}

/// Checks that the dynamics returned one tensor per state tensor, each of the state's shape.
pub(crate) fn check_derivative(method: &str, y: &[Tensor], dy: &[Tensor]) -> Result<()> {
    anyhow::ensure!(dy.len() == y.len(), "{method}: the dynamics returned {} tensors for a state of {}", dy.len(), y.len());
    for (i, (a, b)) in y.iter().zip(dy).enumerate() {
        anyhow::ensure!(a.size() == b.size(), "{method}: the dynamics returned shape {:?} for state {i} of shape {:?}", b.size(), a.size());
    }
    Ok(())
}
