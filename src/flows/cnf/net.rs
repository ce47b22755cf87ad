//! The vector field of a continuous flow, `f(z, t, context)`, one of two kinds:
//! - [`LayerType::ConcatSquash`] (FFJORD's `concatsquash`, the default): every layer is
//!   `y = Linear(x) · σ(W_g t + b_g) + W_b t`, so time gates and shifts every hidden unit.
//! - [`LayerType::Mlp`] (zuko's `CNF` field): a plain MLP on `[cos(kπt), sin(kπt)]` for
//!   `k = 1..freqs`, then `z`, then the context.
//!
//! In both, a context (conditional CNF) is concatenated to the input, there is no activation
//! after the last layer, and the initialisation is PyTorch's `nn.Linear` (uniform in
//! ±1/√fan_in).
//!
//! Parameter names under the net's path, per layer `i`: `{i}.linear.weight [out, in]`,
//! `{i}.linear.bias [out]`, and for concat-squash layers `{i}.gate.weight [out]`,
//! `{i}.gate.bias [out]`, `{i}.hyper_bias.weight [out]` (FFJORD's `_layer`, `_hyper_gate`,
//! `_hyper_bias`, with the `1 → out` maps stored as vectors).
//!
//! Speed: per evaluation, [`OdeNet::at_time`] turns each layer into an affine map `(W', b')` at
//! that time (the gate scales `W`'s rows and the bias; the MLP's time features fold into its
//! first bias), computed once and shared by every row, so the batch-sized work of a layer is one
//! `addmm` and one activation. A solve goes through [`super::jvp`], which also prepares what
//! does not change during it.
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

/// Activation between the layers. Smooth ones only: the dynamics must be differentiable for the
/// trace and Lipschitz for the solver.
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

    /// `u · σ'(a)` for tangents `u` (broadcast against `a`), given `h = σ(a)`: one fused
    /// libtorch op (the activation's own backward kernel, differentiable in turn).
    pub fn scale_tangent(self, u: &Tensor, a: &Tensor, h: &Tensor) -> Result<Tensor> {
        Ok(match self {
            OdeActivation::Softplus => a.f_softplus_backward(u, 1.0, 20.0)?,
            OdeActivation::Tanh => Tensor::f_tanh_backward(u, h)?,
            OdeActivation::Elu => Tensor::f_elu_backward(u, 1.0, 1.0, 1.0, true, h)?,
        })
    }
}

/// How time enters the network.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LayerType {
    /// FFJORD's concat-squash layers.
    #[default]
    ConcatSquash,
    /// zuko's field: an MLP with sinusoidal time features at its input.
    Mlp,
}

fn uniform(p: &nn::Path, name: &str, shape: &[i64], bound: f64) -> Tensor {
    p.var(name, shape, nn::Init::Uniform { lo: -bound, up: bound })
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
        Self::with_weight(p, &[d_out, d_in])
    }

    /// A layer whose `linear.weight` has shape `[out, in, ...]` (a conv's `[out, in, k, k]`),
    /// initialised as PyTorch's `nn.Linear` / `nn.Conv2d`: uniform in ±1/√fan_in.
    pub(super) fn with_weight(p: nn::Path, shape: &[i64]) -> Self {
        let d_out = shape[0];
        let b = 1.0 / (shape[1..].iter().product::<i64>() as f64).sqrt();
        ConcatSquash {
            weight: uniform(&(&p / "linear"), "weight", shape, b),
            bias: uniform(&(&p / "linear"), "bias", &[d_out], b),
            gate_weight: uniform(&(&p / "gate"), "weight", &[d_out], 1.0),
            gate_bias: uniform(&(&p / "gate"), "bias", &[d_out], 1.0),
            hyper_bias: uniform(&(&p / "hyper_bias"), "weight", &[d_out], 1.0),
        }
    }

    /// The layer at time `t` (0-dim) as `(W', b')`: `W' = W · gate` per output (row or conv
    /// filter), `b' = b · gate + W_b t`.
    fn at_time(&self, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let gate = self.gate_bias.f_addcmul(&self.gate_weight, t)?.f_sigmoid()?;
        let mut per_output = vec![-1i64];
        per_output.resize(self.weight.dim(), 1);
        let w = self.weight.f_mul(&gate.f_reshape(&per_output)?)?;
        let b = self.hyper_bias.f_mul(t)?.f_addcmul(&self.bias, &gate)?;
        Ok((w, b))
    }
}

pub enum OdeLayers {
    ConcatSquash(Vec<ConcatSquash>),
    /// FFJORD's `ConcatSquashConv2d` on images `shape = [C, H, W]` (see [`super::conv`]): 3×3
    /// convolutions, padding 1, weights `[out, in, 3, 3]`; the state stays flat `[B, C·H·W]`.
    ConcatSquashConv { layers: Vec<ConcatSquash>, shape: [i64; 3] },
    /// `(weight [out, in], bias [out])` per layer; the first reads `2·freqs` time features
    /// before `z` and the context.
    Mlp { linears: Vec<(Tensor, Tensor)>, freqs: i64 },
}

/// The ODE network `f(z, t, context) -> dz/dt`.
pub struct OdeNet {
    pub layers: OdeLayers,
    pub activation: OdeActivation,
    pub dim: i64,
    pub context_dim: i64,
}

impl OdeNet {
    /// `dim` features (+ `context_dim` context) -> hidden widths `hidden` -> `dim`, with
    /// concat-squash layers.
    pub fn new(p: nn::Path, dim: i64, context_dim: i64, hidden: &[i64], activation: OdeActivation) -> Result<Self> {
        Self::with_layers(p, LayerType::ConcatSquash, 0, dim, context_dim, hidden, activation)
    }

    /// As [`new`](Self::new) with the layer type chosen; `freqs` time frequencies for
    /// [`LayerType::Mlp`] (ignored otherwise).
    pub fn with_layers(p: nn::Path, kind: LayerType, freqs: i64, dim: i64, context_dim: i64, hidden: &[i64], activation: OdeActivation) -> Result<Self> {
        if dim < 1 || context_dim < 0 {
            bail!("ODE net: needs dim >= 1 and context_dim >= 0 (got {dim}, {context_dim})");
        }
        if let Some(w) = hidden.iter().find(|w| **w < 1) {
            bail!("ODE net: hidden widths must be >= 1, got {w} in {hidden:?}");
        }
        let widths = hidden.iter().copied().chain(std::iter::once(dim));
        let layers = match kind {
            LayerType::ConcatSquash => {
                let mut d = dim + context_dim;
                let mut layers = vec![];
                for (i, w) in widths.enumerate() {
                    layers.push(ConcatSquash::new(&p / i, d, w));
                    d = w;
                }
                OdeLayers::ConcatSquash(layers)
            }
            LayerType::Mlp => {
                if !(1..=64).contains(&freqs) {
                    bail!("ODE net: an MLP field needs 1 to 64 time frequencies, got {freqs}");
                }
                let mut d = 2 * freqs + dim + context_dim;
                let mut linears = vec![];
                for (i, w) in widths.enumerate() {
                    let q = &p / i / "linear";
                    let b = 1.0 / (d as f64).sqrt();
                    linears.push((uniform(&q, "weight", &[w, d], b), uniform(&q, "bias", &[w], b)));
                    d = w;
                }
                OdeLayers::Mlp { linears, freqs }
            }
        };
        Ok(OdeNet { layers, activation, dim, context_dim })
    }

    /// The concat-squash layers (dense or conv), if the net is made of them.
    pub fn concat_squash(&self) -> Option<&[ConcatSquash]> {
        match &self.layers {
            OdeLayers::ConcatSquash(l) | OdeLayers::ConcatSquashConv { layers: l, .. } => Some(l),
            OdeLayers::Mlp { .. } => None,
        }
    }

    /// `[cos(kπt), sin(kπt)]`, `k = 1..freqs`, for `t` of shape `[]` or `[N, 1]`.
    pub(super) fn time_features(t: &Tensor, freqs: i64) -> Result<Tensor> {
        let k = Tensor::f_arange_start(1, freqs + 1, (t.kind(), t.device()))?.f_mul_scalar(std::f64::consts::PI)?;
        let a = t.f_mul(&k)?;
        Ok(Tensor::f_cat(&[a.f_cos()?, a.f_sin()?], -1)?)
    }

    /// The layers' affine maps at time `t` (0-dim): computed once per evaluation, shared by
    /// every row (and by every copy of the batch when the exact trace replicates it).
    pub fn at_time(&self, t: &Tensor) -> Result<Vec<(Tensor, Tensor)>> {
        match &self.layers {
            OdeLayers::ConcatSquash(layers) | OdeLayers::ConcatSquashConv { layers, .. } => layers.iter().map(|l| l.at_time(t)).collect(),
            OdeLayers::Mlp { linears, freqs } => {
                let (w0, b0) = &linears[0];
                let nt = 2 * freqs;
                let w_t = w0.f_narrow(1, 0, nt)?;
                let w_z = w0.f_narrow(1, nt, w0.size()[1] - nt)?;
                let b = b0.f_addmv(&w_t, &Self::time_features(t, *freqs)?)?;
                let mut maps = vec![(w_z, b)];
                maps.extend(linears[1..].iter().map(|(w, b)| (w.shallow_clone(), b.shallow_clone())));
                Ok(maps)
            }
        }
    }

    /// `f(z, t)` for `z [N, dim]` (and `cond [N, context_dim]`), given [`at_time`](Self::at_time).
    pub fn apply(&self, maps: &[(Tensor, Tensor)], z: &Tensor, cond: Option<&Tensor>) -> Result<Tensor> {
        if let OdeLayers::ConcatSquashConv { shape, .. } = &self.layers {
            return super::conv::apply(self, *shape, maps, z, cond);
        }
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

    /// `f(z, t)` in one call.
    pub fn forward(&self, t: &Tensor, z: &Tensor, cond: Option<&Tensor>) -> Result<Tensor> {
        self.apply(&self.at_time(t)?, z, cond)
    }

    /// `f(z_n, t_n)` with a time per row, `t [N, 1]` (flow matching trains on random times).
    pub fn forward_per_row(&self, t: &Tensor, z: &Tensor, cond: Option<&Tensor>) -> Result<Tensor> {
        if let OdeLayers::ConcatSquashConv { layers, shape } = &self.layers {
            return super::conv::forward_per_row(self, layers, *shape, t, z, cond);
        }
        let mut parts = vec![];
        if let OdeLayers::Mlp { freqs, .. } = &self.layers {
            parts.push(Self::time_features(t, *freqs)?);
        }
        parts.push(z.shallow_clone());
        if let Some(c) = cond {
            parts.push(c.f_to_kind(z.kind())?);
        }
        let mut h = if parts.len() == 1 { z.shallow_clone() } else { Tensor::f_cat(&parts, 1)? };
        let act = |i: usize, n: usize, h: Tensor| if i + 1 < n { self.activation.apply(&h) } else { Ok(h) };
        match &self.layers {
            OdeLayers::ConcatSquash(layers) => {
                for (i, l) in layers.iter().enumerate() {
                    let gate = t.f_mul(&l.gate_weight)?.f_add(&l.gate_bias)?.f_sigmoid()?;
                    h = h.f_linear(&l.weight, Some(&l.bias))?.f_mul(&gate)?.f_add(&t.f_mul(&l.hyper_bias)?)?;
                    h = act(i, layers.len(), h)?;
                }
            }
            OdeLayers::Mlp { linears, .. } => {
                for (i, (w, b)) in linears.iter().enumerate() {
                    h = act(i, linears.len(), h.f_linear(w, Some(b))?)?;
                }
            }
            OdeLayers::ConcatSquashConv { .. } => unreachable!("handled above"),
        }
        Ok(h)
    }
}
