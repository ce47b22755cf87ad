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
    /// Spatial checkerboard: positions with `(i + j) % 2 == parity` condition the others; on
    /// vectors, features with `i % 2 == parity` (alternating binary mask).
    Checkerboard { parity: i64 },
    /// Vectors: features with `i % 2 == parity` condition the others (RealNVP's alternating
    /// mask), gathered so the conditioner sees only them and writes only the parameters of the
    /// transformed features.
    Alternating { parity: i64 },
}

/// How a raw network output becomes the affine scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleFn {
    /// `sigmoid(raw + 2)` (Glow): bounded in (0, 1), 0.88 at zero.
    Sigmoid2,
    /// `exp(c · tanh(raw / c))` with c = 3: the identity at zero (a zero-initialised network
    /// starts as the identity map) and bounded in (e^-3, e^3).
    ExpTanh,
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

    /// Defines `forward` as a TorchScript method `(self, x: Tensor, cond: Optional[Tensor]) ->
    /// Tensor` of the module being exported (see [`crate::export`]) and returns its name.
    fn to_torchscript(&self, ts: &mut crate::export::ScriptBuilder) -> Result<String> {
        let _ = ts;
        Err(crate::export::not_exportable(&crate::export::short_type_name(std::any::type_name::<Self>())))
    }
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

    /// `relu(ActNorm(conv(x, w) + b))`. Once the ActNorm is initialised it is folded into the
    /// conv: `(conv(x, w) + b + shift)·s = conv(x, w·s, (b + shift)·s)` with `s` per output
    /// channel, one conv with a fused bias instead of a conv and two passes over the
    /// activations (and their backward); the ActNorm's log-det is not needed inside a network.
    fn hidden(x: &Tensor, w: &Tensor, b: &Option<Tensor>, norm: &Option<ActNorm>, pad: i64, ctx: &Ctx, lowp: Option<Kind>) -> Result<Tensor> {
        let h = match norm {
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
        };
        Ok(h.f_relu()?)
    }
}

impl Conditioner for ConvNet {
    /// TorchScript of `forward` in the model's own dtype (the low-precision switch of
    /// [`set_conditioner_kind`] is a benchmarking aid and is not exported).
    fn to_torchscript(&self, ts: &mut crate::export::ScriptBuilder) -> Result<String> {
        let mut body = String::new();
        let layers = [(&self.conv0, &self.bias0, &self.norm0, 1, "x"), (&self.conv2, &self.bias2, &self.norm2, 0, "h")];
        for (w, b, norm, pad, input) in layers {
            let b = match b {
                Some(b) => ts.tensor(b)?,
                None => "None".to_string(),
            };
            body += &format!("h = torch.conv2d({input}, {}, {b}, [1, 1], [{pad}, {pad}], [1, 1], 1)\n", ts.tensor(w)?);
            if let Some(n) = norm {
                let an = n.script(ts)?;
                body += &format!("h = {}[0]\n", an.call_forward("h", "cond"));
            }
            body += "h = torch.relu(h)\n";
        }
        let out = self.out.to_torchscript(ts)?;
        body += &format!("return self.{out}(h)");
        let stem = ts.stem("convnet", &[&self.conv0, &self.conv2, &self.out.weight]);
        ts.define_function(&stem, "net", "x: Tensor, cond: Optional[Tensor]", "Tensor", &body)
    }

    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let lowp = conditioner_kind();
        // CPU float: NHWC activations throughout the network (see `fastconv`).
        let x = if lowp.is_none() && super::fastconv::applies(x) { super::fastconv::to_channels_last(x)? } else { x.shallow_clone() };
        let h = Self::hidden(&x, &self.conv0, &self.bias0, &self.norm0, 1, ctx, lowp)?;
        let h = Self::hidden(&h, &self.conv2, &self.bias2, &self.norm2, 0, ctx, lowp)?;
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
}

thread_local! {
    static CONDITIONER_KIND: std::cell::Cell<Option<Kind>> = const { std::cell::Cell::new(None) };
}

/// Runs the convolutions of every [`ConvNet`] conditioner built or called on this thread in
/// `kind` (e.g. `Some(Kind::BFloat16)`), as `torch.autocast` would: conv inputs, weights and
/// biases are cast, the ActNorms and scales that follow stay in the parameters' float32 (type
/// promotion brings the activations back), and so do the flow's log-dets and priors.
/// `None` (the default) computes in the model's own dtype.
pub fn set_conditioner_kind(kind: Option<Kind>) {
    CONDITIONER_KIND.with(|c| c.set(kind));
}

/// The kind set by [`set_conditioner_kind`] on this thread.
pub fn conditioner_kind() -> Option<Kind> {
    CONDITIONER_KIND.with(|c| c.get())
}

/// A stride-1 conv with `pad` zero padding, in `lowp` when given (output in `lowp`).
fn conv2d_in(x: &Tensor, w: &Tensor, b: Option<&Tensor>, pad: i64, lowp: Option<Kind>) -> Result<Tensor> {
    match lowp {
        Some(k) if x.kind() != k || w.kind() != k => {
            let b = b.map(|b| b.f_to_kind(k)).transpose()?;
            Ok(x.f_to_kind(k)?.f_conv2d(&w.f_to_kind(k)?, b.as_ref(), [1, 1], [pad, pad], [1, 1], 1)?)
        }
        // CPU float: the formulation `fastconv` picks for the shape (same function).
        _ if pad == w.size()[2] / 2 => super::fastconv::conv2d_same(x, w, b),
        _ => Ok(x.f_conv2d(w, b, [1, 1], [pad, pad], [1, 1], 1)?),
    }
}

pub struct Coupling {
    pub kind: CouplingKind,
    pub scale_fn: ScaleFn,
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
            Mask::Alternating { parity } => {
                let n_cond = (channels - parity + 1) / 2;
                (n_cond, channels - n_cond)
            }
        };
        match kind {
            CouplingKind::Affine => (c_in, 2 * c_tr),
            CouplingKind::Additive => (c_in, c_tr),
        }
    }

    /// A coupling around any conditioner (sized by [`net_channels`](Self::net_channels)), with
    /// Glow's defaults: `sigmoid(raw + 2)` scale and interleaved (shift, scale) outputs.
    pub fn new(kind: CouplingKind, mask: Mask, channels: i64, net: Box<dyn Conditioner>) -> Self {
        Coupling { kind, scale_fn: ScaleFn::Sigmoid2, mask, layout: ParamLayout::Interleaved, channels, net }
    }

    /// A coupling with Glow's conv conditioner, under `p / "net"`.
    pub fn with_conv_net(p: nn::Path, kind: CouplingKind, mask: Mask, channels: i64, hidden: i64) -> Self {
        let (c_in, c_out) = Self::net_channels(kind, mask, channels);
        Self::new(kind, mask, channels, Box::new(ConvNet::new(&p / "net", c_in, hidden, c_out, true)))
    }

    /// [`with_conv_net`](Self::with_conv_net) with the conventions switchable (imported
    /// checkpoints): `hidden_actnorm = false` gives hidden convs with a bias and no ActNorm,
    /// `zero_pad` is the output zero-conv's padding value, `layout` splits its output.
    #[allow(clippy::too_many_arguments)]
    pub fn with_conv_net_opts(
        p: nn::Path,
        kind: CouplingKind,
        mask: Mask,
        channels: i64,
        hidden: i64,
        hidden_actnorm: bool,
        layout: ParamLayout,
        zero_pad: f64,
    ) -> Self {
        let (c_in, c_out) = Self::net_channels(kind, mask, channels);
        let mut net = ConvNet::new(&p / "net", c_in, hidden, c_out, hidden_actnorm);
        net.out.pad_value = zero_pad;
        Coupling { layout, ..Self::new(kind, mask, channels, Box::new(net)) }
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
                let log_s = match self.scale_fn {
                    // log(sigmoid(raw + 2)), computed stably.
                    ScaleFn::Sigmoid2 => raw.f_add_scalar(2.0)?.f_log_sigmoid()?,
                    ScaleFn::ExpTanh => raw.f_div_scalar(3.0)?.f_tanh()?.f_mul_scalar(3.0)?,
                };
                Ok((shift, Some(log_s)))
            }
        }
    }

    /// 1 where a position conditions: `(i + j) % 2 == parity` over space for images, `i % 2 ==
    /// parity` over features for vectors (RealNVP's alternating binary mask).
    fn checkerboard(&self, x: &Tensor, parity: i64) -> Result<Tensor> {
        let s = x.size();
        let opts = (Kind::Int64, x.device());
        let (m, shape) = match s.len() {
            4 => {
                let i = Tensor::f_arange(s[2], opts)?.f_reshape([s[2], 1])?;
                let j = Tensor::f_arange(s[3], opts)?.f_reshape([1, s[3]])?;
                (i.f_add(&j)?, vec![1, 1, s[2], s[3]])
            }
            2 => (Tensor::f_arange(s[1], opts)?, vec![1, s[1]]),
            _ => bail!("checkerboard coupling: expected [B, C, H, W] or [B, D], got {s:?}"),
        };
        let m = m.f_remainder(2)?.f_eq(parity)?;
        Ok(m.f_to_kind(x.kind())?.f_reshape(shape)?)
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
            Mask::Alternating { parity } => {
                if x.dim() != 2 {
                    bail!("alternating coupling: expected [B, D], got {:?}", x.size());
                }
                let cond = x.f_slice(1, parity, None, 2)?;
                let tr = x.f_slice(1, 1 - parity, None, 2)?;
                let h = self.net.forward(&cond, ctx)?;
                let (shift, log_s) = self.params(&h)?;
                let (out, ld) = transform(&tr, &shift, log_s.as_ref(), None, inverse)?;
                let tr_idx = Tensor::f_arange_start_step(1 - parity, self.channels, 2, (Kind::Int64, x.device()))?;
                Ok((x.f_index_copy(1, &tr_idx, &out)?, ld))
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
    fn to_torchscript(&self, ts: &mut crate::export::ScriptBuilder) -> Result<crate::export::ScriptFlow> {
        let net = self.net.to_torchscript(ts)?;
        // Name the methods after the net's (`_levels_0_steps_1_coupling_net_net` -> `..._coupling`).
        let stem = net.trim_start_matches('_').trim_end_matches("_net").trim_end_matches("_net").to_string();
        let stem = if stem.is_empty() { "coupling".to_string() } else { stem };
        let f = self.script_run(&net, "x", false);
        let i = self.script_run(&net, "y", true);
        ts.define_flow(&stem, &f, &i)
    }

    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        self.run(x, ctx, false)
    }
    fn inverse(&self, y: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        let (x, ld) = self.run(y, ctx, true)?;
        Ok((x, ld.f_neg()?))
    }
}

impl Coupling {
    /// TorchScript of [`Coupling::run`] on `input` (`x` or `y`), returning `(out, log-det)`
    /// with the log-det negated for the inverse, as [`Flow::inverse`] does.
    fn script_run(&self, net: &str, input: &str, inverse: bool) -> String {
        use crate::export::{ts_sum_per_sample, ts_zero_logdet};
        let c = self.channels;
        let mut params = match (self.kind, self.layout) {
            (CouplingKind::Additive, _) => "shift = h\n".to_string(),
            (CouplingKind::Affine, ParamLayout::Interleaved) => "shift = h[:, 0::2]\nraw = h[:, 1::2]\n".to_string(),
            (CouplingKind::Affine, ParamLayout::Contiguous) => {
                "hc = h.size(1) // 2\nshift = h.narrow(1, hc, hc)\nraw = h.narrow(1, 0, hc)\n".to_string()
            }
        };
        if self.kind == CouplingKind::Affine {
            params += match self.scale_fn {
                ScaleFn::Sigmoid2 => "ls = torch.log_sigmoid(raw + 2.0)\n",
                ScaleFn::ExpTanh => "ls = torch.tanh(raw / 3.0) * 3.0\n",
            };
        }
        // `transform`: the new values of the transformed part `t` and the forward log-det.
        let transform = |t: &str, active: Option<&str>| -> String {
            let out = match (self.kind, inverse) {
                (CouplingKind::Additive, false) => format!("out = {t} + shift\n"),
                (CouplingKind::Additive, true) => format!("out = {t} - shift\n"),
                (CouplingKind::Affine, false) => format!("out = ({t} + shift) * torch.exp(ls)\n"),
                (CouplingKind::Affine, true) => format!("out = {t} * torch.exp(-ls) - shift\n"),
            };
            let ld = match (self.kind, active) {
                (CouplingKind::Additive, _) => ts_zero_logdet(t),
                (CouplingKind::Affine, Some(m)) => ts_sum_per_sample(&format!("ls * {m}")),
                (CouplingKind::Affine, None) => ts_sum_per_sample("ls"),
            };
            format!("{out}ld = {ld}\n")
        };
        let neg = if inverse { "-" } else { "" };
        let mut s = format!(
            "assert {input}.dim() >= 2 and {input}.size(1) == {c}, \"Coupling: expected input with {c} channels (dim 1), got \" + str({input}.size())\n"
        );
        match self.mask {
            Mask::Channel { flip } => {
                let c1 = c / 2;
                s += &format!("a = {input}.narrow(1, 0, {c1})\nb = {input}.narrow(1, {c1}, {})\n", c - c1);
                let (keep, tr) = if flip { ("b", "a") } else { ("a", "b") };
                s += &format!("h = self.{net}({keep}, cond)\n{params}{}", transform(tr, None));
                let joined = if flip { format!("torch.cat([out, {keep}], 1)") } else { format!("torch.cat([{keep}, out], 1)") };
                s += &format!("return {joined}, {neg}ld");
            }
            Mask::Alternating { parity } => {
                let q = 1 - parity;
                s += &format!(
                    "assert {input}.dim() == 2, \"alternating coupling: expected [B, D], got \" + str({input}.size())\n\
                     a = {input}[:, {parity}::2]\n\
                     t = {input}[:, {q}::2]\n\
                     h = self.{net}(a, cond)\n{params}{}\
                     idx = torch.arange({q}, {c}, 2, dtype=4, device={input}.device)\n\
                     return {input}.index_copy(1, idx, out), {neg}ld",
                    transform("t", None)
                );
            }
            Mask::Checkerboard { parity } => {
                s += &format!(
                    "if {input}.dim() == 4:\n    \
                         hh = {input}.size(2)\n    \
                         ww = {input}.size(3)\n    \
                         ii = torch.arange(hh, dtype=4, device={input}.device).reshape([hh, 1])\n    \
                         jj = torch.arange(ww, dtype=4, device={input}.device).reshape([1, ww])\n    \
                         bm = torch.remainder(ii + jj, 2).eq({parity}).to({input}.dtype).reshape([1, 1, hh, ww])\n\
                     elif {input}.dim() == 2:\n    \
                         dd = {input}.size(1)\n    \
                         bm = torch.remainder(torch.arange(dd, dtype=4, device={input}.device), 2).eq({parity}).to({input}.dtype).reshape([1, dd])\n\
                     else:\n    \
                         assert False, \"checkerboard coupling: expected [B, C, H, W] or [B, D], got \" + str({input}.size())\n    \
                         bm = {input}\n\
                     keep = (-bm) + 1.0\n\
                     h = self.{net}({input} * bm, cond)\n{params}{}\
                     return {input} * bm + out * keep, {neg}ld",
                    transform(input, Some("keep"))
                );
            }
        }
        s
    }
}
