//! The reverse-KL objective of one step: `n` reparameterised draws `x_i = f⁻¹(ε_i)` from the
//! flow q with their `log q(x_i)`, the target's `log p̃(x_i)`, and the loss `−ELBO`.
//!
//! # Draws where the target is NaN or ±Inf
//! They are left out of the step, and counted in a [`NonFiniteReport`]. With `m` of the `n`
//! draws kept, the loss is `−(1/m) Σ_kept (log p̃(x_i) − log q(x_i))`: an unbiased estimate of
//! the ELBO of q *restricted to the region where the target is finite* (q conditioned on it),
//! and its reparameterisation gradient; the dropped region's own contribution (`−∞` where
//! `p̃ = 0`) is not seen, so a flow whose mass sits there is not pushed out by this loss. The
//! target is then evaluated a second time on the kept draws only: a backward pass through the
//! first call would carry `0 · NaN = NaN` from the dropped rows into the gradient (a `sqrt` of a
//! negative number, say). A step where no draw is kept, or where the flow itself returned a
//! non-finite point, gives a non-finite loss, which the trainer skips and counts like any
//! non-finite step (`train.max_nonfinite` in a row stops training).
use super::target::{target_log_prob, Target};
use crate::flows::Ctx;
use crate::models::DensityModel;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// One step's draws and loss.
pub struct ElboStep {
    /// `−ELBO` over the kept draws, with its graph to the flow's parameters.
    pub loss: Tensor,
    /// Draws made.
    pub n: i64,
    /// Draws where the target was NaN, +Inf or −Inf (and the flow's point finite): left out.
    pub dropped: Dropped,
    /// The first dropped point and the target's value there ("NaN", "+inf" or "-inf").
    pub example: Option<(Vec<f64>, String)>,
}

/// How a non-finite value is written in reports (JSON has no NaN).
fn value_name(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v > 0.0 {
        "+inf".into()
    } else {
        "-inf".into()
    }
}

/// Counts of dropped draws by what the target returned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    pub nan: i64,
    pub pos_inf: i64,
    pub neg_inf: i64,
}

impl Dropped {
    pub fn total(&self) -> i64 {
        self.nan + self.pos_inf + self.neg_inf
    }
    fn add(&mut self, o: &Dropped) {
        self.nan += o.nan;
        self.pos_inf += o.pos_inf;
        self.neg_inf += o.neg_inf;
    }
    /// "37 NaN, 2 -inf".
    pub fn describe(&self) -> String {
        let parts: Vec<String> = [(self.nan, "NaN"), (self.pos_inf, "+inf"), (self.neg_inf, "-inf")]
            .iter()
            .filter(|(c, _)| *c > 0)
            .map(|(c, w)| format!("{c} {w}"))
            .collect();
        parts.join(", ")
    }
}

/// Draws `n` points from `model` (libtorch's generator: seed it first) and builds the loss.
pub fn elbo_step(model: &dyn DensityModel, target: &dyn Target, n: i64, ctx: &Ctx, like: (Kind, Device)) -> Result<ElboStep> {
    let (x, log_q) = model.rsample_with_log_prob(n, ctx, like)?;
    let lp = target_log_prob(target, &x)?;
    let (lp_finite, x_finite) = {
        let _g = tch::no_grad_guard();
        (lp.f_isfinite()?, x.f_isfinite()?.f_all_dim(1, false)?)
    };
    let counts = |t: &Tensor| -> Result<i64> { Ok(t.f_sum(Kind::Int64)?.int64_value(&[])) };
    // Only points the flow produced finitely are the target's fault.
    let bad = x_finite.f_logical_and(&lp_finite.f_logical_not()?)?;
    let n_bad = counts(&bad)?;
    if n_bad == 0 {
        return Ok(ElboStep { loss: log_q.f_sub(&lp)?.f_mean(Kind::Float)?, n, dropped: Dropped::default(), example: None });
    }
    let lp_d = lp.f_detach()?;
    let dropped = Dropped {
        nan: counts(&bad.f_logical_and(&lp_d.f_isnan()?)?)?,
        pos_inf: counts(&bad.f_logical_and(&lp_d.f_isposinf()?)?)?,
        neg_inf: counts(&bad.f_logical_and(&lp_d.f_isneginf()?)?)?,
    };
    let first = bad.f_nonzero()?.int64_value(&[0, 0]);
    let point = Vec::<f64>::try_from(x.f_detach()?.f_get(first)?.f_to_kind(Kind::Double)?.f_to_device(Device::Cpu)?)?;
    let example = Some((point, value_name(lp_d.f_to_kind(Kind::Double)?.double_value(&[first]))));
    let keep = bad.f_logical_not()?.f_nonzero()?.f_squeeze_dim(1)?;
    let loss = if keep.size()[0] == 0 {
        // Nothing left: a non-finite loss that still reaches the parameters, so the trainer
        // skips the step and counts it.
        log_q.f_sum(Kind::Float)?.f_mul_scalar(f64::NAN)?
    } else {
        let x_k = x.f_index_select(0, &keep)?;
        let lp_k = target_log_prob(target, &x_k)?;
        log_q.f_index_select(0, &keep)?.f_sub(&lp_k)?.f_mean(Kind::Float)?
    };
    Ok(ElboStep { loss, n, dropped, example })
}

/// Where and how often the target was not finite during a run (saved beside the checkpoint as
/// `target_report.json`, so a resumed run keeps counting).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NonFiniteReport {
    /// Draws made so far.
    pub draws: i64,
    /// Draws left out, by kind.
    pub dropped: Dropped,
    /// Steps that left out at least one draw.
    pub steps: i64,
    pub first_step: Option<i64>,
    pub last_step: Option<i64>,
    /// The first dropped point and the target's value there.
    pub example: Option<(Vec<f64>, String)>,
}

impl NonFiniteReport {
    /// Adds the draws of step `step` (1-based, as in the metrics).
    pub fn record(&mut self, step: i64, s: &ElboStep) {
        self.draws += s.n;
        if s.dropped.total() == 0 {
            return;
        }
        self.dropped.add(&s.dropped);
        self.steps += 1;
        self.first_step.get_or_insert(step);
        self.last_step = Some(step);
        if self.example.is_none() {
            self.example.clone_from(&s.example);
        }
    }

    /// One line for a person, or `None` when nothing was dropped.
    pub fn summary(&self) -> Option<String> {
        let total = self.dropped.total();
        if total == 0 {
            return None;
        }
        let (first, last) = (self.first_step.unwrap_or(0), self.last_step.unwrap_or(0));
        let example = self.example.as_ref().map(|(x, v)| format!("; e.g. log p̃ = {v} at x = {}", format_point(x))).unwrap_or_default();
        Some(format!(
            "the target was not finite at {total} of {} draws ({:.3}%: {}) in {} steps (steps {first}..{last}); those draws were left out of their steps' ELBO{example}",
            self.draws,
            100.0 * total as f64 / self.draws.max(1) as f64,
            self.dropped.describe(),
            self.steps
        ))
    }
}

/// `[0.12, -3.4, ...]`, at most 8 coordinates.
pub fn format_point(x: &[f64]) -> String {
    let shown: Vec<String> = x.iter().take(8).map(|v| format!("{v:.4}")).collect();
    let more = if x.len() > 8 { format!(", … ({} coordinates)", x.len()) } else { String::new() };
    format!("[{}{more}]", shown.join(", "))
}
