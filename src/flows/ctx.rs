//! What travels with every call of a flow besides the tensor: the conditioning input, the
//! train / data-initialisation switches, the conditioners' compute dtype, and a sink where a
//! layer reports what the objective or the progress bar needs beyond the log-det.
use std::collections::BTreeMap;
use std::sync::Mutex;
use tch::{Kind, Tensor};

/// Per-call context. `Copy`, so composites hand the same context to every child.
#[derive(Clone, Copy, Default)]
pub struct Ctx<'a> {
    /// Conditioning input `[B, K]`: one-hot class labels, a context vector, an encoder's
    /// features. Every conditioner accepts it; a layer built without a context ignores it.
    pub cond: Option<&'a Tensor>,
    /// Training mode (batch statistics, stochastic estimates); eval otherwise.
    pub train: bool,
    /// Data-dependent initialisation pass: layers that have one (ActNorm) initialise
    /// themselves from this batch if they have not been initialised yet.
    pub data_init: bool,
    /// The dtype conditioner networks compute in (`Some(BFloat16)` runs their convolutions in
    /// bf16, as `torch.autocast` would); `None` computes in the parameters' dtype. The flow's
    /// own arithmetic (log-dets, priors) never changes dtype.
    pub compute_kind: Option<Kind>,
    /// Layers may return an unbiased stochastic estimate of their log-det instead of the exact
    /// value (a continuous flow's Hutchinson trace in training). Off: every log-det is exact.
    pub stochastic_logdet: bool,
    /// Where layers report regularisers and counters; `None` drops them.
    pub sink: Option<&'a Sink>,
}

impl<'a> Ctx<'a> {
    pub fn eval() -> Self {
        Ctx::default()
    }
    pub fn train() -> Self {
        Ctx { train: true, ..Ctx::default() }
    }
    pub fn with_cond(self, cond: Option<&'a Tensor>) -> Self {
        Ctx { cond, ..self }
    }
    pub fn with_sink(self, sink: &'a Sink) -> Self {
        Ctx { sink: Some(sink), ..self }
    }
    pub fn with_compute_kind(self, kind: Option<Kind>) -> Self {
        Ctx { compute_kind: kind, ..self }
    }

    /// Adds `value` (a scalar or a `[B]` tensor, already weighted) to the loss, if a sink
    /// collects it. `name` labels it in the metrics.
    pub fn add_penalty(&self, name: &str, value: Tensor) {
        if let Some(s) = self.sink {
            s.add_penalty(name, value);
        }
    }

    /// Adds `n` to the counter `name` (e.g. function evaluations), if a sink collects it.
    pub fn count(&self, name: &str, n: f64) {
        if let Some(s) = self.sink {
            s.count(name, n);
        }
    }
}

/// Collects the extra terms of one forward pass: penalties that join the loss (a continuous
/// flow's kinetic energy, a Jacobian norm) and counters for the metrics (function
/// evaluations). Interior mutability behind a `Mutex`, so a `&Sink` can ride in the `Copy`
/// context and models stay `Send`.
#[derive(Default)]
pub struct Sink {
    penalties: Mutex<Vec<(String, Tensor)>>,
    counters: Mutex<BTreeMap<String, f64>>,
}

impl Sink {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_penalty(&self, name: &str, value: Tensor) {
        self.penalties.lock().unwrap_or_else(|e| e.into_inner()).push((name.to_string(), value));
    }

    pub fn count(&self, name: &str, n: f64) {
        *self.counters.lock().unwrap_or_else(|e| e.into_inner()).entry(name.to_string()).or_insert(0.0) += n;
    }

    /// The penalties reported so far, in order.
    pub fn penalties(&self) -> Vec<(String, Tensor)> {
        let p = self.penalties.lock().unwrap_or_else(|e| e.into_inner());
        p.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect()
    }

    /// The counters reported so far.
    pub fn counters(&self) -> BTreeMap<String, f64> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sum of every penalty, each averaged over the batch when it is per sample; `None` when
    /// nothing was reported.
    pub fn total_penalty(&self) -> anyhow::Result<Option<Tensor>> {
        let mut total: Option<Tensor> = None;
        for (_, t) in self.penalties() {
            let v = if t.dim() == 0 { t } else { t.f_mean(t.kind())? };
            total = Some(match total {
                Some(s) => s.f_add(&v)?,
                None => v,
            });
        }
        Ok(total)
    }
}
