//! Affine and additive coupling (RealNVP, Glow, NICE). One part of the input conditions a
//! network whose output shifts (and, for affine, scales) the other part. Which part is chosen
//! by a [`Mask`]; the network is any [`Conditioner`].
use super::{actnorm::ActNormParam, sum_per_sample, ActNorm, Ctx, Flow, ZeroConv2d};
use anyhow::{bail, Result};
use tch::{nn, Kind, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CouplingKind {
    /// `y2 = (x2 + shift) · sigmoid(raw + 2)` (Glow's scale: bounded, starts near 0.88).
    Affine,
    /// `y2 = x2 + shift` (NICE), volume preserving.
    Additive,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mask {
    /// Channel halves: the first `C/2` channels condition the rest (`flip` swaps the roles).
    Channel { flip: bool },
    /// Spatial checkerboard: positions with `(i + j) % 2 == parity` condition the others.
    Checkerboard { parity: i64 },
}

/// How the network's output channels divide into (shift, scale).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamLayout {
    /// shift = even channels, scale = odd channels (OpenAI Glow, y0ast).
    Interleaved,
    /// scale = first half, shift = second half (rosinality).
    Contiguous,
}

/// A network from the conditioning part to the transform's parameters.
pub trait Conditioner {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor>;
}

/// Glow's conditioner: 3×3 conv → ActNorm → ReLU → 1×1 conv → ActNorm → ReLU → zero-initialised
/// 3×3 conv with a learned log-scale. With `hidden_actnorm = false` the hidden convs carry a
/// bias instead of an ActNorm (rosinality). Parameter names follow the layer index: `0`, `2`, `4`.
pub struct ConvNet {
    conv0: Tensor,
    bias0: Option<Tensor>,
    norm0: Option<ActNorm>,
    conv2: Tensor,
    bias2: Option<Tensor>,
    norm2: Option<ActNorm>,
    pub out: ZeroConv2d,
}

impl ConvNet {
    pub fn new(p: nn::Path, c_in: i64, hidden: i64, c_out: i64, hidden_actnorm: bool) -> Self {
        let init = nn::Init::Randn { mean: 0.0, stdev: 0.05 };
        let layer = |i: &str, c_in: i64, k: i64| {
            let q = &p / i;
            if hidden_actnorm {
                let w = (&q / "conv").var("weight", &[hidden, c_in, k, k], init);
                (w, None, Some(ActNorm::new(&q / "actnorm", hidden, 4, ActNormParam::Log)))
            } else {
                let w = q.var("weight", &[hidden, c_in, k, k], init);
                (w, Some(q.zeros("bias", &[hidden])), None)
            }
        };
        let (conv0, bias0, norm0) = layer("0", c_in, 3);
        let (conv2, bias2, norm2) = layer("2", hidden, 1);
        let out = ZeroConv2d::new(&p / "4", hidden, c_out);
        ConvNet { conv0, bias0, norm0, conv2, bias2, norm2, out }
    }

    fn hidden(x: &Tensor, w: &Tensor, b: &Option<Tensor>, norm: &Option<ActNorm>, pad: i64, ctx: &Ctx) -> Result<Tensor> {
        let h = x.f_conv2d(w, b.as_ref(), [1, 1], [pad, pad], [1, 1], 1)?;
        let h = match norm {
            Some(n) => n.forward(&h, ctx)?.0,
            None => h,
        };
        Ok(h.f_relu()?)
    }
}

impl Conditioner for ConvNet {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let h = Self::hidden(x, &self.conv0, &self.bias0, &self.norm0, 1, ctx)?;
        let h = Self::hidden(&h, &self.conv2, &self.bias2, &self.norm2, 0, ctx)?;
        self.out.forward(&h)
    }
}

pub struct Coupling {
    pub kind: CouplingKind,
    pub mask: Mask,
    pub layout: ParamLayout,
    pub channels: i64,
    pub net: Box<dyn Conditioner>,
}

impl Coupling {
    /// Channels the conditioner reads and writes for this mask and kind: `(c_in, c_out)`.
    pub fn net_channels(kind: CouplingKind, mask: Mask, channels: i64) -> (i64, i64) {
        let (c_in, c_tr) = match mask {
            Mask::Channel { flip: false } => (channels / 2, channels - channels / 2),
            Mask::Channel { flip: true } => (channels - channels / 2, channels / 2),
            Mask::Checkerboard { .. } => (channels, channels),
        };
        match kind {
            CouplingKind::Affine => (c_in, 2 * c_tr),
            CouplingKind::Additive => (c_in, c_tr),
        }
    }

    /// A coupling with Glow's conv conditioner, under `p / "net"`.
    pub fn with_conv_net(p: nn::Path, kind: CouplingKind, mask: Mask, channels: i64, hidden: i64) -> Self {
        let (c_in, c_out) = Self::net_channels(kind, mask, channels);
        let net = ConvNet::new(&p / "net", c_in, hidden, c_out, true);
        Coupling { kind, mask, layout: ParamLayout::Interleaved, channels, net: Box::new(net) }
    }

    /// `(shift, log_scale)` from the network output; `log_scale` is `None` for additive.
    fn params(&self, h: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        match self.kind {
            CouplingKind::Additive => Ok((h.shallow_clone(), None)),
            CouplingKind::Affine => {
                let (shift, raw) = match self.layout {
                    ParamLayout::Interleaved => (h.f_slice(1, 0, None, 2)?, h.f_slice(1, 1, None, 2)?),
                    ParamLayout::Contiguous => {
                        let c = h.size()[1] / 2;
                        (h.f_narrow(1, c, c)?, h.f_narrow(1, 0, c)?)
                    }
                };
                // log(sigmoid(raw + 2)), computed stably.
                Ok((shift, Some(raw.f_add_scalar(2.0)?.f_log_sigmoid()?)))
            }
        }
    }

    fn checkerboard(&self, x: &Tensor, parity: i64) -> Result<Tensor> {
        let s = x.size();
        if s.len() != 4 {
            bail!("checkerboard coupling: expected [B, C, H, W], got {s:?}");
        }
        let opts = (Kind::Int64, x.device());
        let i = Tensor::f_arange(s[2], opts)?.f_reshape([s[2], 1])?;
        let j = Tensor::f_arange(s[3], opts)?.f_reshape([1, s[3]])?;
        let m = i.f_add(&j)?.f_remainder(2)?.f_eq(parity)?;
        Ok(m.f_to_kind(x.kind())?.f_reshape([1, 1, s[2], s[3]])?)
    }

    fn split_channels(&self, x: &Tensor, flip: bool) -> Result<(Tensor, Tensor)> {
        let c1 = self.channels / 2;
        let (a, b) = (x.f_narrow(1, 0, c1)?, x.f_narrow(1, c1, self.channels - c1)?);
        Ok(if flip { (b, a) } else { (a, b) })
    }

    fn join_channels(&self, cond: &Tensor, tr: &Tensor, flip: bool) -> Result<Tensor> {
        Ok(if flip { Tensor::f_cat(&[tr, cond], 1)? } else { Tensor::f_cat(&[cond, tr], 1)? })
    }

    /// Applies the transform to `x` (`inverse = false`) or undoes it, with the forward log-det.
    fn run(&self, x: &Tensor, ctx: &Ctx, inverse: bool) -> Result<(Tensor, Tensor)> {
        super::check_channels("Coupling", x, self.channels)?;
        match self.mask {
            Mask::Channel { flip } => {
                let (cond, tr) = self.split_channels(x, flip)?;
                let h = self.net.forward(&cond, ctx)?;
                let (shift, log_s) = self.params(&h)?;
                let (out, ld) = transform(&tr, &shift, log_s.as_ref(), None, inverse)?;
                Ok((self.join_channels(&cond, &out, flip)?, ld))
            }
            Mask::Checkerboard { parity } => {
                let b = self.checkerboard(x, parity)?;
                let keep = b.f_neg()?.f_add_scalar(1.0)?;
                let h = self.net.forward(&x.f_mul(&b)?, ctx)?;
                let (shift, log_s) = self.params(&h)?;
                let (out, ld) = transform(x, &shift, log_s.as_ref(), Some(&keep), inverse)?;
                Ok((x.f_mul(&b)?.f_add(&out.f_mul(&keep)?)?, ld))
            }
        }
    }
}

/// `(x + shift)·s` or its inverse; `active` masks which positions are transformed.
fn transform(x: &Tensor, shift: &Tensor, log_s: Option<&Tensor>, active: Option<&Tensor>, inverse: bool) -> Result<(Tensor, Tensor)> {
    let out = match (log_s, inverse) {
        (None, false) => x.f_add(shift)?,
        (None, true) => x.f_sub(shift)?,
        (Some(ls), false) => x.f_add(shift)?.f_mul(&ls.f_exp()?)?,
        (Some(ls), true) => x.f_mul(&ls.f_neg()?.f_exp()?)?.f_sub(shift)?,
    };
    let ld = match log_s {
        None => super::zero_logdet(x)?,
        Some(ls) => match active {
            Some(m) => sum_per_sample(&ls.f_mul(m)?)?,
            None => sum_per_sample(ls)?,
        },
    };
    Ok((out, ld))
}

impl Flow for Coupling {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        self.run(x, ctx, false)
    }
    fn inverse(&self, y: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        let (x, ld) = self.run(y, ctx, true)?;
        Ok((x, ld.f_neg()?))
    }
}
