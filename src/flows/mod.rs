//! The layer zoo. Every bijection implements [`Flow`]: `forward(x) -> (y, logabsdet)` and
//! `inverse(y) -> (x, logabsdet)`, log-dets per sample (`[B]`). A composite is a list
//! ([`Sequential`]) and is itself a flow; [`Inverse`] swaps a flow's two directions (IAF is
//! `Inverse` of a MAF layer). A model is a transform plus a [`Base`] distribution.
//!
//! A layer that transforms part of its input given the rest ([`Coupling`]) is three
//! independent, swappable parts:
//! - a [`Partition`] (structure): which features condition which ([`ChannelHalves`],
//!   [`Checkerboard`], [`Alternating`]);
//! - an [`ElementwiseBijection`]: a monotone map of each transformed feature given its raw
//!   parameters ([`Affine`], [`Additive`], [`RationalQuadraticSpline`]);
//! - a [`Conditioner`]: a network from the conditioning features and the context to those raw
//!   parameters ([`ConvNet`], [`MlpNet`], [`Made`]).
//!
//! An [`Autoregressive`] layer (MAF, NSF-AR) is the same idea with a [`Made`] as both structure
//! (its ordering) and conditioner, times any elementwise bijection; IAF is `Inverse` of one.
//!
//! A continuous flow ([`Cnf`], FFJORD) integrates a neural ODE with the solvers of
//! [`crate::flows::ode`]; its log-det is the integrated trace of the field's Jacobian.
//!
//! Whatever a layer needs beyond `(x, ctx)` comes from [`Ctx`]: the context tensor, the
//! train / data-initialisation switches, the conditioners' compute dtype, and a [`Sink`]
//! for regularisers and counters. Continuous flows use the last two: in training
//! (`ctx.stochastic_logdet`) they may return an unbiased estimate of the log-det, and they
//! report their kinetic energy (a penalty the trainer adds to the loss) and their function
//! evaluations (a counter) through `ctx.sink`; see [`testing::NoisyScale`] for a layer that
//! exercises this contract.
//!
//! # Adding a layer
//! One file here: a struct holding its tensors (created under an `nn::Path`, so they get
//! stable dotted names), an `impl Flow`, and `to_torchscript` mirroring the Rust ops through
//! [`crate::script`]. Test it with [`testing::check_flow`] (inverse to 1e-10 in float64,
//! log-det against the brute-force Jacobian). The zoo imports nothing but itself,
//! `crate::script` and `crate::ffi`; its ODE solvers ([`ode`]) import nothing at all.
//!
//! # Example
//! ```no_run
//! use flowzoo::flows::{Affine, ChannelHalves, ConvNet, Coupling, Ctx, Flow};
//! let vs = tch::nn::VarStore::new(tch::Device::Cpu);
//! let coupling = Coupling::with_conv_net(vs.root() / "coupling", Box::new(ChannelHalves::new(false)), Box::new(Affine::glow()), 4, 16, 0).unwrap();
//! let x = tch::Tensor::randn([2, 4, 8, 8], (tch::Kind::Float, tch::Device::Cpu));
//! let (y, logdet) = coupling.forward(&x, &Ctx::eval()).unwrap();
//! let (x2, _) = coupling.inverse(&y, &Ctx::eval()).unwrap();
//! ```
use crate::script::{ScriptBuilder, ScriptFlow};
use anyhow::Result;
use tch::Tensor;

pub mod actnorm;
pub mod autoregressive;
pub mod base;
pub mod batchnorm;
pub mod bijection;
pub mod cnf;
pub mod conditioner;
pub mod coupling;
pub mod ctx;
pub mod elementwise;
pub(crate) mod fastconv;
pub mod inverse;
pub mod invconv;
pub mod ode;
pub mod permutation;
pub mod prior;
pub mod sequential;
pub mod split;
pub mod squeeze;
pub mod testing;
pub mod zeroconv;

pub use actnorm::{ActNorm, ActNormParam};
pub use autoregressive::{Autoregressive, InverseMethod};
pub use base::{standard_normal_log_prob, Base, DiagGaussian, StandardNormal};
pub use batchnorm::BatchNormFlow;
pub use bijection::{Additive, Affine, ElementwiseBijection, ParamLayout, RationalQuadraticSpline, ScaleFn};
pub use conditioner::{Activation, Conditioner, ConvNet, HiddenDegrees, Made, MadeOptions, MadeOrder, MlpNet};
pub use cnf::{Cnf, CnfOptions, LayerType, Noise, OdeActivation, OdeNet, TraceChoice};
pub use coupling::{Alternating, ChannelHalves, Checkerboard, Coupling, Partition};
pub use ctx::{Ctx, Sink};
pub use elementwise::ElementwiseAffine;
pub use invconv::{InvConv1x1, InvConv1x1Lu};
pub use inverse::Inverse;
pub use permutation::Permutation;
pub use prior::LearnedPrior;
pub use sequential::{Flatten, Sequential};
pub use split::SplitPrior;
pub use squeeze::Squeeze;
pub use zeroconv::ZeroConv2d;

/// One bijection with a tractable log|det J|. `Send`, so models move between threads.
pub trait Flow: Send {
    /// `x -> (y, log|det dy/dx|)`, the log-det per sample, shape `[B]`.
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)>;
    /// `y -> (x, log|det dx/dy|)`; the log-det is the negative of the forward one.
    fn inverse(&self, y: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)>;

    /// Writes this layer's forward and inverse as TorchScript methods of the module being
    /// exported and returns their names (see [`crate::script`]): the methods must compute what
    /// `forward`/`inverse` compute, op for op. Layers without TorchScript keep this default,
    /// and exporting a model that holds one fails with a message naming the layer.
    fn to_torchscript(&self, ts: &mut ScriptBuilder) -> Result<ScriptFlow> {
        let _ = ts;
        Err(crate::script::not_exportable(&self.layer_name()))
    }

    /// The layer's name in messages: its type name unless overridden.
    fn layer_name(&self) -> String {
        crate::script::short_type_name(std::any::type_name::<Self>())
    }
}

impl<F: Flow + ?Sized> Flow for Box<F> {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        (**self).forward(x, ctx)
    }
    fn inverse(&self, y: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        (**self).inverse(y, ctx)
    }
    fn to_torchscript(&self, ts: &mut ScriptBuilder) -> Result<ScriptFlow> {
        (**self).to_torchscript(ts)
    }
    fn layer_name(&self) -> String {
        (**self).layer_name()
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
