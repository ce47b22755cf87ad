//! Multi-scale split (RealNVP / Glow): half of the channels leave the flow here, modelled by a
//! Gaussian whose mean and log-std a zero-initialised conv predicts from the half that stays.
//!
//! Written as a bijection: the leaving half `z2` becomes `eps2 = (z2 - mean(z1)) / std(z1)`,
//! which is standard normal under the prior (log-det `-Σ log std`), and the staying half goes
//! through `inner` (the rest of the model). Output: `[eps2.flatten(), inner(z1)]`, `[B, D]`.
use super::{check_channels, sum_per_sample, Ctx, Flow, ParamLayout, ZeroConv2d};
use anyhow::{bail, Context, Result};
use tch::{nn, Tensor};

pub struct SplitPrior {
    /// `[C, H, W]` of the input.
    pub shape: [i64; 3],
    pub prior: ZeroConv2d,
    /// How the prior conv's output divides into (mean, log-std).
    pub layout: ParamLayout,
    pub inner: Box<dyn Flow>,
}

impl SplitPrior {
    /// The prior conv lives under `p` (`p.conv.weight`, `p.conv.bias`, `p.logs`).
    pub fn new(p: nn::Path, shape: [i64; 3], inner: Box<dyn Flow>) -> Self {
        let c1 = shape[0] / 2;
        let c2 = shape[0] - c1;
        let prior = ZeroConv2d::new(p, c1, 2 * c2);
        SplitPrior { shape, prior, layout: ParamLayout::Interleaved, inner }
    }

    fn halves(&self) -> (i64, i64) {
        let c1 = self.shape[0] / 2;
        (c1, self.shape[0] - c1)
    }

    /// Number of values that leave the flow here, per sample.
    pub fn factored_dim(&self) -> i64 {
        self.halves().1 * self.shape[1] * self.shape[2]
    }

    /// `(mean, log_std)` of the leaving half given the staying half.
    pub fn mean_logs(&self, z1: &Tensor) -> Result<(Tensor, Tensor)> {
        let h = self.prior.forward(z1)?;
        Ok(match self.layout {
            ParamLayout::Interleaved => (h.f_slice(1, 0, None, 2)?, h.f_slice(1, 1, None, 2)?),
            ParamLayout::Contiguous => {
                let c = h.size()[1] / 2;
                (h.f_narrow(1, 0, c)?, h.f_narrow(1, c, c)?)
            }
        })
    }
}

impl Flow for SplitPrior {
    fn to_torchscript(&self, ts: &mut crate::script::ScriptBuilder) -> Result<crate::script::ScriptFlow> {
        use crate::script::{ts_check_channels, ts_sum_per_sample, Layer};
        let conv = self.prior.to_torchscript(ts)?;
        let (kind, mean_logs) = match self.layout {
            ParamLayout::Interleaved => ("SplitPrior", "mean = h[:, 0::2]\nlogs = h[:, 1::2]\n"),
            ParamLayout::Contiguous => ("SplitPriorContiguous", "hc = h.size(1) // 2\nmean = h.narrow(1, 0, hc)\nlogs = h.narrow(1, hc, hc)\n"),
        };
        let inner = self.inner.to_torchscript(ts).context("the inner flow of a SplitPrior")?;
        let [c, hh, ww] = self.shape;
        let (c1, c2) = self.halves();
        let f = format!(
            "{}z1 = x.narrow(1, 0, $c1)\n\
             z2 = x.narrow(1, $c1, $c2)\n\
             h = $conv.forward(z1)\n{mean_logs}\
             eps = (z2 - mean) * torch.exp(-logs)\n\
             rest, ld_inner = $inner.forward(z1, cond)\n\
             b = x.size(0)\n\
             return torch.cat([eps.reshape([b, -1]), rest], 1), ld_inner - {}",
            ts_check_channels("SplitPrior", "x"),
            ts_sum_per_sample("logs")
        );
        let i = format!(
            "assert y.dim() == 2 and y.size(1) > $n2, \"SplitPrior inverse: expected [B, D] with D > \" + str($n2) + \", got \" + str(y.size())\n\
             eps = y.narrow(1, 0, $n2).reshape([y.size(0), $c2, $height, $width])\n\
             z1, ld_inner = $inner.inverse(y.narrow(1, $n2, y.size(1) - $n2), cond)\n\
             h = $conv.forward(z1)\n{mean_logs}\
             z2 = eps * torch.exp(logs) + mean\n\
             return torch.cat([z1, z2], 1), ld_inner + {}",
            ts_sum_per_sample("logs")
        );
        let layer = Layer::new(kind)
            .int("channels", c)
            .int("c1", c1)
            .int("c2", c2)
            .int("height", hh)
            .int("width", ww)
            .int("n2", self.factored_dim())
            .child("conv", &conv)
            .child("inner", &inner);
        ts.add(layer.flow_methods(&f, &i))
    }

    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        check_channels("SplitPrior", x, self.shape[0])?;
        let (c1, c2) = self.halves();
        let (z1, z2) = (x.f_narrow(1, 0, c1)?, x.f_narrow(1, c1, c2)?);
        let (mean, logs) = self.mean_logs(&z1)?;
        let eps = z2.f_sub(&mean)?.f_mul(&logs.f_neg()?.f_exp()?)?;
        let (rest, ld_inner) = self.inner.forward(&z1, ctx)?;
        let b = x.size()[0];
        let y = Tensor::f_cat(&[eps.f_reshape([b, -1])?, rest], 1)?;
        Ok((y, ld_inner.f_sub(&sum_per_sample(&logs)?)?))
    }

    fn inverse(&self, y: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        let s = y.size();
        let n2 = self.factored_dim();
        if s.len() != 2 || s[1] <= n2 {
            bail!("SplitPrior inverse: expected [B, D] with D > {n2}, got {s:?}");
        }
        let (_, c2) = self.halves();
        let eps = y.f_narrow(1, 0, n2)?.f_reshape([s[0], c2, self.shape[1], self.shape[2]])?;
        let (z1, ld_inner) = self.inner.inverse(&y.f_narrow(1, n2, s[1] - n2)?, ctx)?;
        let (mean, logs) = self.mean_logs(&z1)?;
        let z2 = eps.f_mul(&logs.f_exp()?)?.f_add(&mean)?;
        Ok((Tensor::f_cat(&[z1, z2], 1)?, ld_inner.f_add(&sum_per_sample(&logs)?)?))
    }
}
