//! The learned prior of the top latent (Glow's `learn_top`, optionally class-conditional), a
//! [`Base`] over the model's flat latent: the last `C·H·W` entries (the top latent, row-major)
//! are `N(mean, std²)`, written as the bijection `eps = (z - mean) / std` onto standard-normal
//! noise; the leading `offset` entries (the halves factored out earlier by [`SplitPrior`]s,
//! already standardised there) are standard normal.
//!
//! [`SplitPrior`]: super::SplitPrior
//!
//! `mean, log_std` come from a zero-initialised conv applied to a zero tensor (so they are
//! learned per position, constant over space with zero padding), plus, when conditional, a
//! zero-initialised linear map of the one-hot class.
use super::{sum_per_sample, Base, Ctx, ZeroConv2d};
use crate::script::{ts_sum_per_sample, Layer, ScriptBuilder, ScriptFlow};
use anyhow::{bail, Result};
use tch::{nn, Tensor};

pub struct LearnedPrior {
    /// `[C, H, W]` of the top latent.
    pub shape: [i64; 3],
    /// Flat latent entries before the top latent (standard normal).
    pub offset: i64,
    /// Present when `learn_top`: `ZeroConv2d(2C -> 2C)` on zeros (`C -> 2C` for rosinality,
    /// see [`with_conv_input`](Self::with_conv_input)).
    pub conv: Option<ZeroConv2d>,
    /// Present when class-conditional: `(weight [2C, n_classes], bias [2C], logs [2C])`.
    pub class_linear: Option<(Tensor, Tensor, Tensor)>,
}

impl LearnedPrior {
    /// The prior of a top latent of `shape` that follows `offset` entries of the flat latent.
    pub fn new(p: nn::Path, shape: [i64; 3], offset: i64, learn_top: bool, n_classes: Option<i64>) -> Self {
        let c2 = 2 * shape[0];
        let conv = learn_top.then(|| ZeroConv2d::new(&p / "learn_top", c2, c2));
        let class_linear = n_classes.map(|k| {
            let q = &p / "class_prior";
            (q.zeros("weight", &[c2, k]), q.zeros("bias", &[c2]), q.zeros("logs", &[c2]))
        });
        LearnedPrior { shape, offset, conv, class_linear }
    }

    /// Like [`new`](Self::new), with the top conv reading `in_channels` channels of zeros and
    /// padding its border with `pad_value`: rosinality's top prior is `ZeroConv2d(C -> 2C)` on
    /// zeros padded with ones (not spatially constant), where OpenAI / y0ast use `2C -> 2C`
    /// with zero padding.
    pub fn with_conv_input(
        p: nn::Path,
        shape: [i64; 3],
        offset: i64,
        learn_top: bool,
        n_classes: Option<i64>,
        in_channels: i64,
        pad_value: f64,
    ) -> Self {
        let c2 = 2 * shape[0];
        let conv = learn_top.then(|| {
            let mut conv = ZeroConv2d::new(&p / "learn_top", in_channels, c2);
            conv.pad_value = pad_value;
            conv
        });
        let mut prior = LearnedPrior::new(p, shape, offset, false, n_classes);
        prior.conv = conv;
        prior
    }

    /// `(mean, log_std)`, each `[B or 1, C, H, W]`.
    pub fn mean_logs(&self, batch: i64, like: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        let [c, h, w] = self.shape;
        let opts = (like.kind(), like.device());
        let mut p = match &self.conv {
            Some(conv) => conv.forward(&Tensor::f_zeros([1, conv.weight.size()[1], h, w], opts)?)?,
            None => Tensor::f_zeros([1, 2 * c, h, w], opts)?,
        };
        if let Some((weight, bias, logs)) = &self.class_linear {
            let Some(y) = ctx.cond else {
                bail!("LearnedPrior: this model is class-conditional; pass one-hot labels [B, {}]", weight.size()[1]);
            };
            if y.size() != [batch, weight.size()[1]] {
                bail!("LearnedPrior: expected labels [{batch}, {}], got {:?}", weight.size()[1], y.size());
            }
            let cls = y.f_to_kind(like.kind())?.f_linear(weight, Some(bias))?.f_mul(&logs.f_mul_scalar(3.0)?.f_exp()?)?;
            p = p.f_add(&cls.f_reshape([batch, 2 * c, 1, 1])?)?;
        }
        Ok((p.f_narrow(1, 0, c)?, p.f_narrow(1, c, c)?))
    }
}

impl LearnedPrior {
    fn top_dim(&self) -> i64 {
        self.shape.iter().product()
    }

    fn check(&self, z: &Tensor) -> Result<()> {
        let d = self.offset + self.top_dim();
        if z.dim() != 2 || z.size()[1] != d {
            bail!("LearnedPrior: expected flat latents [B, {d}], got {:?}", z.size());
        }
        Ok(())
    }

    /// `z`'s top latent `[B, C, H, W]` mapped by `f`, put back after the leading entries.
    fn map_top(&self, z: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let b = z.size()[0];
        let [c, h, w] = self.shape;
        let top = z.f_narrow(1, self.offset, self.top_dim())?.f_reshape([b, c, h, w])?;
        let out = f(&top)?.f_reshape([b, -1])?;
        if self.offset == 0 {
            return Ok(out);
        }
        Ok(Tensor::f_cat(&[z.f_narrow(1, 0, self.offset)?, out], 1)?)
    }
}

impl Base for LearnedPrior {
    fn to_noise(&self, z: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        self.check(z)?;
        let b = z.size()[0];
        let (mean, logs) = self.mean_logs(b, z, ctx)?;
        let eps = self.map_top(z, |t| Ok(t.f_sub(&mean)?.f_mul(&logs.f_neg()?.f_exp()?)?))?;
        let [c, h, w] = self.shape;
        let ld = sum_per_sample(&logs.f_expand([b, c, h, w], false)?)?.f_neg()?;
        Ok((eps, ld))
    }

    fn from_noise(&self, eps: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        self.check(eps)?;
        let b = eps.size()[0];
        let (mean, logs) = self.mean_logs(b, eps, ctx)?;
        let z = self.map_top(eps, |t| Ok(t.f_mul(&logs.f_exp()?)?.f_add(&mean)?))?;
        let [c, h, w] = self.shape;
        Ok((z, sum_per_sample(&logs.f_expand([b, c, h, w], false)?)?))
    }

    fn to_torchscript(&self, ts: &mut ScriptBuilder) -> Result<ScriptFlow> {
        let [c, h, w] = self.shape;
        let mut layer = Layer::new("LearnedPrior");
        // `mean_logs(batch, like, ctx)`.
        let mut body = match &self.conv {
            Some(conv) => {
                layer = layer.child("conv", &conv.to_torchscript(ts)?).int("conv_in", conv.weight.size()[1]);
                "p = $conv.forward(torch.zeros([1, $conv_in, $height, $width], dtype=like.dtype, device=like.device))\n".to_string()
            }
            None => "p = torch.zeros([1, 2 * $channels, $height, $width], dtype=like.dtype, device=like.device)\n".to_string(),
        };
        if let Some((weight, bias, logs)) = &self.class_linear {
            layer = layer.tensor(ts, "class_weight", weight)?.tensor(ts, "class_bias", bias)?.tensor(ts, "class_logs", logs)?.int("n_classes", weight.size()[1]);
            body += "assert cond is not None, \"LearnedPrior: this model is class-conditional; pass one-hot labels [B, \" + str($n_classes) + \"]\"\n\
                 y = cond\n\
                 b = like.size(0)\n\
                 assert y.dim() == 2 and y.size(0) == b and y.size(1) == $n_classes, \"LearnedPrior: expected labels [\" + str(b) + \", \" + str($n_classes) + \"], got \" + str(y.size())\n\
                 cls = torch.linear(y.to(like.dtype), $class_weight, $class_bias) * torch.exp($class_logs * 3.0)\n\
                 p = p + cls.reshape([b, 2 * $channels, 1, 1])\n";
        }
        body += "return p.narrow(1, 0, $channels), p.narrow(1, $channels, $channels)";
        let check = |t: &str| format!("assert {t}.dim() == 2 and {t}.size(1) == $offset + $top_dim, \"LearnedPrior: expected flat latents [B, \" + str($offset + $top_dim) + \"], got \" + str({t}.size())\n");
        // `map_top`: the top latent reshaped, mapped, flattened and put back.
        let map = |t: &str, expr: &str| {
            let top = format!("top = {t}.narrow(1, $offset, $top_dim).reshape([{t}.size(0), $channels, $height, $width])\nout = ({expr}).reshape([{t}.size(0), -1])\n");
            if self.offset == 0 {
                top
            } else {
                format!("{top}out = torch.cat([{t}.narrow(1, 0, $offset), out], 1)\n")
            }
        };
        let ld = |t: &str| ts_sum_per_sample(&format!("logs.expand([{t}.size(0), $channels, $height, $width])"));
        let f = format!("{}mean, logs = $self.mean_logs(x, cond)\n{}return out, -{}", check("x"), map("x", "(top - mean) * torch.exp(-logs)"), ld("x"));
        let i = format!("{}mean, logs = $self.mean_logs(y, cond)\n{}return out, {}", check("y"), map("y", "top * torch.exp(logs) + mean"), ld("y"));
        let layer = layer
            .int("channels", c)
            .int("height", h)
            .int("width", w)
            .int("offset", self.offset)
            .int("top_dim", self.top_dim())
            .method("mean_logs", "like: Tensor, cond: Optional[Tensor]", "Tuple[Tensor, Tensor]", &body);
        ts.add(layer.flow_methods(&f, &i))
    }
}
