//! Coupling layers (RealNVP, Glow, NICE, NSF-C): one part of the input conditions a network
//! whose output parameterises an elementwise bijection of the other part. The three parts are
//! independent and swappable: a [`Partition`] (which features condition which), an
//! [`ElementwiseBijection`] (how a transformed feature changes) and a [`Conditioner`] (the
//! network, which also reads the context).
use super::{sum_per_sample, zero_logdet, ConvNet, Ctx, Flow};
use crate::flows::bijection::ElementwiseBijection;
use crate::flows::conditioner::Conditioner;
use crate::script::{ts_sum_per_sample, ts_zero_logdet, ScriptBuilder, ScriptFlow};
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

    /// TorchScript of [`run`](Self::run) on `input` (`x` or `y`), returning `(out, log-det)`
    /// with the log-det negated for the inverse, as [`Flow::inverse`] does.
    fn script_run(&self, ts: &mut ScriptBuilder, net: &str, input: &str, inverse: bool) -> Result<String> {
        let c = self.channels;
        let (split, has_active) = self.partition.script_split(input, c);
        let mut s = format!(
            "assert {input}.dim() >= 2 and {input}.size(1) == {c}, \"Coupling: expected input with {c} channels (dim 1), got \" + str({input}.size())\n\
             {split}h = self.{net}(a, cond)\n{}",
            self.transform.script(ts, inverse)?
        );
        let ld = match (self.transform.volume_preserving(), has_active) {
            (true, _) => ts_zero_logdet(input),
            (false, true) => ts_sum_per_sample("ld * active"),
            (false, false) => ts_sum_per_sample("ld"),
        };
        let neg = if inverse { "-" } else { "" };
        s += &format!("lds = {ld}\nreturn {}, {neg}lds", self.partition.script_merge(input, c));
        Ok(s)
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

    fn to_torchscript(&self, ts: &mut ScriptBuilder) -> Result<ScriptFlow> {
        let net = self.net.to_torchscript(ts)?;
        // Name the methods after the net's (`_levels_0_steps_1_coupling_net_net` -> `..._coupling`).
        let stem = net.trim_start_matches('_').trim_end_matches("_net").trim_end_matches("_net").to_string();
        let stem = if stem.is_empty() { "coupling".to_string() } else { stem };
        let f = self.script_run(ts, &net, "x", false)?;
        let i = self.script_run(ts, &net, "y", true)?;
        ts.define_flow(&stem, &f, &i)
    }

    fn layer_name(&self) -> String {
        format!("Coupling({}, {})", self.partition.name(), self.transform.name())
    }
}
