//! Zero-initialised 3×3 conv with a learned per-channel log-scale (Glow's `Conv2dZeros`):
//! `out = (conv(x) + bias) · exp(logscale_factor · logs)`. Starting at zero makes every
//! coupling and prior start as the identity / a standard normal.
use anyhow::Result;
use tch::{nn, Tensor};

pub struct ZeroConv2d {
    pub weight: Tensor,
    pub bias: Tensor,
    /// `[C_out, 1, 1]`.
    pub logs: Tensor,
    pub logscale_factor: f64,
    /// Value the border is padded with: 0 (OpenAI, y0ast) or 1 (rosinality).
    pub pad_value: f64,
}

impl ZeroConv2d {
    /// Parameters named `conv.weight`, `conv.bias`, `logs` under `p`.
    pub fn new(p: nn::Path, c_in: i64, c_out: i64) -> Self {
        let conv = &p / "conv";
        ZeroConv2d {
            weight: conv.zeros("weight", &[c_out, c_in, 3, 3]),
            bias: conv.zeros("bias", &[c_out]),
            logs: p.zeros("logs", &[c_out, 1, 1]),
            logscale_factor: 3.0,
            pad_value: 0.0,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = if self.pad_value == 0.0 {
            x.f_conv2d(&self.weight, Some(&self.bias), [1, 1], [1, 1], [1, 1], 1)?
        } else {
            // Pad with zeros, then lift the border (where `inside` is 0) to `pad_value`.
            let inside = x.f_ones_like()?.f_constant_pad_nd([1, 1, 1, 1])?;
            let border = inside.f_neg()?.f_add_scalar(1.0)?.f_mul_scalar(self.pad_value)?;
            let xp = x.f_constant_pad_nd([1, 1, 1, 1])?.f_add(&border)?;
            xp.f_conv2d(&self.weight, Some(&self.bias), [1, 1], [0, 0], [1, 1], 1)?
        };
        Ok(h.f_mul(&self.logs.f_mul_scalar(self.logscale_factor)?.f_exp()?)?)
    }
}

impl ZeroConv2d {
    /// Describes `forward` as a method `forward(self, x: Tensor) -> Tensor` (see
    /// [`crate::script`]).
    pub fn to_torchscript(&self, ts: &mut crate::script::ScriptBuilder) -> Result<crate::script::ScriptFlow> {
        let (kind, conv) = if self.pad_value == 0.0 {
            ("ZeroConv2d", "h = torch.conv2d(x, $weight, $bias, [1, 1], [1, 1], [1, 1], 1)")
        } else {
            (
                "ZeroConv2dPadded",
                "inside = torch.constant_pad_nd(torch.ones_like(x), [1, 1, 1, 1])\n\
                 border = ((-inside) + 1.0) * $pad_value\n\
                 xp = torch.constant_pad_nd(x, [1, 1, 1, 1]) + border\n\
                 h = torch.conv2d(xp, $weight, $bias, [1, 1], [0, 0], [1, 1], 1)",
            )
        };
        let mut layer = crate::script::Layer::new(kind)
            .tensor(ts, "weight", &self.weight)?
            .tensor(ts, "bias", &self.bias)?
            .tensor(ts, "logs", &self.logs)?
            .float("logscale_factor", self.logscale_factor);
        if self.pad_value != 0.0 {
            layer = layer.float("pad_value", self.pad_value);
        }
        ts.add(layer.method("forward", "x: Tensor", "Tensor", &format!("{conv}\nreturn h * torch.exp($logs * $logscale_factor)")))
    }
}
