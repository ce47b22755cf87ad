"""Tests of the PyTorch reference Glow (python/flowzoo_ref).  Small shapes; < 30 s on 2 cores."""
import math
import pathlib
import sys

import pytest
import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from flowzoo_ref import Glow, dequantize, gaussian_log_p, preprocess, squeeze2d, unsqueeze2d  # noqa: E402
from flowzoo_ref.glow import ActNorm, FlowStep, ZeroConv2d  # noqa: E402

torch.set_num_threads(1)  # tiny shapes: threads only add overhead

CONFIGS = [  # (style, affine, lu, learn_top)
    ("y0ast", True, True, True),
    ("y0ast", True, False, False),
    ("y0ast", False, True, True),
    ("rosinality", True, True, True),
    ("rosinality", False, False, True),
    ("rosinality", True, False, False),
]
IDS = [f"{s}-{'affine' if a else 'additive'}-{'lu' if lu else 'plain'}-{'top' if t else 'notop'}"
       for s, a, lu, t in CONFIGS]


def make_model(style, affine, lu, learn_top, *, C=3, size=8, K=2, L=2, width=16, seed=0):
    """A float64 model with every parameter moved away from its init: the non-ActNorm
    parameters are perturbed, then the ActNorms get their data-dependent init (so activations
    stay normalised) and are perturbed in turn."""
    torch.manual_seed(seed)
    model = Glow(C, size, K=K, L=L, width=width, affine=affine, lu=lu, learn_top=learn_top,
                 n_bits=5, style=style).double()
    g = torch.Generator().manual_seed(seed + 1)
    x = dequantize(preprocess(torch.randint(0, 256, (16, C, size, size), generator=g), 5, torch.float64), 5, g)
    actnorm_params = {id(p) for m in model.modules() if isinstance(m, ActNorm) for p in m.parameters()}

    def perturb(select):
        for name, p in model.named_parameters():
            if select(id(p) in actnorm_params):
                # weight matrices: std 0.1/sqrt(fan_in), so the model stays well conditioned
                std = 0.1 / math.sqrt(p[0].numel()) if p.dim() >= 2 and p.shape[0] > 1 else 0.1
                noise = std * torch.randn(p.shape, generator=g, dtype=p.dtype)
                if name.endswith("actnorm.scale"):  # linear ActNorm scale: keep it away from 0
                    p.mul_(torch.exp(noise))
                else:
                    p.add_(noise)

    model.train()
    with torch.no_grad():
        perturb(lambda is_actnorm: not is_actnorm)
        model.log_prob(x)  # data-dependent ActNorm init on the first training forward
        perturb(lambda is_actnorm: is_actnorm)
    model.eval()
    return model


def random_x(B, C, size, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, C, size, size, generator=g, dtype=torch.float64) - 0.5


# ------------------------------------------------------------------------------------------
def test_squeeze_is_channel_major_and_invertible():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float64).view(2, 3, 4, 6)
    y = squeeze2d(x)
    assert y.shape == (2, 12, 2, 3)
    for c in range(3):
        for dy in range(2):
            for dx in range(2):
                assert torch.equal(y[:, 4 * c + 2 * dy + dx], x[:, c, dy::2, dx::2])
    assert torch.equal(unsqueeze2d(y), x)


def test_preprocess_and_dequantize():
    k = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    x8 = preprocess(k, 8)
    assert torch.equal(x8, k.float() / 256 - 0.5)
    x5 = preprocess(k, 5)
    assert x5.min().item() == -0.5 and x5.max().item() == 31 / 32 - 0.5
    assert torch.equal(x5, torch.floor(k.float() / 8) / 32 - 0.5)
    g = torch.Generator().manual_seed(0)
    xd = dequantize(x5, 5, g)
    assert torch.all(xd >= x5) and torch.all(xd < x5 + 1 / 32)
    assert not torch.equal(xd, x5)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_inverse_reconstructs_float64(cfg):
    model = make_model(*cfg, C=3, size=8, K=3, L=3, width=16)
    x = random_x(4, 3, 8)
    with torch.no_grad():
        zs, logdet = model.encode(x)
        assert [tuple(z.shape[1:]) for z in zs] == model.latent_shapes()
        x_rec = model.decode(zs)
    assert (x_rec - x).abs().max().item() < 1e-10


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_logdet_matches_autograd_jacobian(cfg):
    model = make_model(*cfg, C=1, size=4, K=2, L=2, width=8)
    x = random_x(1, 1, 4)

    def f(v):
        zs, _ = model.encode(v.view(1, 1, 4, 4))
        return torch.cat([z.reshape(-1) for z in zs])

    jac = torch.autograd.functional.jacobian(f, x.reshape(-1))
    assert jac.shape == (16, 16)
    sign, brute = torch.linalg.slogdet(jac)
    assert sign.item() != 0
    with torch.no_grad():
        _, logdet = model.encode(x)
    assert abs(logdet.item() - brute.item()) < 1e-9, (logdet.item(), brute.item())


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_log_prob_bpd_and_sample_consistency(cfg):
    model = make_model(*cfg, C=3, size=8, K=2, L=2, width=16)
    x = random_x(3, 3, 8)
    T = 0.7
    with torch.no_grad():
        zs, logdet, priors = model.encode(x, with_priors=True)
        lp = model.log_prob(x)
        expect = logdet + sum(gaussian_log_p(z, m, s) for z, (m, s) in zip(zs, priors))
        assert torch.allclose(lp, expect, rtol=0, atol=1e-9)
        D = 3 * 8 * 8
        bpd = model.bpd(x)
        assert torch.allclose(bpd, -(lp - D * math.log(32)) / (D * math.log(2)), rtol=0, atol=1e-12)
        # eps that reproduce the actual latents: sample(eps, T) must invert encode
        eps = [(z - m) / (torch.exp(s) * T) for z, (m, s) in zip(zs, priors)]
        assert torch.allclose(model.sample(eps, T), x, rtol=0, atol=1e-9)


@pytest.mark.parametrize("style", ["y0ast", "rosinality"])
def test_sample_deterministic_given_eps(style):
    torch.manual_seed(0)
    model = Glow(3, 8, K=2, L=2, width=16, style=style).double()
    model.train()
    with torch.no_grad():
        model.log_prob(random_x(8, 3, 8))  # ActNorm init
    model.eval()
    shapes = model.latent_shapes()
    assert shapes == [(6, 4, 4), (24, 2, 2)]
    with torch.no_grad():
        s1 = model.sample(n=2, temperature=0.7, generator=torch.Generator().manual_seed(7))
        g = torch.Generator().manual_seed(7)
        eps = [torch.randn((2,) + sh, generator=g, dtype=torch.float64) for sh in shapes]
        s2 = model.sample(eps, 0.7)
        s0 = model.sample([torch.zeros_like(e) for e in eps], 0.7)
        s0b = model.sample(eps, 0.0)
    assert s1.shape == (2, 3, 8, 8) and torch.isfinite(s1).all()
    assert torch.equal(s1, s2)
    assert torch.equal(s0, s0b) and not torch.equal(s0, s1)


def test_prior_conventions():
    """y0ast: split prior (mean, logs) interleaved, top prior contiguous;
    rosinality: both contiguous, zero-conv padded with ones."""
    for style in ("y0ast", "rosinality"):
        torch.manual_seed(0)
        m = Glow(1, 4, K=1, L=2, width=4, style=style).double()
        split_conv = m._levels[0][1]
        with torch.no_grad():
            split_conv.conv.bias.copy_(torch.arange(4, dtype=torch.float64))
        mean, logs = m._split_prior(split_conv, torch.zeros(1, 2, 2, 2, dtype=torch.float64))
        if style == "y0ast":
            assert mean[0, :, 0, 0].tolist() == [0, 2] and logs[0, :, 0, 0].tolist() == [1, 3]
        else:
            assert mean[0, :, 0, 0].tolist() == [0, 1] and logs[0, :, 0, 0].tolist() == [2, 3]
    # padding value of the zero-conv on a zero input
    z = torch.zeros(1, 2, 3, 3, dtype=torch.float64)
    for style, pad in (("y0ast", 0.0), ("rosinality", 1.0)):
        zc = ZeroConv2d(2, 1, style, pad).double()
        with torch.no_grad():
            zc.conv.weight.fill_(1.0)
        out = zc(z)[0, 0]
        if pad == 0.0:
            assert torch.all(out == 0)
        else:  # 18 padded taps at a corner (2 channels x 5 ones), edge 2x3, centre 0
            assert out[0, 0].item() == 10 and out[0, 1].item() == 6 and out[1, 1].item() == 0


@pytest.mark.parametrize("style", ["y0ast", "rosinality"])
def test_coupling_split_convention(style):
    """A constant NN output h: y0ast shift = h[0::2], scale = h[1::2];
    rosinality log_s = first half, t = second half."""
    torch.manual_seed(0)
    conv = dict(Glow(1, 2, K=1, L=1, width=4, style=style).conventions)
    step = FlowStep(4, 4, True, False, style, conv).double()
    for mod in step.modules():
        if isinstance(mod, ActNorm):
            mod.mark_initialized()
    with torch.no_grad():
        step.invconv.weight.copy_(torch.eye(4, dtype=torch.float64).view(step.invconv.weight.shape))
        last = step.coupling_nn[4]
        last.conv.bias.copy_(torch.tensor([0.1, -0.3, 0.7, 0.2], dtype=torch.float64))
    step.eval()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    y, ld = step(x)
    b = last.conv.bias
    shift, s_raw = (b[0::2], b[1::2]) if style == "y0ast" else (b[2:], b[:2])
    s = torch.sigmoid(s_raw + 2).view(1, 2, 1, 1)
    assert torch.allclose(y[:, 2:], (x[:, 2:] + shift.view(1, 2, 1, 1)) * s, atol=1e-14)
    assert torch.allclose(y[:, :2], x[:, :2])
    assert torch.allclose(ld, torch.full((2,), 9 * torch.log(s).sum().item(), dtype=torch.float64))


def test_actnorm_data_init():
    x = torch.randn(8, 5, 4, 4, dtype=torch.float64) * 3 + 1
    an = ActNorm(5).double()
    an.eval()
    with pytest.raises(ValueError):
        an(x)
    an.train()
    y, _ = an(x)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(5, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(y.var(dim=(0, 2, 3), unbiased=False), torch.ones(5, dtype=torch.float64), atol=1e-5)
    lin = ActNorm(5, linear=True).double()
    lin.eval()  # rosinality initialises in any mode, and saves the flag
    y, ld = lin(x)
    assert lin.initialized.item() == 1 and "initialized" in lin.state_dict()
    assert torch.allclose(y.transpose(0, 1).reshape(5, -1).std(dim=1), torch.ones(5, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(ld, 16 * torch.log(lin.scale.abs()).sum())


@pytest.mark.parametrize("style", ["y0ast", "rosinality"])
def test_state_dict_roundtrip(style):
    a = make_model(style, True, True, True, C=1, size=4, K=1, L=2, width=8)
    torch.manual_seed(123)
    b = Glow(1, 4, K=1, L=2, width=8, n_bits=5, style=style).double()
    b.load_state_dict(a.state_dict())
    b.eval()
    x = random_x(2, 1, 4)
    with torch.no_grad():
        if style == "y0ast":  # inited is not saved
            with pytest.raises(ValueError):
                b.log_prob(x)
            b.set_actnorm_init()
        assert torch.allclose(b.log_prob(x), a.log_prob(x), rtol=0, atol=1e-12)


def _read_keys(name):
    keys = {}
    for line in (HERE / "data" / name).read_text().splitlines():
        if not line.strip():
            continue
        key, shape, dtype, kind = line.split("\t")
        keys[key] = (shape, dtype, kind)
    return keys


def _model_keys(model):
    params = dict(model.named_parameters())
    return {k: (str(list(v.shape)), str(v.dtype).replace("torch.", ""), "param" if k in params else "buffer")
            for k, v in model.state_dict().items()}


def test_y0ast_state_dict_keys():
    model = Glow(3, 16, K=4, L=2, width=64, affine=True, lu=True, learn_top=True, style="y0ast")
    assert _model_keys(model) == _read_keys("y0ast-state-dict-keys.txt")
    assert next(iter(model.state_dict())) == "prior_h"


def test_rosinality_state_dict_keys():
    model = Glow(3, 16, K=4, L=2, width=512, affine=True, lu=True, learn_top=True, style="rosinality")
    assert _model_keys(model) == _read_keys("rosinality-state-dict-keys.txt")
    # without LU, rosinality's last block still uses the LU conv
    keys = Glow(3, 16, K=1, L=2, width=8, lu=False, style="rosinality").state_dict()
    assert list(keys["blocks.0.flows.0.invconv.weight"].shape) == [12, 12, 1, 1]
    assert "blocks.1.flows.0.invconv.w_l" in keys
