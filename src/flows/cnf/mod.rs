//! A continuous normalizing flow (Chen et al. 2018; FFJORD, Grathwohl et al. 2019): the map
//! from `z(0) = x` to `z(T)` along `dz/dt = f(z, t, context)`, with
//! `log|det ∂z(T)/∂z(0)| = ∫₀ᵀ tr(∂f/∂z) dt` (the log-density falls by the same amount:
//! `d log p/dt = −tr(∂f/∂z)`).
//!
//! - **Time.** The solver runs on `s ∈ [0, 1]` with `dz/ds = T · f(z, sT)`, so a learned end
//!   time `T = sqrt_end_time²` (FFJORD's `train_T`) gets its gradient through ordinary autograd.
//!   `forward` integrates `s: 0 → 1` (data → latent), `inverse` `s: 1 → 0`.
//! - **Trace.** From Jacobian-vector products carried through the net beside the values
//!   (forward mode by hand: the field is affine maps and elementwise activations, see
//!   [`OdeNet::apply_with_tangents`]). Exact: with the `D` basis vectors, i.e. all columns of the
//!   Jacobian at once (in chunks of at most [`EXACT_TRACE_ROWS`] rows × columns). Hutchinson:
//!   `εᵀ(∂f/∂z)ε` with `ε` Rademacher or Gaussian, drawn once per solve and held fixed during
//!   it, which is unbiased for the trace. The estimate is used only when the caller allows one
//!   (`ctx.stochastic_logdet`, training) and [`CnfOptions::trace`] picks it (`Auto`: Hutchinson
//!   above [`AUTO_EXACT_MAX_DIM`] features); otherwise — evaluation, sampling, every reported
//!   likelihood — the trace is exact.
//! - **Gradients.** Discretise-then-optimise: the solve is plain tensor arithmetic (the trace
//!   included: no autograd call inside an evaluation, so no double backward), and `backward`
//!   runs through all stages of every accepted step. Under no-grad nothing is recorded.
//! - **Regularisers** (RNODE, Finlay et al. 2020), in training with a sink and a non-zero weight:
//!   the kinetic energy `∫₀¹ ‖dz/ds‖² ds` and the Jacobian Frobenius norm
//!   `∫₀¹ ‖∂(dz/ds)/∂z‖²_F ds` (exact with the exact trace, `‖(∂(dz/ds)/∂z) ε‖²` with Hutchinson's
//!   `ε`) are integrated as extra ODE states, outside the error control, and reported per sample,
//!   already weighted, as the penalties `"kinetic_energy"` and `"jacobian_norm"`. Over the
//!   unit-time parameterisation they equal Finlay et al.'s for `T = 1`, and a learned `T` cannot
//!   shrink them by stretching time.
//! - **Counters**: `"nfe_forward"` (every evaluation of the solve, rejected steps and the
//!   first-step probe included) and, when a graph was built, `"nfe_backward"`: the evaluations
//!   the backward pass differentiates through (those of accepted steps, counted by the solver
//!   as it keeps them, not by a hook in the backward pass).
//!
//! - **Export** ([`script`]): TorchScript and plain PyTorch with the evaluation solver
//!   (Dormand–Prince with the same step control, or fixed-step RK4 / Euler), the exact or
//!   Hutchinson trace chosen per call.
//!
//! Parameters: `net.*` ([`OdeNet`]: FFJORD's concat-squash layers or zuko's MLP with time
//! features) and `sqrt_end_time` (trainable only with `train_time`).
use super::{check_channels, Ctx, Flow};
use crate::flows::ode::{self, SolverOptions};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

mod conv;
mod field;
pub mod jvp;
pub mod matching;
pub mod net;
mod script;

pub use matching::{flow_matching_loss, flow_matching_loss_with};
pub use conv::KERNEL as CONV_KERNEL;
pub use net::{LayerType, OdeActivation, OdeLayers, OdeNet};
pub use script::solver_code;

/// Up to this many features `TraceChoice::Auto` keeps the trace exact in training.
pub const AUTO_EXACT_MAX_DIM: i64 = 8;
/// Rows (copies × batch) of one exact-trace chunk; larger problems take several chunks.
pub const EXACT_TRACE_ROWS: i64 = 16384;

/// Which trace estimator training uses (evaluation is always exact).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TraceChoice {
    /// Exact up to [`AUTO_EXACT_MAX_DIM`] features, Hutchinson above.
    #[default]
    Auto,
    Exact,
    Hutchinson,
}

/// Hutchinson's probe distribution.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Noise {
    /// ±1 with equal probability (the lower-variance choice).
    #[default]
    Rademacher,
    Gaussian,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CnfOptions {
    pub trace: TraceChoice,
    pub noise: Noise,
    /// Solver in training (`ctx.train`) and otherwise: FFJORD trains looser than it tests.
    pub train_solver: SolverOptions,
    pub eval_solver: SolverOptions,
    /// Weights of the kinetic-energy and Jacobian-norm penalties (0 = not integrated).
    pub kinetic_weight: f64,
    pub jacobian_weight: f64,
}

impl Default for CnfOptions {
    fn default() -> Self {
        CnfOptions {
            trace: TraceChoice::Auto,
            noise: Noise::Rademacher,
            train_solver: SolverOptions::default(),
            eval_solver: SolverOptions::default(),
            kinetic_weight: 0.0,
            jacobian_weight: 0.0,
        }
    }
}

/// The trace a solve uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceMode {
    Exact,
    Hutchinson(Noise),
}

pub struct Cnf {
    pub net: OdeNet,
    /// `T = sqrt_end_time²`.
    pub sqrt_end_time: Tensor,
    pub options: CnfOptions,
}

impl Cnf {
    /// A CNF on `dim` features with a `context_dim` context, a concat-squash field of hidden
    /// widths `hidden`, end time `time_length` (learned when `train_time`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        p: nn::Path,
        dim: i64,
        context_dim: i64,
        hidden: &[i64],
        activation: OdeActivation,
        time_length: f64,
        train_time: bool,
        options: CnfOptions,
    ) -> Result<Self> {
        let net = OdeNet::new(&p / "net", dim, context_dim, hidden, activation)?;
        Self::with_net(p, net, time_length, train_time, options)
    }

    /// A CNF around a field built under `p / "net"` (any [`net::LayerType`]).
    pub fn with_net(p: nn::Path, net: OdeNet, time_length: f64, train_time: bool, options: CnfOptions) -> Result<Self> {
        anyhow::ensure!(time_length > 0.0 && time_length.is_finite(), "CNF: time_length = {time_length} must be > 0");
        options.train_solver.validate("CNF training solver")?;
        options.eval_solver.validate("CNF evaluation solver")?;
        let init = Tensor::f_from_slice(&[time_length.sqrt() as f32])?.f_reshape([] as [i64; 0])?.f_to_device(p.device())?;
        let sqrt_end_time = p.add("sqrt_end_time", init, train_time);
        Ok(Cnf { net, sqrt_end_time, options })
    }

    pub fn dim(&self) -> i64 {
        self.net.dim
    }

    /// The end time `T`.
    pub fn end_time(&self) -> Result<Tensor> {
        Ok(self.sqrt_end_time.f_square()?)
    }

    /// The trace this call uses: an estimate only where the caller allows one, or where the
    /// log-det is thrown away (a data-dependent initialisation pass only needs the values).
    pub fn trace_mode(&self, ctx: &Ctx) -> TraceMode {
        let stochastic = match self.options.trace {
            TraceChoice::Exact => false,
            TraceChoice::Hutchinson => true,
            TraceChoice::Auto => self.dim() > AUTO_EXACT_MAX_DIM,
        };
        if stochastic && (ctx.stochastic_logdet || ctx.data_init) {
            TraceMode::Hutchinson(self.options.noise)
        } else {
            TraceMode::Exact
        }
    }

    /// Integrates from `s0` to `s1`, returning `(z(s1), ∫ tr ds)` and reporting the
    /// regularisers and counters to `ctx`.
    fn integrate(&self, x: &Tensor, s0: f64, s1: f64, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        check_channels("Cnf", x, self.dim())?;
        anyhow::ensure!(x.dim() == 2, "Cnf: expected input of shape [B, {}], got {:?}", self.dim(), x.size());
        let batch = x.size()[0];
        let cond = super::conditioner::context("Cnf", ctx, self.net.context_dim, batch)?;
        let solver = if ctx.train { &self.options.train_solver } else { &self.options.eval_solver };
        let o = &self.options;
        let regularise = ctx.train && ctx.sink.is_some() && (o.kinetic_weight > 0.0 || o.jacobian_weight > 0.0);
        let graph = crate::ffi::switches::grad_mode_enabled();
        let mut field = field::Field::new(self, x, cond, self.trace_mode(ctx), regularise)?;
        let mut y0 = vec![Tensor::f_cat(&[x, &Tensor::f_zeros([batch, 1], (x.kind(), x.device()))?], 1)?];
        if regularise {
            y0.push(Tensor::f_zeros([batch, 2], (x.kind(), x.device()))?);
        }
        let controlled = [true, false];
        let sol = ode::solve(&mut |s, y| field.eval(s, y), s0, s1, y0, solver, &controlled).with_context(|| {
            format!("Cnf ({} features): integrating s from {s0} to {s1} with {}", self.dim(), solver.method.name())
        })?;
        ctx.count("nfe_forward", sol.stats.nfe as f64);
        if graph {
            ctx.count("nfe_backward", sol.stats.nfe_in_graph as f64);
        }
        let mut state = sol.state.into_iter();
        let zl = state.next().expect("z and log-det");
        let (z, logdet) = (zl.f_narrow(1, 0, self.dim())?, zl.f_select(1, self.dim())?);
        if let Some(reg) = state.next() {
            // Integrating backwards accumulates the negated integrals.
            let sign = (s1 - s0).signum();
            if o.kinetic_weight > 0.0 {
                ctx.add_penalty("kinetic_energy", reg.f_select(1, 0)?.f_mul_scalar(sign * o.kinetic_weight)?);
            }
            if o.jacobian_weight > 0.0 {
                ctx.add_penalty("jacobian_norm", reg.f_select(1, 1)?.f_mul_scalar(sign * o.jacobian_weight)?);
            }
        }
        Ok((z, logdet))
    }
}

impl Flow for Cnf {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        self.integrate(x, 0.0, 1.0, ctx)
    }
    fn inverse(&self, y: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        self.integrate(y, 1.0, 0.0, ctx)
    }
    /// See [`script`]: the evaluation solver's settings, exact trace; `forward_ode` and
    /// `inverse_ode` choose the solver, the steps and the trace per call.
    fn to_torchscript(&self, ts: &mut crate::script::ScriptBuilder) -> Result<crate::script::ScriptFlow> {
        self.script(ts)
    }
}
