//! Variational inference with flows: fit a flow q to an unnormalised density p̃ by maximising
//! the ELBO `E_q[log p̃(x) − log q(x)]` (reverse KL) with reparameterised samples, then estimate
//! `log Z = log ∫ p̃` by importance sampling with q as the proposal.
//!
//! - [`target`]: the density, a TorchScript module's `log_prob` ([`ScriptTarget`]) or a Rust
//!   closure ([`FnTarget`]), checked on every call ([`target_log_prob`]).
//! - [`elbo`]: one step's objective, draws where the target is NaN/±Inf left out and reported.
//! - [`estimate`]: the ELBO, `log Z`, its standard error and Kish's ESS from log-weights.
//! - [`fit`](mod@fit): the training loop of `flowzoo fit` (the trainer's step and checkpoints).
//! - [`plot`]: target | samples | flow density for 2-D targets.
//!
//! README's example (a test keeps the two the same):
//!
//! ```no_run
//! use flowzoo::vi::{evaluate_fit, fit::{fit, FitOptions}, FnTarget};
//! use flowzoo::{config::Config, io::{Checkpoint, RunDir}, session::Session};
//! use tch::{Device, Tensor};
//!
//! let mut cfg = Config::load("configs/fit_default.toml".as_ref())?;
//! cfg.train.max_steps = 1000;
//! // log p̃(x) = −|x|²/2 + 3 on R²: log Z = 3 + log 2π.
//! let target = FnTarget::new("gaussian", |x: &Tensor| {
//!     Ok(x.f_square()?.f_sum_dim_intlist(Some(&[1i64][..]), false, None)?.f_mul_scalar(-0.5)?.f_add_scalar(3.0)?)
//! });
//! let opts = FitOptions { out: "runs/gauss".into(), resume: false, device: Device::Cpu, verbose: true, target_file: None };
//! let summary = fit(&cfg, 2, &target, &opts)?; // .final_elbo, .report (where the target was NaN/Inf)
//! let sess = Session::open(&RunDir::open("runs/gauss".as_ref())?, Checkpoint::Best, Device::Cpu)?;
//! let e = evaluate_fit(&sess, &target, 100_000, 0)?; // .elbo, .log_z, .log_z_stderr, .ess_fraction
//! # let _ = (summary, e);
//! # Ok::<(), anyhow::Error>(())
//! ```
use crate::session::Session;
use anyhow::Result;
use tch::{Device, Kind, Tensor};

pub mod elbo;
pub mod estimate;
pub mod fit;
pub mod plot;
pub mod target;

pub use estimate::{importance_estimates, IsEstimate};
pub use fit::fit;
pub use target::{probe_target, target_log_prob, FnTarget, ScriptTarget, Target};

/// `n` log-weights `log p̃(x_i) − log q(x_i)` of draws `x_i ~ q` from `sess`'s flow (seeded with
/// `seed`, `chunk` draws per pass, no gradients), float64 on the host.
pub fn log_weights(sess: &Session, target: &dyn Target, n: i64, chunk: i64, seed: i64) -> Result<Vec<f64>> {
    let _g = tch::no_grad_guard();
    tch::manual_seed(seed);
    let mut parts = vec![];
    let mut left = n;
    while left > 0 {
        let m = left.min(chunk.max(1));
        let (x, log_q) = sess.model.rsample_with_log_prob(m, &sess.ctx_eval(None), (sess.kind(), sess.device()))?;
        let lp = target_log_prob(target, &x)?;
        parts.push(lp.f_to_kind(Kind::Double)?.f_sub(&log_q.f_to_kind(Kind::Double)?)?.f_to_device(Device::Cpu)?);
        left -= m;
    }
    Ok(Vec::<f64>::try_from(&Tensor::f_cat(&parts, 0)?)?)
}

/// What `flowzoo eval --target` reports for a fit run: the ELBO, `log Z` with its standard
/// error and the ESS fraction from `n` draws (seeded with `seed`).
pub fn evaluate_fit(sess: &Session, target: &dyn Target, n: i64, seed: i64) -> Result<IsEstimate> {
    if n < 2 {
        anyhow::bail!("--n {n}: importance sampling needs at least 2 draws");
    }
    probe_target(target, sess.model.dim(), sess.kind(), sess.device())?;
    Ok(importance_estimates(&log_weights(sess, target, n, 8192, seed)?))
}
