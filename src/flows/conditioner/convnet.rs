//! Glow's conditioner: 3×3 conv → ActNorm → ReLU → 1×1 conv → ActNorm → ReLU → zero-initialised
//! 3×3 conv with a learned log-scale. With `hidden_actnorm = false` the hidden convs carry a
//! bias instead of an ActNorm (rosinality). Parameter names follow the layer index: `0`, `2`,
//! `4`; a context enters through a learned projection (`context.weight`, `[hidden, K]`) added
//! to the first hidden layer, broadcast over space.
use super::{context, script_context, Conditioner};
use crate::flows::{actnorm::ActNormParam, fastconv, ActNorm, Ctx, Flow, ZeroConv2d};
use crate::script::{Layer, ScriptBuilder, ScriptFlow};
use anyhow::Result;
use tch::{nn, Kind, Tensor};

pub struct ConvNet {
    conv0: Tensor,
    bias0: Option<Tensor>,
    norm0: Option<ActNorm>,
    conv2: Tensor,
    bias2: Option<Tensor>,
    norm2: Option<ActNorm>,
    pub out: ZeroConv2d,
    /// `[hidden, K]` projection of the context, when conditional.
    pub context: Option<Tensor>,
}

impl ConvNet {
    pub fn new(p: nn::Path, c_in: i64, hidden: i64, c_out: i64, hidden_actnorm: bool) -> Self {
        Self::with_context(p, c_in, 0, hidden, c_out, hidden_actnorm)
    }

    /// A conv net that also reads a `context_dim` context (0: none).
    pub fn with_context(p: nn::Path, c_in: i64, context_dim: i64, hidden: i64, c_out: i64, hidden_actnorm: bool) -> Self {
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
        let context = (context_dim > 0).then(|| (&p / "context").var("weight", &[hidden, context_dim], init));
        ConvNet { conv0, bias0, norm0, conv2, bias2, norm2, out, context }
    }

    /// `ActNorm(conv(x, w) + b)`, before the ReLU. Once the ActNorm is initialised it is folded
    /// into the conv: `(conv(x, w) + b + shift)·s = conv(x, w·s, (b + shift)·s)` with `s` per
    /// output channel, one conv with a fused bias instead of a conv and two passes over the
    /// activations (and their backward); the ActNorm's log-det is not needed inside a network.
    fn hidden(x: &Tensor, w: &Tensor, b: &Option<Tensor>, norm: &Option<ActNorm>, pad: i64, ctx: &Ctx) -> Result<Tensor> {
        let lowp = ctx.compute_kind;
        Ok(match norm {
            Some(n) if !ctx.data_init || n.is_initialized() => {
                let c = w.size()[0];
                let s = match n.param {
                    ActNormParam::Log => n.scale.f_exp()?,
                    ActNormParam::Linear => n.scale.shallow_clone(),
                }
                .f_reshape([c])?;
                let shift = n.shift.f_reshape([c])?;
                let bias = match b {
                    Some(b) => b.f_add(&shift)?.f_mul(&s)?,
                    None => shift.f_mul(&s)?,
                };
                conv2d_in(x, &w.f_mul(&s.f_reshape([c, 1, 1, 1])?)?, Some(&bias), pad, lowp)?
            }
            Some(n) => n.forward(&conv2d_in(x, w, b.as_ref(), pad, lowp)?, ctx)?.0,
            None => conv2d_in(x, w, b.as_ref(), pad, lowp)?,
        })
    }
}

impl Conditioner for ConvNet {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let lowp = ctx.compute_kind;
        let cond = context("ConvNet", ctx, self.context.as_ref().map_or(0, |w| w.size()[1]), x.size()[0])?;
        // CPU float: NHWC activations throughout the network (see `fastconv`).
        let x = if lowp.is_none() && fastconv::applies(x) { fastconv::to_channels_last(x)? } else { x.shallow_clone() };
        let mut h = Self::hidden(&x, &self.conv0, &self.bias0, &self.norm0, 1, ctx)?;
        if let (Some(w), Some(c)) = (&self.context, cond) {
            let proj = c.f_to_kind(w.kind())?.f_linear::<Tensor>(w, None)?;
            h = h.f_add(&proj.f_reshape([c.size()[0], -1, 1, 1])?.f_to_kind(h.kind())?)?;
        }
        let h = h.f_relu()?;
        let h = Self::hidden(&h, &self.conv2, &self.bias2, &self.norm2, 0, ctx)?.f_relu()?;
        let o = &self.out;
        if o.pad_value != 0.0 {
            return o.forward(&h);
        }
        // `(conv(h, w) + b)·e` with `e = exp(factor·logs)` per output channel, folded into the
        // conv as `conv(h, w·e, b·e)`.
        let c = o.weight.size()[0];
        let e = o.logs.f_mul_scalar(o.logscale_factor)?.f_exp()?.f_reshape([c])?;
        let out = conv2d_in(&h, &o.weight.f_mul(&e.f_reshape([c, 1, 1, 1])?)?, Some(&o.bias.f_mul(&e)?), 1, lowp)?;
        // Low-precision conditioners hand the flow float32 (as autocast + `.float()` would).
        Ok(if lowp.is_some() { out.f_to_kind(x.kind())? } else { out })
    }

    fn features(&self) -> (i64, i64) {
        (self.conv0.size()[1], self.out.weight.size()[0])
    }

    fn context_dim(&self) -> i64 {
        self.context.as_ref().map_or(0, |w| w.size()[1])
    }

    /// TorchScript of `forward` in the model's own dtype (a low-precision `ctx.compute_kind` is
    /// a speed setting of the caller and is not exported).
    fn to_torchscript(&self, ts: &mut ScriptBuilder) -> Result<ScriptFlow> {
        let mut layer = Layer::new("ConvNet");
        let mut body = String::new();
        let layers = [(&self.conv0, &self.bias0, &self.norm0, 1, "x"), (&self.conv2, &self.bias2, &self.norm2, 0, "h")];
        for (i, (w, b, norm, pad, input)) in layers.into_iter().enumerate() {
            let k = 2 * i;
            layer = layer.tensor(ts, &format!("w{k}"), w)?;
            let b = match b {
                Some(b) => {
                    layer = layer.tensor(ts, &format!("b{k}"), b)?;
                    format!("$b{k}")
                }
                None => "None".to_string(),
            };
            body += &format!("h = torch.conv2d({input}, $w{k}, {b}, [1, 1], [{pad}, {pad}], [1, 1], 1)\n");
            if let Some(n) = norm {
                layer = layer.child(&format!("norm{k}"), &n.script(ts)?);
                body += &format!("h = $norm{k}.forward(h, cond)[0]\n");
            }
            if let (0, Some(cw)) = (i, &self.context) {
                layer = layer.tensor(ts, "context", cw)?.int("context_dim", cw.size()[1]);
                body += &script_context("ConvNet", "x");
                body += "h = h + torch.linear(c.to(h.dtype), $context).reshape([c.size(0), -1, 1, 1])\n";
            }
            body += "h = torch.relu(h)\n";
        }
        layer = layer.child("out", &self.out.to_torchscript(ts)?);
        body += "return $out.forward(h)";
        ts.add(layer.method("forward", "x: Tensor, cond: Optional[Tensor]", "Tensor", &body))
    }
}

/// A stride-1 conv with `pad` zero padding, in `lowp` when given (output in `lowp`).
fn conv2d_in(x: &Tensor, w: &Tensor, b: Option<&Tensor>, pad: i64, lowp: Option<Kind>) -> Result<Tensor> {
    match lowp {
        Some(k) if x.kind() != k || w.kind() != k => {
            let b = b.map(|b| b.f_to_kind(k)).transpose()?;
            Ok(x.f_to_kind(k)?.f_conv2d(&w.f_to_kind(k)?, b.as_ref(), [1, 1], [pad, pad], [1, 1], 1)?)
        }
        // CPU float: the formulation `fastconv` picks for the shape (same function).
        _ if pad == w.size()[2] / 2 => fastconv::conv2d_same(x, w, b),
        _ => Ok(x.f_conv2d(w, b, [1, 1], [pad, pad], [1, 1], 1)?),
    }
}
