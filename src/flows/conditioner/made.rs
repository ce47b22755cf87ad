//! MADE (Germain, Gregor, Murray & Larochelle, 2015): an MLP whose weights are masked so that
//! the parameters of feature `i` depend only on the features before `i` in an ordering. It is
//! the conditioner of an autoregressive layer ([`crate::flows::Autoregressive`]), and its
//! ordering is that layer's structure.
//!
//! Degrees: input feature `order[k]` has degree `k + 1`; hidden units cycle over `1..D−1` (or
//! are drawn at random, at least the smallest degree of the layer below); a hidden unit sees the
//! units of the layer below with degree `<=` its own, an output of feature `i` the hidden units
//! with degree `<` its input degree (strict). Outputs are grouped per feature: feature `i`'s `P`
//! parameters are outputs `i·P .. (i+1)·P`, as [`super::super::ParamLayout::Interleaved`] affine
//! maps and the spline read them.
//!
//! A context (`context_dim > 0`) enters the first hidden layer through a learned projection that
//! every hidden unit sees, and hidden degrees then start at 0: units of degree 0 read only the
//! context, so the first feature's parameters depend on it too (nflows' MADE draws hidden degrees
//! from `1..D−1` only, so its first feature never sees the context).
//!
//! Residual blocks (the NSF paper's ResidualMADE): an initial masked layer, blocks
//! `h + W₂·act(W₁·act(h))` whose two layers keep the degrees (so random hidden degrees are not
//! allowed), the second initialised near zero, then `act` and the output layer.
//!
//! The masks, the ordering and the degrees they come from are saved with the weights as buffers
//! (`order`, `*.mask`, `*.degrees`), so a random ordering reloads as it was drawn. Hidden
//! degrees are kept in ascending order, so the sequential inverse can compute, for each
//! feature, only the prefix of every layer its parameters depend on
//! ([`Made::hidden_prefix`]). Parameter names:
//! plain `0.{weight,bias,mask}`, `2.*`, ... (as `nn.Sequential` with activations between);
//! residual `initial.*`, `blocks.{b}.{0,1}.*`, `final.*`; `context.weight`; `order`.
use super::{context, script_context, Activation, Conditioner};
use crate::flows::Ctx;
use crate::script::{Layer, ScriptBuilder, ScriptFlow};
use anyhow::{bail, Result};
use tch::{nn, Kind, Tensor};

/// The order in which features are generated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MadeOrder {
    /// `0, 1, ..., D−1`.
    Natural,
    /// `D−1, ..., 0`.
    Reversed,
    /// A permutation drawn from libtorch's generator (seed it before building).
    Random,
    /// This permutation of `0..D`.
    Given(Vec<i64>),
}

/// How hidden units get their degrees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HiddenDegrees {
    /// Cycling over `1..D−1` (`0..D−1` with a context).
    Cyclic,
    /// Drawn uniformly from libtorch's generator.
    Random,
}

#[derive(Clone, Debug)]
pub struct MadeOptions {
    /// D, the autoregressive features.
    pub features: i64,
    /// P, the parameters produced per feature.
    pub params_per_feature: i64,
    /// K, the context's size (0: none).
    pub context_dim: i64,
    /// Hidden units per layer.
    pub hidden: i64,
    /// Hidden layers (plain) or residual blocks.
    pub layers: i64,
    pub order: MadeOrder,
    pub degrees: HiddenDegrees,
    pub residual: bool,
    pub activation: Activation,
}

/// A linear layer whose weight is multiplied by a fixed 0/1 mask.
pub struct MaskedLinear {
    pub weight: Tensor,
    pub bias: Tensor,
    pub mask: Tensor,
    /// Buffer (int64): the degree of each output unit.
    pub degrees: Tensor,
}

impl MaskedLinear {
    /// Outputs of degrees `out` reading inputs of degrees `inp` (`>=`, or `>` when `strict`);
    /// `weight_init` for the weight, the bias uniform in ±1/√fan_in (as `nn.Linear`), or zero
    /// when `zero_bias`.
    fn new(p: nn::Path, out: &[i64], inp: &[i64], strict: bool, weight_init: nn::Init, zero_bias: bool) -> Self {
        let (o, i) = (out.len() as i64, inp.len() as i64);
        let bound = 1.0 / (i as f64).sqrt();
        let weight = p.var("weight", &[o, i], weight_init);
        let bias = if zero_bias { p.zeros("bias", &[o]) } else { p.var("bias", &[o], nn::Init::Uniform { lo: -bound, up: bound }) };
        let (dout, din) = (Tensor::from_slice(out).unsqueeze(1), Tensor::from_slice(inp).unsqueeze(0));
        let m = if strict { dout.gt_tensor(&din) } else { dout.ge_tensor(&din) };
        let mask = p.add("mask", m.to_kind(Kind::Float).to_device(p.device()), false);
        let degrees = p.add("degrees", Tensor::from_slice(out).to_device(p.device()), false);
        MaskedLinear { weight, bias, mask, degrees }
    }
}

pub struct Made {
    pub features: i64,
    pub params_per_feature: i64,
    pub context_dim: i64,
    /// Buffer `[D]` (int64): `order[k]` is the feature generated `k`-th.
    pub order: Tensor,
    /// Plain: input, hidden layers, output. Residual: initial, two per block, final.
    pub layers: Vec<MaskedLinear>,
    /// `[H, K]` context projection into the first hidden layer.
    pub context: Option<Tensor>,
    pub residual: bool,
    pub activation: Activation,
}

/// Degrees of a hidden layer of `h` units above a layer with degrees `below`, in ascending
/// order: the units a feature's parameters need (degree below its own) are then a prefix of
/// every layer, which the sequential inverse uses (ordering hidden units changes nothing else).
fn hidden_degrees(h: i64, d: i64, below: &[i64], with_context: bool, random: bool) -> Result<Vec<i64>> {
    let lo = if with_context { 0 } else { 1.min(d - 1) };
    if random {
        // At least the smallest degree below (a lower one would read nothing), as nflows does;
        // with a context, degree 0 (context-only units) is always possible.
        let low = if with_context { 0 } else { below.iter().copied().min().unwrap_or(1).min(d - 1) };
        let r = Tensor::f_randint_low(low, d.max(low + 1), [h], (Kind::Int64, tch::Device::Cpu))?;
        let mut v = Vec::<i64>::try_from(&r)?;
        v.sort_unstable();
        return Ok(v);
    }
    let span = if with_context { d } else { (d - 1).max(1) };
    let mut v: Vec<i64> = (0..h).map(|j| j % span + lo).collect();
    v.sort_unstable();
    Ok(v)
}

impl Made {
    pub fn new(p: nn::Path, o: &MadeOptions) -> Result<Self> {
        let (d, pp, k, h) = (o.features, o.params_per_feature, o.context_dim, o.hidden);
        if d < 1 || pp < 1 || k < 0 || h < 1 || o.layers < 1 {
            bail!("MADE: needs features, params_per_feature, hidden units and layers >= 1 and context_dim >= 0 (got {d}, {pp}, {h}, {}, {k})", o.layers);
        }
        if o.residual && o.degrees == HiddenDegrees::Random {
            bail!("MADE: residual blocks need equal degrees in and out of each block: random hidden degrees are not allowed with residual blocks");
        }
        let order: Vec<i64> = match &o.order {
            MadeOrder::Natural => (0..d).collect(),
            MadeOrder::Reversed => (0..d).rev().collect(),
            MadeOrder::Random => Vec::<i64>::try_from(&Tensor::f_randperm(d, (Kind::Int64, tch::Device::Cpu))?)?,
            MadeOrder::Given(v) => {
                let mut sorted = v.clone();
                sorted.sort_unstable();
                if sorted != (0..d).collect::<Vec<_>>() {
                    bail!("MADE: the given order {v:?} is not a permutation of 0..{d}");
                }
                v.clone()
            }
        };
        let mut deg_in = vec![0i64; d as usize];
        for (pos, &f) in order.iter().enumerate() {
            deg_in[f as usize] = pos as i64 + 1;
        }
        let random = o.degrees == HiddenDegrees::Random;
        let ctx = k > 0;
        let uniform = |fan_in: i64| {
            let b = 1.0 / (fan_in as f64).sqrt();
            nn::Init::Uniform { lo: -b, up: b }
        };
        let mut layers = vec![];
        let mut below = hidden_degrees(h, d, &deg_in, ctx, random)?;
        let first = if o.residual { &p / "initial" } else { &p / 0 };
        layers.push(MaskedLinear::new(first, &below, &deg_in, false, uniform(d), false));
        if o.residual {
            for b in 0..o.layers {
                let q = &p / "blocks" / b;
                layers.push(MaskedLinear::new(&q / 0, &below, &below, false, uniform(h), false));
                let near_zero = nn::Init::Uniform { lo: -1e-3, up: 1e-3 };
                let last = MaskedLinear::new(&q / 1, &below, &below, false, near_zero, false);
                let _ = tch::no_grad(|| last.bias.shallow_clone().uniform_(-1e-3, 1e-3));
                layers.push(last);
            }
        } else {
            for l in 1..o.layers {
                let deg = hidden_degrees(h, d, &below, ctx, random)?;
                layers.push(MaskedLinear::new(&p / (2 * l), &deg, &below, false, uniform(h), false));
                below = deg;
            }
        }
        let out_deg: Vec<i64> = deg_in.iter().flat_map(|&g| std::iter::repeat(g).take(pp as usize)).collect();
        let last = if o.residual { &p / "final" } else { &p / (2 * o.layers) };
        layers.push(MaskedLinear::new(last, &out_deg, &below, true, nn::Init::Const(0.0), true));
        let context = ctx.then(|| (&p / "context").var("weight", &[h, k], uniform(k)));
        let order = p.add("order", Tensor::from_slice(&order).to_device(p.device()), false);
        Ok(Made { features: d, params_per_feature: pp, context_dim: k, order, layers, context, residual: o.residual, activation: o.activation })
    }

    /// The ordering as read from the buffer (which loading weights may have replaced).
    pub fn order_vec(&self) -> Result<Vec<i64>> {
        Ok(Vec::<i64>::try_from(&self.order.f_to_device(tch::Device::Cpu)?)?)
    }

    /// Every layer's masked weight, computed once per call of the layer that uses them.
    pub fn masked_weights(&self) -> Result<Vec<Tensor>> {
        self.layers.iter().map(|l| Ok(l.weight.f_mul(&l.mask)?)).collect()
    }

    /// The last hidden layer's activations `[B, H]` (after the activation) for `x` `[B, D]`.
    pub fn hidden(&self, ws: &[Tensor], x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let s = x.size();
        if s.len() != 2 || s[1] != self.features {
            bail!("MADE: expected input [B, {}], got {s:?}", self.features);
        }
        ctx.count("made_passes", 1.0);
        let cond = context("MADE", ctx, self.context_dim, s[0])?;
        let mut h = x.f_linear(&ws[0], Some(&self.layers[0].bias))?;
        if let (Some(w), Some(c)) = (&self.context, cond) {
            h = h.f_add(&c.f_to_kind(x.kind())?.f_linear::<Tensor>(w, None)?)?;
        }
        let n = self.layers.len() - 1;
        if self.residual {
            for b in (1..n).step_by(2) {
                let r = self.activation.apply(&h)?.f_linear(&ws[b], Some(&self.layers[b].bias))?;
                let r = self.activation.apply(&r)?.f_linear(&ws[b + 1], Some(&self.layers[b + 1].bias))?;
                h = h.f_add(&r)?;
            }
            return self.activation.apply(&h);
        }
        h = self.activation.apply(&h)?;
        for l in 1..n {
            h = self.activation.apply(&h.f_linear(&ws[l], Some(&self.layers[l].bias))?)?;
        }
        Ok(h)
    }

    /// All parameters `[B, D·P]` from the last hidden layer.
    pub fn output(&self, ws: &[Tensor], hidden: &Tensor) -> Result<Tensor> {
        let last = self.layers.len() - 1;
        Ok(hidden.f_linear(&ws[last], Some(&self.layers[last].bias))?)
    }

    /// Feature `i`'s parameters `[B, P]` only (one output row block).
    pub fn output_of(&self, ws: &[Tensor], hidden: &Tensor, i: i64) -> Result<Tensor> {
        let last = self.layers.len() - 1;
        let p = self.params_per_feature;
        let w = ws[last].f_narrow(0, i * p, p)?;
        let b = self.layers[last].bias.f_narrow(0, i * p, p)?;
        Ok(hidden.f_linear(&w, Some(&b))?)
    }

    /// For the sequential inverse: `sizes[l][m]`, the number of units of hidden layer `l` with
    /// degree `<= m` (`m` in `0..=D`), read from the `degrees` buffers; `None` when a layer's
    /// degrees are not in ascending order (then prefixes are not the units needed).
    pub fn prefix_sizes(&self) -> Result<Option<Vec<Vec<i64>>>> {
        let mut sizes = vec![];
        for l in &self.layers[..self.layers.len() - 1] {
            let deg = Vec::<i64>::try_from(&l.degrees.f_to_device(tch::Device::Cpu)?)?;
            if deg.windows(2).any(|w| w[0] > w[1]) {
                return Ok(None);
            }
            sizes.push((0..=self.features).map(|m| deg.partition_point(|&g| g <= m) as i64).collect());
        }
        Ok(Some(sizes))
    }

    /// [`hidden`](Self::hidden) restricted to the units of degree `<= m` (`[B, sizes[last][m]]`):
    /// all that the parameters of the feature of degree `m + 1` read. The same values as the
    /// full pass, for a fraction of the work.
    pub fn hidden_prefix(&self, ws: &[Tensor], x: &Tensor, ctx: &Ctx, sizes: &[Vec<i64>], m: usize) -> Result<Tensor> {
        let s = x.size();
        ctx.count("made_passes", 1.0);
        let cond = context("MADE", ctx, self.context_dim, s[0])?;
        let rows = |l: usize, t: &Tensor| t.f_narrow(0, 0, sizes[l][m]);
        let n0 = sizes[0][m];
        let mut h = x.f_linear(&rows(0, &ws[0])?, Some(&rows(0, &self.layers[0].bias)?))?;
        if let (Some(w), Some(c)) = (&self.context, cond) {
            h = h.f_add(&c.f_to_kind(x.kind())?.f_linear::<Tensor>(&w.f_narrow(0, 0, n0)?, None)?)?;
        }
        let n = self.layers.len() - 1;
        let sq = |l: usize, below: i64| -> Result<Tensor> { Ok(rows(l, &ws[l])?.f_narrow(1, 0, below)?) };
        if self.residual {
            for b in (1..n).step_by(2) {
                let r = self.activation.apply(&h)?.f_linear(&sq(b, n0)?, Some(&rows(b, &self.layers[b].bias)?))?;
                let r = self.activation.apply(&r)?.f_linear(&sq(b + 1, n0)?, Some(&rows(b + 1, &self.layers[b + 1].bias)?))?;
                h = h.f_add(&r)?;
            }
            return self.activation.apply(&h);
        }
        h = self.activation.apply(&h)?;
        for l in 1..n {
            h = self.activation.apply(&h.f_linear(&sq(l, sizes[l - 1][m])?, Some(&rows(l, &self.layers[l].bias)?))?)?;
        }
        Ok(h)
    }

    /// Feature `i`'s parameters `[batch, P]` when they read no hidden unit: the output bias.
    pub fn output_bias_of(&self, i: i64, batch: i64) -> Result<Tensor> {
        let p = self.params_per_feature;
        let b = self.layers[self.layers.len() - 1].bias.f_narrow(0, i * p, p)?;
        Ok(b.f_unsqueeze(0)?.f_expand([batch, p], false)?)
    }

    /// Feature `i`'s parameters `[B, P]` from the units a prefix pass computed.
    pub fn output_of_prefix(&self, ws: &[Tensor], hidden: &Tensor, i: i64) -> Result<Tensor> {
        let last = self.layers.len() - 1;
        let p = self.params_per_feature;
        let w = ws[last].f_narrow(0, i * p, p)?.f_narrow(1, 0, hidden.size()[1])?;
        let b = self.layers[last].bias.f_narrow(0, i * p, p)?;
        Ok(hidden.f_linear(&w, Some(&b))?)
    }

    /// Describes the network for export ([`crate::script`]), as methods of one layer:
    /// `masked() -> List[Tensor]` ([`masked_weights`](Self::masked_weights)), `hidden(ws, x,
    /// cond)` ([`hidden`](Self::hidden)), `output(ws, hid)` ([`output`](Self::output)),
    /// `feature(k) -> [1]` (the feature generated `k`-th, as an index tensor),
    /// `output_of(ws, hid, k)` (that feature's `P` parameters, rows picked with `index_select`
    /// so that no index is read back to the host: torch.export traces it) and `forward(x, cond)`.
    pub fn describe(&self, ts: &mut ScriptBuilder) -> Result<ScriptFlow> {
        let d = self.features;
        let n = self.layers.len() - 1;
        let mut layer = Layer::new("Made").int("features", d).int("p", self.params_per_feature).tensor(ts, "order", &self.order)?;
        let mut weights = vec![];
        for (l, ml) in self.layers.iter().enumerate() {
            layer = layer.tensor(ts, &format!("w{l}"), &ml.weight)?.tensor(ts, &format!("m{l}"), &ml.mask)?.tensor(ts, &format!("b{l}"), &ml.bias)?;
            weights.push(format!("$w{l} * $m{l}"));
        }
        let mut body = "assert x.dim() == 2 and x.size(1) == $features, \"MADE: expected input [B, \" + str($features) + \"], got \" + str(x.size())\nh = torch.linear(x, ws[0], $b0)\n".to_string();
        if let Some(w) = &self.context {
            layer = layer.int("context_dim", self.context_dim).tensor(ts, "wc", w)?;
            body += &script_context("MADE", "x");
            body += "h = h + torch.linear(c.to(x.dtype), $wc)\n";
        }
        let act = |v: &str| self.activation.script(v);
        if self.residual {
            for b in (1..n).step_by(2) {
                body += &format!("r = torch.linear({}, ws[{b}], $b{b})\n", act("h"));
                body += &format!("r = torch.linear({}, ws[{}], $b{})\nh = h + r\n", act("r"), b + 1, b + 1);
            }
            body += &format!("return {}", act("h"));
        } else {
            body += &format!("h = {}\n", act("h"));
            for l in 1..n {
                body += &format!("h = {}\n", act(&format!("torch.linear(h, ws[{l}], $b{l})")));
            }
            body += "return h";
        }
        let ws = "ws: List[Tensor]";
        let layer = layer
            .method("masked", "", "List[Tensor]", &format!("return [{}]", weights.join(", ")))
            .method("hidden", &format!("{ws}, x: Tensor, cond: Optional[Tensor]"), "Tensor", &body)
            .method("output", &format!("{ws}, hid: Tensor"), "Tensor", &format!("return torch.linear(hid, ws[{n}], $b{n})"))
            .method("feature", "k: int", "Tensor", "return $order.narrow(0, k, 1)")
            .method(
                "output_of",
                &format!("{ws}, hid: Tensor, k: int"),
                "Tensor",
                &format!("rows = $order.narrow(0, k, 1) * $p + torch.arange($p, dtype=4, device=hid.device)\nreturn torch.linear(hid, ws[{n}].index_select(0, rows), $b{n}.index_select(0, rows))"),
            )
            .method("forward", "x: Tensor, cond: Optional[Tensor]", "Tensor", "ws = $self.masked()\nreturn $self.output(ws, $self.hidden(ws, x, cond))");
        ts.add(layer)
    }
}

impl Conditioner for Made {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let ws = self.masked_weights()?;
        let h = self.hidden(&ws, x, ctx)?;
        self.output(&ws, &h)
    }

    fn features(&self) -> (i64, i64) {
        (self.features, self.features * self.params_per_feature)
    }

    fn context_dim(&self) -> i64 {
        self.context_dim
    }

    fn to_torchscript(&self, ts: &mut ScriptBuilder) -> Result<ScriptFlow> {
        self.describe(ts)
    }
}
