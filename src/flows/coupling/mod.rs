//! Coupling layers (RealNVP, Glow, NICE, NSF-C): one part of the input conditions a network
//! whose output parameterises an elementwise bijection of the other part. The three parts are
//! independent and swappable: a [`Partition`] (which features condition which), an
//! [`ElementwiseBijection`] (how a transformed feature changes) and a [`Conditioner`] (the
//! network, which also reads the context).
use super::{sum_per_sample, zero_logdet, ConvNet, Ctx, Flow};
use crate::flows::bijection::ElementwiseBijection;
use crate::flows::conditioner::Conditioner;
use crate::script::{ts_check_channels, ts_sum_per_sample, ts_zero_logdet, Layer, ScriptBuilder, ScriptFlow};
use anyhow::{bail, Result};
use tch::{nn, Tensor};

pub mod partition;

pub use partition::{Alternating, ChannelHalves, Checkerboard, Partition, Parts};

pub struct Coupling {
    pub channels: i64,
    pub partition: Box<dyn Partition>,
    pub transform: Box<dyn ElementwiseBijection>,
    pub net: Box<dyn Conditioner>,
}

impl Coupling {
    /// `(input, output)` features a conditioner needs for this partition and bijection.
    pub fn net_features(partition: &dyn Partition, transform: &dyn ElementwiseBijection, channels: i64) -> (i64, i64) {
        let (n_cond, n_tr) = partition.sizes(channels);
        (n_cond, n_tr * transform.params_per_feature())
    }

    /// A coupling of `channels` features; fails when the network's sizes do not fit the
    /// partition and the bijection.
    pub fn new(channels: i64, partition: Box<dyn Partition>, transform: Box<dyn ElementwiseBijection>, net: Box<dyn Conditioner>) -> Result<Self> {
        let want = Self::net_features(partition.as_ref(), transform.as_ref(), channels);
        if net.features() != want {
            bail!(
                "Coupling: {} with {} on {channels} features needs a conditioner {} -> {}, got {} -> {}",
                partition.name(),
                transform.name(),
                want.0,
                want.1,
                net.features().0,
                net.features().1
            );
        }
        Ok(Coupling { channels, partition, transform, net })
    }

    /// A coupling with Glow's conv conditioner (hidden ActNorms), under `p / "net"`, reading a
    /// `context_dim` context (0: none).
    pub fn with_conv_net(
        p: nn::Path,
        partition: Box<dyn Partition>,
        transform: Box<dyn ElementwiseBijection>,
        channels: i64,
        hidden: i64,
        context_dim: i64,
    ) -> Result<Self> {
        let (c_in, c_out) = Self::net_features(partition.as_ref(), transform.as_ref(), channels);
        let net = ConvNet::with_context(&p / "net", c_in, context_dim, hidden, c_out, true);
        Self::new(channels, partition, transform, Box::new(net))
    }

    /// A coupling on vectors with an MLP conditioner (`depth` hidden layers of `width`) under
    /// `p / "net"`, reading a `context_dim` context (0: none).
    #[allow(clippy::too_many_arguments)]
    pub fn with_mlp(
        p: nn::Path,
        partition: Box<dyn Partition>,
        transform: Box<dyn ElementwiseBijection>,
        dim: i64,
        context_dim: i64,
        width: i64,
        depth: i64,
        activation: crate::flows::Activation,
    ) -> Result<Self> {
        let (c_in, c_out) = Self::net_features(partition.as_ref(), transform.as_ref(), dim);
        let net = crate::flows::MlpNet::with_context(&p / "net", c_in, context_dim, width, depth, c_out, activation)?;
        Self::new(dim, partition, transform, Box::new(net))
    }

    /// Applies the transform to `x` (`inverse = false`) or undoes it, with the forward log-det.
    fn run(&self, x: &Tensor, ctx: &Ctx, inverse: bool) -> Result<(Tensor, Tensor)> {
        super::check_channels("Coupling", x, self.channels)?;
        let parts = self.partition.split(x, self.channels)?;
        let h = self.net.forward(&parts.cond, ctx)?;
        let (out, ld) = if inverse { self.transform.inverse(&parts.part, &h)? } else { self.transform.forward(&parts.part, &h)? };
        let ld = match (ld, &parts.active) {
            (None, _) => zero_logdet(x)?,
            (Some(l), Some(m)) => sum_per_sample(&l.f_mul(m)?)?,
            (Some(l), None) => sum_per_sample(&l)?,
        };
        Ok((self.partition.merge(x, &parts, &out)?, ld))
    }
}

impl Flow for Coupling {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        self.run(x, ctx, false)
    }
    fn inverse(&self, y: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        let (x, ld) = self.run(y, ctx, true)?;
        Ok((x, ld.f_neg()?))
    }

    /// `run` as TorchScript: the partition, the network and the bijection are child layers.
    fn to_torchscript(&self, ts: &mut ScriptBuilder) -> Result<ScriptFlow> {
        let partition = self.partition.to_torchscript(ts, self.channels)?;
        let net = self.net.to_torchscript(ts)?;
        let transform = self.transform.to_torchscript(ts)?;
        let body = |input: &str, method: &str, neg: &str| {
            format!(
                "{}a, t, active = $partition.split({input})\n\
                 h = $net.forward(a, cond)\n\
                 out, ld = $transform.{method}(t, h)\n\
                 if ld is None:\n    lds = {}\n\
                 elif active is None:\n    lds = {}\n\
                 else:\n    lds = {}\n\
                 return $partition.merge({input}, a, out, active), {neg}lds",
                ts_check_channels("Coupling", input),
                ts_zero_logdet(input),
                ts_sum_per_sample("ld"),
                ts_sum_per_sample("ld * active")
            )
        };
        let layer = Layer::new("Coupling")
            .int("channels", self.channels)
            .child("partition", &partition)
            .child("net", &net)
            .child("transform", &transform)
            .flow_methods(&body("x", "forward", ""), &body("y", "inverse", "-"));
        ts.add(layer)
    }

    fn layer_name(&self) -> String {
        format!("Coupling({}, {})", self.partition.name(), self.transform.name())
    }
}
