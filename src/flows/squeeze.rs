//! Space-to-channel squeeze, channel-major as PyTorch Glow implementations do it:
//! `out[4c + 2dy + dx, i, j] = x[c, 2i + dy, 2j + dx]` (not TF's `space_to_depth` order, so
//! imported weights line up channel for channel).
use super::{zero_logdet, Ctx, Flow};
use anyhow::{bail, Result};
use tch::Tensor;

#[derive(Default, Clone, Copy)]
pub struct Squeeze;

impl Flow for Squeeze {
    fn forward(&self, x: &Tensor, _ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        let s = x.size();
        if s.len() != 4 || s[2] % 2 != 0 || s[3] % 2 != 0 {
            bail!("Squeeze: expected [B, C, H, W] with even H and W, got {s:?}");
        }
        let (b, c, h, w) = (s[0], s[1], s[2], s[3]);
        let y = x
            .f_reshape([b, c, h / 2, 2, w / 2, 2])?
            .f_permute([0, 1, 3, 5, 2, 4])?
            .f_reshape([b, c * 4, h / 2, w / 2])?;
        Ok((y, zero_logdet(x)?))
    }

    fn inverse(&self, y: &Tensor, _ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        let s = y.size();
        if s.len() != 4 || s[1] % 4 != 0 {
            bail!("Squeeze inverse: expected [B, 4C, H, W], got {s:?}");
        }
        let (b, c, h, w) = (s[0], s[1], s[2], s[3]);
        let x = y
            .f_reshape([b, c / 4, 2, 2, h, w])?
            .f_permute([0, 1, 4, 2, 5, 3])?
            .f_reshape([b, c / 4, h * 2, w * 2])?;
        Ok((x, zero_logdet(y)?))
    }

    fn to_torchscript(&self, ts: &mut crate::script::ScriptBuilder) -> Result<crate::script::ScriptFlow> {
        use crate::script::ts_zero_logdet;
        let f = format!(
            "assert x.dim() == 4 and x.size(2) % 2 == 0 and x.size(3) % 2 == 0, \"Squeeze: expected [B, C, H, W] with even H and W, got \" + str(x.size())\n\
             b, c, h, w = x.size(0), x.size(1), x.size(2), x.size(3)\n\
             out = x.reshape([b, c, h // 2, 2, w // 2, 2]).permute([0, 1, 3, 5, 2, 4]).reshape([b, c * 4, h // 2, w // 2])\n\
             return out, {}",
            ts_zero_logdet("x")
        );
        let i = format!(
            "assert y.dim() == 4 and y.size(1) % 4 == 0, \"Squeeze inverse: expected [B, 4C, H, W], got \" + str(y.size())\n\
             b, c, h, w = y.size(0), y.size(1), y.size(2), y.size(3)\n\
             out = y.reshape([b, c // 4, 2, 2, h, w]).permute([0, 1, 4, 2, 5, 3]).reshape([b, c // 4, h * 2, w * 2])\n\
             return out, {}",
            ts_zero_logdet("y")
        );
        ts.add(crate::script::Layer::new("Squeeze").flow_methods(&f, &i))
    }
}
