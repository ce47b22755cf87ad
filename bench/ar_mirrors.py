"""The autoregressive and spline flows of a flowzoo run, rebuilt with zuko and with nflows (used
by bench/bench_ar.py).

`spec_of(cfg, weights)` reads the architecture from a flowzoo run (its config.toml and
weights.safetensors: MADE masks and orders, permutations, standardisation) and `build(impl,
spec)` returns a `Mirror`: the same model written with the library's own classes. Where a library
lacks flowzoo's exact piece, a small subclass supplies flowzoo's maths and nothing else:

* the affine map y = (x + shift) * exp(3 tanh(raw / 3)) with (shift, raw) per feature
  (zuko: a `Transform`; nflows: `MaskedAffineAutoregressiveTransform` with its elementwise maps
  overridden). zuko's own is exp(soft-clamped a) x + b, nflows' (softplus(a) + 1e-3) x + b;
* the spline's parameterisation: softmax bins floored at 1e-3, interior derivatives
  1e-3 + softplus(raw + c) with c = log(e^(1 - 1e-3) - 1), end derivatives 1 (zuko: its
  `MonotonicRQSTransform` with flowzoo's knots; nflows: its own spline function, given raw + c
  and without its division of the bin logits by sqrt(hidden features));
* the standardisation (zuko: a fixed affine `Transform`).

The networks are the libraries' own (zuko's `MaskedMLP` / `MLP`, nflows' `MADE` / `MLP`) with
flowzoo's masks copied in and flowzoo's initialisation (hidden layers U(+-1/sqrt(fan_in)), a
zero output layer). The architecture check loads a trained flowzoo run into the mirror and
compares log-likelihoods (bench_ar.py).
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MIN = 1e-3
OFFSET = math.log(math.expm1(1.0 - MIN))


def spec_of(cfg, weights, dim):
    """What a mirror needs from a flowzoo run: one entry per layer, in flow order."""
    m = cfg["model"]
    kind = m["kind"]
    coupling = kind == "nsf" and m.get("structure", "autoregressive") == "coupling"
    for key, want in (("norm", "none"), ("base", "normal"), ("residual", False), ("activation", "relu")):
        if m.get(key, want) != want:
            raise SystemExit(f"bench_ar: model.{key} = {m.get(key)!r} is not mirrored (use {want!r})")
    layers = []
    for b in range(m["blocks"]):
        p = f"blocks.{b}."
        if coupling:
            idx = np.arange(dim)
            # flowzoo's vector_mask with alternating masks: features with i % 2 == parity
            # condition; a reversal between layers keeps the parity fixed for even D.
            reversal_swaps = m.get("permutation") == "reverse" and dim % 2 == 0
            parity = 0 if reversal_swaps else b % 2
            if m.get("mask", "alternating") != "alternating":
                raise SystemExit("bench_ar: NSF-C is mirrored with model.mask = \"alternating\" only")
            layers.append({"type": "coupling", "cond": torch.as_tensor(idx % 2 == parity), "prefix": p + "coupling.net."})
        else:
            masks = [weights[f"{p}made.{2 * i}.mask"].bool() for i in range(m["depth"] + 1)]
            layers.append({"type": "made", "order": weights[p + "made.order"].long(), "masks": masks, "prefix": p + "made."})
        if p + "permutation.perm" in weights:
            layers.append({"type": "perm", "perm": weights[p + "permutation.perm"].long()})
        elif any(k.startswith(p + "permutation.") for k in weights):
            raise SystemExit(f"bench_ar: block {b}: only fixed permutations are mirrored")
    spline = kind == "nsf"
    return {
        "dim": dim, "width": m["width"], "depth": m["depth"], "spline": spline, "bins": m.get("bins", 8),
        "bound": float(m.get("tail_bound", 3.0)), "iaf": kind == "iaf", "layers": layers,
        "mean": weights["standardize.mean"].double(), "std": weights["standardize.std"].double(),
        "params": 3 * m.get("bins", 8) - 1 if spline else 2,
    }


def flowzoo_init(linears):
    """flowzoo's MADE / MLP initialisation: hidden U(+-1/sqrt(fan_in)), the last layer zero."""
    with torch.no_grad():
        for i, lin in enumerate(linears):
            if i + 1 < len(linears):
                b = 1.0 / math.sqrt(lin.weight.shape[1])
                nn.init.uniform_(lin.weight, -b, b)
                nn.init.uniform_(lin.bias, -b, b)
            else:
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)


def fz_affine(p):
    """(shift, log scale) from a feature's two raw parameters, as flowzoo's exp-tanh affine."""
    return p[..., 0], torch.tanh(p[..., 1] / 3.0) * 3.0


def fz_knots(u, bins, bound):
    sz = torch.softmax(u, -1) * (1.0 - MIN * bins) + MIN
    inner = torch.cumsum(sz, -1)[..., : bins - 1]
    return F.pad(F.pad(inner, (1, 0), value=0.0), (0, 1), value=1.0) * (2 * bound) - bound


class Mirror:
    """A peer model: `log_prob(x)`, `sample(n)`, its trainable parameters, the linear layers of
    each network (flow order) and a `load(weights)` of a flowzoo run's trained weights."""

    def __init__(self, module, log_prob, sample, nets):
        self.module, self.log_prob, self.sample, self.nets = module, log_prob, sample, nets

    def parameters(self):
        return [p for p in self.module.parameters() if p.requires_grad]

    def load(self, weights, spec):
        made_layers = [l for l in spec["layers"] if l["type"] != "perm"]
        with torch.no_grad():
            for layer, lins in zip(made_layers, self.nets):
                for i, lin in enumerate(lins):
                    lin.weight.copy_(weights[f"{layer['prefix']}{2 * i}.weight"])
                    lin.bias.copy_(weights[f"{layer['prefix']}{2 * i}.bias"])


def build(impl, spec):
    torch_layers = build_zuko(spec) if impl == "zuko" else build_nflows(spec)
    for lins in torch_layers.nets:
        flowzoo_init(lins)
    return torch_layers


# ------------------------------------------------------------------------------------------
# zuko
# ------------------------------------------------------------------------------------------


def build_zuko(spec):
    from torch.distributions import Transform, constraints
    import zuko.nn as zuko_nn
    from zuko.distributions import DiagNormal
    from zuko.flows import GeneralCouplingTransform, MaskedAutoregressiveTransform
    from zuko.lazy import Flow, LazyInverse, UnconditionalDistribution, UnconditionalTransform
    from zuko.transforms import MonotonicRQSTransform, PermutationTransform

    class FzAffine(Transform):
        domain = codomain = constraints.real
        bijective = True
        sign = +1

        def __init__(self, shift, raw, **kwargs):
            super().__init__(**kwargs)
            self.shift, self.log_scale = shift, torch.tanh(raw / 3.0) * 3.0

        def _call(self, x):
            return (x + self.shift) * torch.exp(self.log_scale)

        def _inverse(self, y):
            return y * torch.exp(-self.log_scale) - self.shift

        def log_abs_det_jacobian(self, x, y):
            return self.log_scale.expand(x.shape)

    class FzSpline(MonotonicRQSTransform):
        def __init__(self, widths, heights, derivatives, **kwargs):
            Transform.__init__(self)
            k = widths.shape[-1]
            self.horizontal = fz_knots(widths, k, spec["bound"])
            self.vertical = fz_knots(heights, k, spec["bound"])
            self.derivatives = F.pad(F.softplus(derivatives + OFFSET) + MIN, (1, 1), value=1.0)

    class Standardize(Transform):
        domain = codomain = constraints.real
        bijective = True
        sign = +1

        def __init__(self, shift, scale, **kwargs):
            super().__init__(**kwargs)
            self.shift, self.scale = shift, scale

        def _call(self, x):
            return x * self.scale + self.shift

        def _inverse(self, y):
            return (y - self.shift) / self.scale

        def log_abs_det_jacobian(self, x, y):
            return torch.log(self.scale).expand(x.shape)

    d, k = spec["dim"], spec["bins"]
    hidden = [spec["width"]] * spec["depth"]
    if spec["spline"]:
        univariate, shapes = FzSpline, ((k,), (k,), (k - 1,))
    else:
        univariate, shapes = FzAffine, ((), ())
    mean, std = spec["mean"].float(), spec["std"].float()
    transforms = [UnconditionalTransform(Standardize, -mean / std, 1.0 / std, buffer=True)]
    nets = []
    for layer in spec["layers"]:
        if layer["type"] == "perm":
            transforms.append(UnconditionalTransform(PermutationTransform, layer["perm"], buffer=True))
            continue
        if layer["type"] == "coupling":
            t = GeneralCouplingTransform(d, mask=layer["cond"], univariate=univariate, shapes=shapes,
                                         hidden_features=hidden, activation=nn.ReLU)
            nets.append([m for m in t.hyper if isinstance(m, (nn.Linear, zuko_nn.Linear))])
        else:
            t = MaskedAutoregressiveTransform(d, order=layer["order"], univariate=univariate, shapes=shapes,
                                              hidden_features=hidden, activation=nn.ReLU)
            lins = [m for m in t.hyper if isinstance(m, (nn.Linear, zuko_nn.Linear))]
            for lin, mask in zip(lins, layer["masks"]):
                assert lin.mask.shape == mask.shape, (lin.mask.shape, mask.shape)
                lin.mask = mask.clone()  # flowzoo's exact masks
            nets.append(lins)
        transforms.append(LazyInverse(t) if spec["iaf"] else t)
    base = UnconditionalDistribution(DiagNormal, torch.zeros(d), torch.ones(d), buffer=True)
    flow = Flow(transforms, base)
    return Mirror(flow, lambda x: flow().log_prob(x), lambda n: flow().sample((n,)), nets)


# ------------------------------------------------------------------------------------------
# nflows
# ------------------------------------------------------------------------------------------


def build_nflows(spec):
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.nn.nets import MLP
    from nflows.transforms.autoregressive import (MaskedAffineAutoregressiveTransform,
                                                  MaskedPiecewiseRationalQuadraticAutoregressiveTransform)
    from nflows.transforms.base import CompositeTransform, InverseTransform
    from nflows.transforms.coupling import PiecewiseRationalQuadraticCouplingTransform
    from nflows.transforms.permutations import Permutation
    from nflows.transforms.splines.rational_quadratic import unconstrained_rational_quadratic_spline
    from nflows.transforms.standard import PointwiseAffineTransform

    bound, k = spec["bound"], spec["bins"]

    def spline(inputs, params, inverse):
        out, ld = unconstrained_rational_quadratic_spline(
            inputs, params[..., :k], params[..., k:2 * k], params[..., 2 * k:] + OFFSET, inverse=inverse,
            tails="linear", tail_bound=bound, min_bin_width=MIN, min_bin_height=MIN, min_derivative=MIN)
        return out, ld.reshape(ld.shape[0], -1).sum(1)

    class FzAffineAR(MaskedAffineAutoregressiveTransform):
        def _elementwise_forward(self, inputs, params):
            shift, ls = fz_affine(params.view(-1, self.features, 2))
            return (inputs + shift) * torch.exp(ls), ls.sum(1)

        def _elementwise_inverse(self, inputs, params):
            shift, ls = fz_affine(params.view(-1, self.features, 2))
            return inputs * torch.exp(-ls) - shift, -ls.sum(1)

    class FzSplineAR(MaskedPiecewiseRationalQuadraticAutoregressiveTransform):
        def _elementwise(self, inputs, params, inverse=False):
            return spline(inputs, params.view(inputs.shape[0], inputs.shape[1], -1), inverse)

    class FzSplineC(PiecewiseRationalQuadraticCouplingTransform):
        def _piecewise_cdf(self, inputs, params, inverse=False):
            out, ld = unconstrained_rational_quadratic_spline(
                inputs, params[..., :k], params[..., k:2 * k], params[..., 2 * k:] + OFFSET, inverse=inverse,
                tails="linear", tail_bound=bound, min_bin_width=MIN, min_bin_height=MIN, min_derivative=MIN)
            return out, ld

    class Net(nn.Module):
        def __init__(self, d_in, d_out):
            super().__init__()
            self.mlp = MLP((d_in,), (d_out,), [spec["width"]] * spec["depth"], activation=torch.relu)

        def forward(self, inputs, context=None):
            return self.mlp(inputs)

    d = spec["dim"]
    mean, std = spec["mean"], spec["std"]
    transforms = [PointwiseAffineTransform(shift=(-mean / std).float(), scale=(1.0 / std).float())]
    nets = []
    for layer in spec["layers"]:
        if layer["type"] == "perm":
            transforms.append(Permutation(layer["perm"].clone()))
            continue
        if layer["type"] == "coupling":
            # nflows' mask: > 0 transformed, <= 0 identity (conditioning).
            mask = torch.where(layer["cond"], -1, 1)
            t = FzSplineC(mask, Net, num_bins=k, tails="linear", tail_bound=bound,
                          min_bin_width=MIN, min_bin_height=MIN, min_derivative=MIN)
            mlp = t.transform_net.mlp
            nets.append([mlp._input_layer, *mlp._hidden_layers, mlp._output_layer])
        else:
            if not torch.equal(layer["order"], torch.arange(d)):
                raise SystemExit("bench_ar: nflows' MADE has the natural order only (use model.made_order = \"natural\")")
            common = dict(features=d, hidden_features=spec["width"], num_blocks=spec["depth"] - 1,
                          use_residual_blocks=False, random_mask=False, activation=F.relu)
            t = FzSplineAR(num_bins=k, tails="linear", tail_bound=bound, **common) if spec["spline"] else FzAffineAR(**common)
            made = t.autoregressive_net
            lins = [made.initial_layer, *[blk.linear for blk in made.blocks], made.final_layer]
            for lin, mask in zip(lins, layer["masks"]):
                assert lin.mask.shape == mask.shape, (lin.mask.shape, mask.shape)
                lin.mask.copy_(mask.float())  # flowzoo's exact masks
            nets.append(lins)
        transforms.append(InverseTransform(t) if spec["iaf"] else t)
    flow = Flow(CompositeTransform(transforms), StandardNormal([d]))
    return Mirror(flow, flow.log_prob, flow.sample, nets)
