//! The layer zoo. Every bijection implements [`Flow`]: `forward(x) -> (y, logabsdet)` and
//! `inverse(y) -> (x, logabsdet)`, log-dets per sample (`[B]`). A composite is a list
//! ([`Sequential`]) and is itself a flow.
//!
//! The learned priors of a multi-scale model are bijections too: [`SplitPrior`] and
//! [`LearnedPrior`] map their latents to standard-normal noise (`eps = (z - mean) / std`), so a
//! model's log-density is always `log N(forward(x); 0, I) + logabsdet`, and sampling at a
//! temperature `T` is `inverse(T * randn)`. That is the same number as "add the prior's
//! log-density to the objective" (Glow), written as one contract.
use crate::export::{ScriptBuilder, ScriptFlow};
use anyhow::Result;
use tch::Tensor;

pub mod actnorm;
pub mod batchnorm;
pub mod coupling;
pub mod elementwise;
pub(crate) mod fastconv;
pub mod invconv;
pub mod mlp;
pub mod permutation;
pub mod prior;
pub mod sequential;
pub mod split;
pub mod squeeze;
pub mod testing;
pub mod zeroconv;

pub use actnorm::{ActNorm, ActNormParam};
pub use batchnorm::BatchNormFlow;
pub use elementwise::ElementwiseAffine;
pub use mlp::{Activation, MlpNet};
pub use coupling::{Conditioner, ConvNet, Coupling, CouplingKind, Mask, ParamLayout, ScaleFn};
pub use invconv::{InvConv1x1, InvConv1x1Lu};
pub use permutation::Permutation;
pub use prior::LearnedPrior;
pub use sequential::{Flatten, Sequential};
pub use split::SplitPrior;
pub use squeeze::Squeeze;
pub use zeroconv::ZeroConv2d;

/// What travels with every call besides the tensor: the conditioning input and the shared
/// train / data-initialisation switches. Layers that need nothing ignore it.
#[derive(Clone, Copy, Default)]
pub struct Ctx<'a> {
    /// Conditioning input, e.g. one-hot class labels `[B, n_classes]`.
    pub cond: Option<&'a Tensor>,
    /// Training mode (batch statistics, dropout); eval otherwise.
    pub train: bool,
    /// Data-dependent initialisation pass: layers that have one (ActNorm) initialise
    /// themselves from this batch if they have not been initialised yet.
    pub data_init: bool,
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
}

/// One bijection with a tractable log|det J|.
pub trait Flow {
    /// `x -> (y, log|det dy/dx|)`, the log-det per sample, shape `[B]`.
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)>;
    /// `y -> (x, log|det dx/dy|)`; the log-det is the negative of the forward one.
    fn inverse(&self, y: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)>;

    /// Writes this layer's forward and inverse as TorchScript methods of the module being
    /// exported and returns their names (see [`crate::export`]): the methods must compute what
    /// `forward`/`inverse` compute, op for op. Layers without TorchScript keep this default,
    /// and exporting a model that holds one fails with a message naming the layer.
    fn to_torchscript(&self, ts: &mut ScriptBuilder) -> Result<ScriptFlow> {
        let _ = ts;
        Err(crate::export::not_exportable(&self.layer_name()))
    }

    /// The layer's name in messages: its type name unless overridden.
    fn layer_name(&self) -> String {
        crate::export::short_type_name(std::any::type_name::<Self>())
    }
}

/// Sum over every dimension but the batch: `[B, ...] -> [B]`.
pub(crate) fn sum_per_sample(t: &Tensor) -> Result<Tensor> {
    let b = t.size()[0];
    Ok(t.f_reshape([b, -1])?.f_sum_dim_intlist(Some(&[1i64][..]), false, None)?)
}

/// Number of positions a per-channel parameter is applied at (H·W for images, 1 for vectors).
pub(crate) fn spatial_size(x: &Tensor) -> i64 {
    x.size().iter().skip(2).product()
}

/// A zero log-det `[B]` matching `x`'s dtype and device.
pub(crate) fn zero_logdet(x: &Tensor) -> Result<Tensor> {
    Ok(Tensor::f_zeros([x.size()[0]], (x.kind(), x.device()))?)
}

/// Shape of a per-channel parameter for an input of `ndim` dimensions: `[1, C, 1, 1]` or `[1, C]`.
pub(crate) fn channel_shape(channels: i64, ndim: usize) -> Vec<i64> {
    let mut s = vec![1, channels];
    s.extend(std::iter::repeat(1).take(ndim.saturating_sub(2)));
    s
}

pub(crate) fn check_channels(layer: &str, x: &Tensor, channels: i64) -> Result<()> {
    let s = x.size();
    if s.len() < 2 || s[1] != channels {
        anyhow::bail!("{layer}: expected input with {channels} channels (dim 1), got shape {s:?}");
    }
    Ok(())
}
