//! The vector field of a continuous flow: an MLP of concat-squash layers (FFJORD's
//! `ConcatSquashLinear`), `y = Linear(x) · σ(W_g t + b_g) + W_b t`, so that time gates and
//! shifts every hidden unit. A context (conditional CNF) is concatenated to the input.
//!
//! Parameter names under the net's path, per layer `i`: `{i}.linear.weight [out, in]`,
//! `{i}.linear.bias [out]`, `{i}.gate.weight [out]`, `{i}.gate.bias [out]`,
//! `{i}.hyper_bias.weight [out]` (FFJORD's `_layer`, `_hyper_gate` and `_hyper_bias`; the
//! `1 → out` linear maps are stored as vectors). Initialisation as PyTorch's `nn.Linear`:
//! uniform in ±1/√fan_in.
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

/// Activation between the layers (none after the last). Smooth ones only: the dynamics must be
/// differentiable for the trace and Lipschitz for the solver.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OdeActivation {
    Softplus,
    Tanh,
    Elu,
}

impl OdeActivation {
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            OdeActivation::Softplus => x.f_softplus()?,
            OdeActivation::Tanh => x.f_tanh()?,
            OdeActivation::Elu => x.f_elu()?,
        })
    }
}

pub struct ConcatSquash {
    pub weight: Tensor,
    pub bias: Tensor,
    pub gate_weight: Tensor,
    pub gate_bias: Tensor,
    pub hyper_bias: Tensor,
}

impl ConcatSquash {
    fn new(p: nn::Path, d_in: i64, d_out: i64) -> Self {
        let b = 1.0 / (d_in as f64).sqrt();
        let u = |lo: f64| nn::Init::Uniform { lo, up: -lo };
        ConcatSquash {
            weight: (&p / "linear").var("weight", &[d_out, d_in], u(-b)),
            bias: (&p / "linear").var("bias", &[d_out], u(-b)),
            gate_weight: (&p / "gate").var("weight", &[d_out], u(-1.0)),
            gate_bias: (&p / "gate").var("bias", &[d_out], u(-1.0)),
            hyper_bias: (&p / "hyper_bias").var("weight", &[d_out], u(-1.0)),
        }
    }

    /// The layer at time `t` (a 0-dim tensor) as an affine map `(W', b')`: the gate multiplies
    /// the rows of `W` and the bias, so the batch-sized work is one `addmm`.
    fn at_time(&self, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let gate = self.gate_bias.f_addcmul(&self.gate_weight, t)?.f_sigmoid()?;
        let w = self.weight.f_mul(&gate.f_unsqueeze(1)?)?;
        let b = self.hyper_bias.f_mul(t)?.f_addcmul(&self.bias, &gate)?;
        Ok((w, b))
    }
}

/// The ODE network `f(z, t, context) -> dz/dt`.
pub struct OdeNet {
    pub layers: Vec<ConcatSquash>,
    pub activation: OdeActivation,
    pub dim: i64,
    pub context_dim: i64,
}

impl OdeNet {
    /// `dim` features (+ `context_dim` context) -> hidden widths `hidden` -> `dim`.
    pub fn new(p: nn::Path, dim: i64, context_dim: i64, hidden: &[i64], activation: OdeActivation) -> Result<Self> {
        if dim < 1 || context_dim < 0 {
            bail!("ODE net: needs dim >= 1 and context_dim >= 0 (got {dim}, {context_dim})");
        }
        if let Some(w) = hidden.iter().find(|w| **w < 1) {
            bail!("ODE net: hidden widths must be >= 1, got {w} in {hidden:?}");
        }
        let mut layers = vec![];
        let mut d = dim + context_dim;
        for (i, &w) in hidden.iter().chain(std::iter::once(&dim)).enumerate() {
            layers.push(ConcatSquash::new(&p / i, d, w));
            d = w;
        }
        Ok(OdeNet { layers, activation, dim, context_dim })
    }

    /// The layers' affine maps at time `t`: computed once per evaluation, shared by every row
    /// (and by every copy of the batch when the exact trace replicates it).
    pub fn at_time(&self, t: &Tensor) -> Result<Vec<(Tensor, Tensor)>> {
        self.layers.iter().map(|l| l.at_time(t)).collect()
    }

    /// `f(z, t)` for `z [N, dim]` (and `cond [N, context_dim]`), given [`at_time`](Self::at_time).
    pub fn apply(&self, maps: &[(Tensor, Tensor)], z: &Tensor, cond: Option<&Tensor>) -> Result<Tensor> {
        let mut h = match cond {
            Some(c) => Tensor::f_cat(&[z, &c.f_to_kind(z.kind())?], 1)?,
            None => z.shallow_clone(),
        };
        let last = maps.len() - 1;
        for (i, (w, b)) in maps.iter().enumerate() {
            h = h.f_linear(w, Some(b))?;
            if i < last {
                h = self.activation.apply(&h)?;
            }
        }
        Ok(h)
    }

    /// `f(z_n, t_n)` with a time per row, `t [N, 1]` (flow matching trains on random times).
    pub fn forward_per_row(&self, t: &Tensor, z: &Tensor, cond: Option<&Tensor>) -> Result<Tensor> {
        let mut h = match cond {
            Some(c) => Tensor::f_cat(&[z, &c.f_to_kind(z.kind())?], 1)?,
            None => z.shallow_clone(),
        };
        let last = self.layers.len() - 1;
        for (i, l) in self.layers.iter().enumerate() {
            let gate = t.f_mul(&l.gate_weight)?.f_add(&l.gate_bias)?.f_sigmoid()?;
            h = h.f_linear(&l.weight, Some(&l.bias))?.f_mul(&gate)?.f_add(&t.f_mul(&l.hyper_bias)?)?;
            if i < last {
                h = self.activation.apply(&h)?;
            }
        }
        Ok(h)
    }

    /// `f(z, t)` in one call.
    pub fn forward(&self, t: &Tensor, z: &Tensor, cond: Option<&Tensor>) -> Result<Tensor> {
        self.apply(&self.at_time(t)?, z, cond)
    }
}
