"""A compact PyTorch Glow used as the reference for flowzoo.

Written from /work/shared/interop/glow-pytorch-semantics.md (no code copied from either
public repository).  Two conventions are supported:

* ``style="y0ast"`` (default): y0ast/Glow-PyTorch.  ActNorm with log-scale ``logs`` and a
  data-dependent init on the first forward in training (the ``inited`` flag is *not* saved;
  call :meth:`Glow.set_actnorm_init` after ``load_state_dict``), coupling NN
  conv3x3(no bias)+ActNorm -> ReLU -> conv1x1(no bias)+ActNorm -> ReLU -> zero-conv
  (zero padding, log-scale factor 3), INTERLEAVED (shift, scale) = (h[:, 0::2], h[:, 1::2]),
  INTERLEAVED split prior (mean, logs), CONTIGUOUS top prior, state_dict keys
  ``prior_h``, ``flow.layers.{j}.*``, ``learn_top_fn.*``.
* ``style="rosinality"``: rosinality/glow-pytorch.  Linear ActNorm ``scale`` with an
  unbiased-std init and a saved ``initialized`` flag, hidden convs with bias and no ActNorm,
  ones-padding in the zero-convs, CONTIGUOUS (log_s, t) and (mean, log_sd) splits, and the
  last block always uses the LU 1x1 conv; keys ``blocks.{b}.flows.{f}.*`` / ``blocks.{b}.prior.*``.

The convention switches can also be overridden one by one (``actnorm``, ``nn_split``,
``prior_split``, ``zero_pad``, ``hidden``); the container layout and zero-conv / invconv
parameter names follow ``style``.

Everything here works on the dequantised input ``x_deq``; no noise is added inside the model.
``log_prob`` is the continuous log-density in nats (no ``-D ln(2^n_bits)`` term);
``bpd`` adds the discretisation constant.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

LOG_2PI = math.log(2.0 * math.pi)

STYLE_DEFAULTS = {
    "y0ast": dict(actnorm="log", nn_split="cross", prior_split="cross", zero_pad=0.0, hidden="actnorm"),
    "rosinality": dict(actnorm="linear", nn_split="split", prior_split="split", zero_pad=1.0, hidden="bias"),
}


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def squeeze2d(x: torch.Tensor) -> torch.Tensor:
    """[B,C,H,W] -> [B,4C,H/2,W/2], channel-major: out[:, 4c + 2dy + dx] = x[:, c, 2i+dy, 2j+dx]."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze2d(x: torch.Tensor) -> torch.Tensor:
    """Exact inverse of :func:`squeeze2d`."""
    b, c, h, w = x.shape
    x = x.view(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // 4, 2 * h, 2 * w)


def gaussian_log_p(x: torch.Tensor, mean: torch.Tensor, logs: torch.Tensor) -> torch.Tensor:
    """Sum over C,H,W of log N(x; mean, exp(logs)); ``logs`` is the log std.  Returns [B]."""
    lp = -0.5 * (LOG_2PI + 2.0 * logs + (x - mean) ** 2 / torch.exp(2.0 * logs))
    return lp.sum(dim=(1, 2, 3))


def _halves(h: torch.Tensor, mode: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """"cross" = interleaved (h[:,0::2], h[:,1::2]); "split" = contiguous halves."""
    if mode == "cross":
        return h[:, 0::2], h[:, 1::2]
    c = h.shape[1] // 2
    return h[:, :c], h[:, c:]


def preprocess(images: torch.Tensor, n_bits: int = 8, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images k -> floor(k / 2^(8-n_bits)) / 2^n_bits - 0.5, in [-0.5, 0.5)."""
    x = torch.as_tensor(images).to(dtype)
    if n_bits < 8:
        x = torch.floor(x / 2 ** (8 - n_bits))
    return x / 2 ** n_bits - 0.5


def dequantize(x: torch.Tensor, n_bits: int = 8, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """x + U(0, 1/2^n_bits) (not in place)."""
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x + u / 2 ** n_bits


# ----------------------------------------------------------------------------------------------
# layers
# ----------------------------------------------------------------------------------------------
class ActNorm(nn.Module):
    """Per-channel affine y = (x + b) * s with data-dependent init.

    ``linear=False`` (y0ast): params ``bias``, ``logs`` with s = exp(logs); init
    bias = -mean, logs = ln(1 / (sqrt(biased var) + 1e-6)); flag ``inited`` not saved; raises in
    eval mode when not initialised.
    ``linear=True`` (rosinality): params ``loc``, ``scale`` with s = scale, logdet uses ln|scale|;
    init loc = -mean, scale = 1 / (unbiased std + 1e-6); uint8 buffer ``initialized`` is saved.
    """

    def __init__(self, channels: int, linear: bool = False):
        super().__init__()
        self.linear = linear
        if linear:
            self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
            self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))
            self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))
        else:
            self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
            self.logs = nn.Parameter(torch.zeros(1, channels, 1, 1))
            self.inited = False

    @property
    def is_initialized(self) -> bool:
        return bool(self.initialized.item()) if self.linear else self.inited

    def mark_initialized(self) -> None:
        if self.linear:
            self.initialized.fill_(1)
        else:
            self.inited = True

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        if self.linear:
            c = x.shape[1]
            std = x.transpose(0, 1).reshape(c, -1).std(dim=1, unbiased=True).view(1, c, 1, 1)
            self.loc.copy_(-mean)
            self.scale.copy_(1.0 / (std + 1e-6))
        else:
            var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
            self.bias.copy_(-mean)
            self.logs.copy_(torch.log(1.0 / (torch.sqrt(var) + 1e-6)))
        self.mark_initialized()

    def _logdet(self, x: torch.Tensor) -> torch.Tensor:
        log_scale = torch.log(torch.abs(self.scale)) if self.linear else self.logs
        return x.shape[2] * x.shape[3] * log_scale.sum()

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            if not self.linear and not self.training:
                raise ValueError("In Eval mode, but ActNorm not inited")
            self.initialize(x)
        if self.linear:
            y = self.scale * (x + self.loc)
        else:
            y = (x + self.bias) * torch.exp(self.logs)
        return y, self._logdet(x)

    def reverse(self, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.linear:
            x = y / self.scale - self.loc
        else:
            x = y * torch.exp(-self.logs) - self.bias
        return x, -self._logdet(y)


class InvConv1x1(nn.Module):
    """Invertible 1x1 conv, z = W x per pixel, plain or LU-parametrised.

    LU: W = P (lower*strict_lower_mask + I) (upper*strict_upper_mask + diag(sign_s*exp(log_s))),
    logdet = H*W*sum(log_s).  Plain: logdet = H*W*slogdet(W)[1].
    Names: y0ast ``lower, log_s, upper`` (+ buffers ``p, sign_s``) or ``weight [C,C]``;
    rosinality ``w_l, w_s, w_u`` (+ buffers ``w_p, u_mask, l_mask, s_sign, l_eye``) or
    ``weight [C,C,1,1]``.
    """

    _NAMES = {
        "y0ast": dict(lower="lower", log_s="log_s", upper="upper", p="p", sign_s="sign_s"),
        "rosinality": dict(lower="w_l", log_s="w_s", upper="w_u", p="w_p", sign_s="s_sign"),
    }

    def __init__(self, channels: int, lu: bool, style: str = "y0ast"):
        super().__init__()
        self.lu, self.style, self.channels = lu, style, channels
        w = torch.linalg.qr(torch.randn(channels, channels))[0]
        if not lu:
            self.weight = nn.Parameter(w if style == "y0ast" else w.view(channels, channels, 1, 1))
            return
        p, lower, upper = torch.linalg.lu(w)  # w = p @ lower @ upper
        s = torch.diagonal(upper)
        n = self._NAMES[style]
        self.register_parameter(n["lower"], nn.Parameter(lower))
        self.register_parameter(n["log_s"], nn.Parameter(torch.log(torch.abs(s))))
        self.register_parameter(n["upper"], nn.Parameter(torch.triu(upper, 1)))
        self.register_buffer(n["p"], p)
        if style == "rosinality":
            u_mask = torch.triu(torch.ones(channels, channels), 1)
            self.register_buffer("u_mask", u_mask)
            self.register_buffer("l_mask", u_mask.T.contiguous())
        self.register_buffer(n["sign_s"], torch.sign(s))
        if style == "rosinality":
            self.register_buffer("l_eye", torch.eye(channels))

    def _t(self, key: str) -> torch.Tensor:
        return getattr(self, self._NAMES[self.style][key])

    def _lu_factors(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lower, upper, log_s = self._t("lower"), self._t("upper"), self._t("log_s")
        if self.style == "rosinality":
            l_mask, u_mask, eye = self.l_mask, self.u_mask, self.l_eye
        else:
            c = self.channels
            l_mask = torch.tril(torch.ones(c, c, dtype=lower.dtype, device=lower.device), -1)
            u_mask, eye = l_mask.T, torch.eye(c, dtype=lower.dtype, device=lower.device)
        l_full = lower * l_mask + eye
        u_full = upper * u_mask + torch.diag(self._t("sign_s") * torch.exp(log_s))
        return self._t("p"), l_full, u_full

    def _weight_logdet(self, hw: int) -> Tuple[torch.Tensor, torch.Tensor]:
        c = self.channels
        if self.lu:
            p, l_full, u_full = self._lu_factors()
            return p @ l_full @ u_full, hw * self._t("log_s").sum()
        w = self.weight.view(c, c)
        if self.style == "rosinality":
            ld = torch.linalg.slogdet(w.double())[1].to(w.dtype)
        else:
            ld = torch.linalg.slogdet(w)[1]
        return w, hw * ld

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        w, ld = self._weight_logdet(x.shape[2] * x.shape[3])
        return F.conv2d(x, w.view(self.channels, self.channels, 1, 1)), ld

    def reverse(self, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        w, ld = self._weight_logdet(y.shape[2] * y.shape[3])
        if self.lu and self.style == "y0ast":
            p, l_full, u_full = self._lu_factors()
            w_inv = torch.inverse(u_full) @ torch.inverse(l_full) @ torch.inverse(p)
        else:
            w_inv = torch.inverse(w)
        return F.conv2d(y, w_inv.view(self.channels, self.channels, 1, 1)), -ld


class ZeroConv2d(nn.Module):
    """out = (conv3x3(pad(x, pad_value)) + bias) * exp(3 * log_scale); all zeros at init.

    y0ast: ``logs [C_out,1,1]``; rosinality: ``scale [1,C_out,1,1]``; then ``conv.{weight,bias}``.
    """

    def __init__(self, c_in: int, c_out: int, style: str = "y0ast", pad_value: float = 0.0):
        super().__init__()
        shape = (c_out, 1, 1) if style == "y0ast" else (1, c_out, 1, 1)
        self.log_scale_name = "logs" if style == "y0ast" else "scale"
        self.register_parameter(self.log_scale_name, nn.Parameter(torch.zeros(shape)))
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=0)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.pad_value = float(pad_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_value == 0.0:
            out = F.conv2d(x, self.conv.weight, self.conv.bias, padding=1)
        else:
            out = F.conv2d(F.pad(x, [1, 1, 1, 1], value=self.pad_value), self.conv.weight, self.conv.bias)
        return out * torch.exp(3.0 * getattr(self, self.log_scale_name))


class ConvActNorm(nn.Module):
    """y0ast hidden conv: bias-free 'same' conv followed by ActNorm (its logdet discarded)."""

    def __init__(self, c_in: int, c_out: int, k: int, linear_actnorm: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, padding=(k - 1) // 2, bias=False)
        nn.init.normal_(self.conv.weight, 0.0, 0.05)
        self.actnorm = ActNorm(c_out, linear_actnorm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.actnorm(self.conv(x))[0]


def coupling_net(c_in: int, c_out: int, width: int, *, hidden: str, style: str,
                 linear_actnorm: bool, pad_value: float) -> nn.Sequential:
    if hidden == "actnorm":
        l0 = ConvActNorm(c_in, width, 3, linear_actnorm)
        l2 = ConvActNorm(width, width, 1, linear_actnorm)
    elif hidden == "bias":
        l0 = nn.Conv2d(c_in, width, 3, padding=1)
        l2 = nn.Conv2d(width, width, 1)
        for conv in (l0, l2):
            nn.init.normal_(conv.weight, 0.0, 0.05)
            nn.init.zeros_(conv.bias)
    else:
        raise ValueError(f"hidden must be 'actnorm' or 'bias', not {hidden!r}")
    return nn.Sequential(l0, nn.ReLU(), l2, nn.ReLU(), ZeroConv2d(width, c_out, style, pad_value))


class _Coupling(nn.Module):  # rosinality naming: flows.{f}.coupling.net.*
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net


class FlowStep(nn.Module):
    """ActNorm -> InvConv1x1 -> affine/additive coupling (first half conditions the second)."""

    def __init__(self, channels: int, width: int, affine: bool, lu: bool, style: str, conv: dict):
        super().__init__()
        assert channels % 2 == 0
        self.affine, self.nn_split = affine, conv["nn_split"]
        linear = conv["actnorm"] == "linear"
        self.actnorm = ActNorm(channels, linear)
        self.invconv = InvConv1x1(channels, lu, style)
        net = coupling_net(channels // 2, channels if affine else channels // 2, width,
                           hidden=conv["hidden"], style=style, linear_actnorm=linear,
                           pad_value=conv["zero_pad"])
        if style == "y0ast":
            self.block = net
        else:
            self.coupling = _Coupling(net)

    @property
    def coupling_nn(self) -> nn.Module:
        return self._modules["block"] if "block" in self._modules else self._modules["coupling"].net

    def _couple(self, x: torch.Tensor, reverse: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        c = x.shape[1] // 2
        z1, z2 = x[:, :c], x[:, c:]
        h = self.coupling_nn(z1)
        if not self.affine:
            z2 = z2 - h if reverse else z2 + h
            return torch.cat([z1, z2], 1), x.new_zeros(())
        if self.nn_split == "cross":  # y0ast: shift = even channels, scale = odd channels
            shift, s_raw = h[:, 0::2], h[:, 1::2]
        else:  # rosinality: log_s = first half, t = second half
            s_raw, shift = h[:, :c], h[:, c:]
        s = torch.sigmoid(s_raw + 2.0)
        ld = torch.log(s).sum(dim=(1, 2, 3))
        if reverse:
            return torch.cat([z1, z2 / s - shift], 1), -ld
        return torch.cat([z1, (z2 + shift) * s], 1), ld

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x, ld_a = self.actnorm(x)
        x, ld_w = self.invconv(x)
        x, ld_c = self._couple(x, reverse=False)
        return x, ld_a + ld_w + ld_c

    def reverse(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        z, ld_c = self._couple(z, reverse=True)
        z, ld_w = self.invconv.reverse(z)
        z, ld_a = self.actnorm.reverse(z)
        return z, ld_a + ld_w + ld_c


# y0ast containers (parameter-free squeeze placeholder and a Split2d holding its zero-conv)
class SqueezeLayer(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return squeeze2d(x)


class Split2d(nn.Module):
    def __init__(self, conv: ZeroConv2d):
        super().__init__()
        self.conv = conv


class _FlowNet(nn.Module):
    def __init__(self, layers: Sequence[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)


# rosinality container
class _Block(nn.Module):
    def __init__(self, flows: Sequence[nn.Module], prior: Optional[nn.Module]):
        super().__init__()
        self.flows = nn.ModuleList(flows)
        if prior is not None:
            self.prior = prior


# ----------------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------------
class Glow(nn.Module):
    """Multi-scale Glow: L levels of (squeeze, K flow steps, split except at the last level)."""

    def __init__(self, in_channels: int = 3, image_size: int = 32, K: int = 32, L: int = 3,
                 width: int = 512, affine: bool = True, lu: bool = True, learn_top: bool = True,
                 n_bits: int = 8, style: str = "y0ast", *, actnorm: Optional[str] = None,
                 nn_split: Optional[str] = None, prior_split: Optional[str] = None,
                 zero_pad: Optional[float] = None, hidden: Optional[str] = None):
        super().__init__()
        if style not in STYLE_DEFAULTS:
            raise ValueError(f"style must be one of {list(STYLE_DEFAULTS)}, not {style!r}")
        if image_size % (2 ** L):
            raise ValueError(f"image_size {image_size} is not divisible by 2^L = {2 ** L}")
        conv = dict(STYLE_DEFAULTS[style])
        for key, val in dict(actnorm=actnorm, nn_split=nn_split, prior_split=prior_split,
                             zero_pad=zero_pad, hidden=hidden).items():
            if val is not None:
                conv[key] = val
        self.style, self.conventions = style, conv
        self.in_channels, self.image_size, self.K, self.L = in_channels, image_size, K, L
        self.width, self.affine, self.lu, self.learn_top, self.n_bits = width, affine, lu, learn_top, n_bits

        c, hw = in_channels, image_size
        levels: List[Tuple[List[FlowStep], Optional[ZeroConv2d]]] = []
        for i in range(L):
            c, hw = 4 * c, hw // 2
            # rosinality's last Block never receives conv_lu, so it always uses the LU conv
            step_lu = lu or (style == "rosinality" and i == L - 1)
            steps = [FlowStep(c, width, affine, step_lu, style, conv) for _ in range(K)]
            prior = ZeroConv2d(c // 2, c, style, conv["zero_pad"]) if i < L - 1 else None
            levels.append((steps, prior))
            if i < L - 1:
                c //= 2
        self.top_shape = (c, hw, hw)

        if style == "y0ast":
            self.register_buffer("prior_h", torch.zeros(1, 2 * c, hw, hw))
            layers: List[nn.Module] = []
            for steps, prior in levels:
                layers += [SqueezeLayer(), *steps]
                if prior is not None:
                    layers.append(Split2d(prior))
            self.flow = _FlowNet(layers)
            top = ZeroConv2d(2 * c, 2 * c, style, conv["zero_pad"]) if learn_top else None
            if top is not None:
                self.learn_top_fn = top
        else:
            top = ZeroConv2d(c, 2 * c, style, conv["zero_pad"]) if learn_top else None
            self.blocks = nn.ModuleList(
                [_Block(steps, prior if prior is not None else top) for steps, prior in levels])
        # plain lists (not registered twice): the level structure and the top-prior conv
        self._levels = levels
        self._top = [top]

    # ---- bookkeeping -------------------------------------------------------------------------
    @property
    def num_dims(self) -> int:
        return self.in_channels * self.image_size ** 2

    def latent_shapes(self) -> List[Tuple[int, int, int]]:
        """Per-level latent shapes (no batch dim), in the order used by encode/sample."""
        shapes, c, hw = [], self.in_channels, self.image_size
        for i in range(self.L - 1):
            c, hw = 4 * c, hw // 2
            shapes.append((c // 2, hw, hw))
            c //= 2
        return shapes + [tuple(self.top_shape)]

    def set_actnorm_init(self) -> None:
        """Mark every ActNorm as initialised (needed after load_state_dict in y0ast style)."""
        for m in self.modules():
            if isinstance(m, ActNorm):
                m.mark_initialized()

    # ---- priors -----------------------------------------------------------------------------
    def _split_prior(self, conv: ZeroConv2d, z1: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return _halves(conv(z1), self.conventions["prior_split"])

    def _top_prior(self, ref: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(mean, logs) of the top latent, batch dim 1 (broadcasts); contiguous halves."""
        c = self.top_shape[0]
        top = self._top[0]
        if self.style == "y0ast":
            h = self.prior_h.to(ref.dtype)
            if top is not None:
                h = top(h)
        else:
            zeros = ref.new_zeros((1,) + tuple(self.top_shape))
            h = top(zeros) if top is not None else ref.new_zeros((1, 2 * c) + tuple(self.top_shape[1:]))
        return h[:, :c], h[:, c:]

    # ---- density ------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, with_priors: bool = False):
        """x -> (latents, logdet): latents = [z of each split level..., z_top];
        logdet [B] = sum of the ActNorm, InvConv and coupling log-determinants (no prior terms).
        With ``with_priors=True`` also returns the list of (mean, logs) of each latent's prior."""
        h = x
        logdet = x.new_zeros(x.shape[0])
        zs, priors = [], []
        for steps, prior in self._levels:
            h = squeeze2d(h)
            for step in steps:
                h, ld = step(h)
                logdet = logdet + ld
            if prior is not None:
                c = h.shape[1] // 2
                h, z2 = h[:, :c], h[:, c:]
                zs.append(z2)
                priors.append(self._split_prior(prior, h))
        zs.append(h)
        priors.append(self._top_prior(h))
        return (zs, logdet, priors) if with_priors else (zs, logdet)

    def log_prob(self, x_deq: torch.Tensor) -> torch.Tensor:
        """Continuous log-density log p(x_deq) in nats, shape [B]."""
        zs, logdet, priors = self.encode(x_deq, with_priors=True)
        lp = logdet
        for z, (mean, logs) in zip(zs, priors):
            lp = lp + gaussian_log_p(z, mean, logs)
        return lp

    def bpd(self, x_deq: torch.Tensor) -> torch.Tensor:
        """Bits per dim of the discrete data: -(log p - D ln 2^n_bits) / (D ln 2), shape [B]."""
        d = self.num_dims
        return -(self.log_prob(x_deq) - d * math.log(2 ** self.n_bits)) / (d * math.log(2.0))

    def forward(self, x_deq: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x_deq)

    # ---- inverse --------------------------------------------------------------------------------
    def _reverse(self, zs: Optional[Sequence[torch.Tensor]], eps: Optional[Sequence[torch.Tensor]],
                 temperature: float) -> torch.Tensor:
        def latent(i: int, mean: torch.Tensor, logs: torch.Tensor) -> torch.Tensor:
            if zs is not None:
                return zs[i]
            return mean + torch.exp(logs) * temperature * eps[i]

        ref = (zs if zs is not None else eps)[-1]
        h = latent(self.L - 1, *self._top_prior(ref))
        for i in range(self.L - 1, -1, -1):
            steps, prior = self._levels[i]
            if prior is not None:
                h = torch.cat([h, latent(i, *self._split_prior(prior, h))], 1)
            for step in reversed(steps):
                h, _ = step.reverse(h)
            h = unsqueeze2d(h)
        return h

    def decode(self, zs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Exact inverse of :meth:`encode` given the actual latents of every level."""
        return self._reverse(zs, None, 1.0)

    def sample(self, eps_list: Optional[Sequence[torch.Tensor]] = None, temperature: float = 1.0,
               n: Optional[int] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Deterministic given standard-normal ``eps_list`` (one tensor per level, order of
        :meth:`latent_shapes`): z = mean + exp(logs) * T * eps at each split level and the top.
        Without ``eps_list``, draws ``n`` samples' eps from ``generator``."""
        if eps_list is None:
            p = next(self.parameters())
            eps_list = [torch.randn((n,) + s, generator=generator, dtype=p.dtype, device=p.device)
                        for s in self.latent_shapes()]
        return self._reverse(None, eps_list, temperature)

    # convenience aliases
    preprocess = staticmethod(preprocess)
    dequantize = staticmethod(dequantize)
