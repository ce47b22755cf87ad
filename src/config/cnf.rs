//! `[model.cnf]`: the settings of FFJORD's continuous flows, range-checked by name.
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// `[model.cnf]`: the continuous normalizing flows of `model.kind = "ffjord"` (defaults: FFJORD's
/// toy settings). Training uses `solver`/`rtol`/`atol`/`steps`, evaluation and sampling the
/// `eval_*` keys; `max_steps`, `min_step` and `error_norm` apply to both.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CnfConfig {
    /// The ODE net: "concatsquash" (FFJORD's layers) or "mlp" (zuko's CNF field: an MLP on
    /// sinusoidal time features and z).
    pub layer_type: crate::flows::LayerType,
    /// Hidden widths of the ODE net (FFJORD's `dims`).
    pub hidden: Vec<i64>,
    /// "mlp" only: time features cos(kπt), sin(kπt) for k = 1..time_frequencies.
    pub time_frequencies: i64,
    /// "softplus" | "tanh" | "elu".
    pub activation: crate::flows::OdeActivation,
    /// End time T of each block.
    pub time_length: f64,
    /// Learn T (FFJORD's `train_T`).
    pub train_time: bool,
    /// "dopri5" (adaptive) | "rk4" | "euler" (fixed steps).
    pub solver: crate::flows::ode::Method,
    pub rtol: f64,
    pub atol: f64,
    /// Steps per solve of the fixed-step solvers.
    pub steps: i64,
    /// Adaptive error norm: "rms" (Hairer, torchdiffeq, FFJORD) or "max" (zuko).
    pub error_norm: crate::flows::ode::ErrorNorm,
    /// Step attempts after which an adaptive solve fails (never a hang).
    pub max_steps: i64,
    /// A proposed step below this (of the unit interval) fails an adaptive solve.
    pub min_step: f64,
    pub eval_solver: crate::flows::ode::Method,
    pub eval_rtol: f64,
    pub eval_atol: f64,
    pub eval_steps: i64,
    /// Training's trace: "auto" (exact up to 8 features, Hutchinson above), "exact" or
    /// "hutchinson" (only where the trainer allows a stochastic log-det). Evaluation is exact.
    pub trace: crate::flows::TraceChoice,
    /// Hutchinson's probes: "rademacher" | "gaussian".
    pub noise: crate::flows::Noise,
    /// RNODE penalties (Finlay et al. 2020), 0 = off: kinetic energy and Jacobian Frobenius norm.
    pub kinetic_weight: f64,
    pub jacobian_weight: f64,
}

impl Default for CnfConfig {
    fn default() -> Self {
        CnfConfig {
            layer_type: crate::flows::LayerType::ConcatSquash,
            hidden: vec![64, 64, 64],
            time_frequencies: 3,
            activation: crate::flows::OdeActivation::Tanh,
            time_length: 0.5,
            train_time: true,
            solver: crate::flows::ode::Method::Dopri5,
            rtol: 1e-5,
            atol: 1e-5,
            steps: 20,
            error_norm: crate::flows::ode::ErrorNorm::Rms,
            max_steps: 1000,
            min_step: 1e-8,
            eval_solver: crate::flows::ode::Method::Dopri5,
            eval_rtol: 1e-5,
            eval_atol: 1e-5,
            eval_steps: 20,
            trace: crate::flows::TraceChoice::Auto,
            noise: crate::flows::Noise::Rademacher,
            kinetic_weight: 0.0,
            jacobian_weight: 0.0,
        }
    }
}

impl CnfConfig {
    fn solver_options(&self, method: crate::flows::ode::Method, rtol: f64, atol: f64, steps: i64) -> crate::flows::ode::SolverOptions {
        crate::flows::ode::SolverOptions {
            method,
            rtol,
            atol,
            steps,
            norm: self.error_norm,
            max_steps: self.max_steps,
            min_step: self.min_step,
            first_step: None,
        }
    }
    pub fn train_solver(&self) -> crate::flows::ode::SolverOptions {
        self.solver_options(self.solver, self.rtol, self.atol, self.steps)
    }
    pub fn eval_solver(&self) -> crate::flows::ode::SolverOptions {
        self.solver_options(self.eval_solver, self.eval_rtol, self.eval_atol, self.eval_steps)
    }

    /// What every continuous flow of a model takes from this section.
    pub fn options(&self) -> crate::flows::CnfOptions {
        crate::flows::CnfOptions {
            trace: self.trace,
            noise: self.noise,
            train_solver: self.train_solver(),
            eval_solver: self.eval_solver(),
            kinetic_weight: self.kinetic_weight,
            jacobian_weight: self.jacobian_weight,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if let Some(w) = self.hidden.iter().find(|w| !(1..=65536).contains(*w)) {
            bail!("model.cnf.hidden = {:?}: every width must be between 1 and 65536 (got {w})", self.hidden);
        }
        if !(1..=64).contains(&self.time_frequencies) {
            bail!("model.cnf.time_frequencies = {} must be between 1 and 64", self.time_frequencies);
        }
        if !(self.time_length > 0.0 && self.time_length <= 1000.0) {
            bail!("model.cnf.time_length = {} must be in (0, 1000]", self.time_length);
        }
        for (k, v) in [("kinetic_weight", self.kinetic_weight), ("jacobian_weight", self.jacobian_weight)] {
            if !(v >= 0.0 && v.is_finite()) {
                bail!("model.cnf.{k} = {v} must be >= 0");
            }
        }
        self.train_solver().validate("model.cnf (training solver: solver, rtol, atol, steps)")?;
        self.eval_solver().validate("model.cnf (evaluation solver: eval_solver, eval_rtol, eval_atol, eval_steps)")?;
        Ok(())
    }
}
