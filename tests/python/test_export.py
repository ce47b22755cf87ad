"""flowzoo export: a trained model as a TorchScript module, checked from plain PyTorch.

For each model family (Glow in five variants, RealNVP on images and vectors, NICE, MAF, IAF,
NSF with autoregressive and coupling structures), a tiny
model is trained with the flowzoo binary ($FLOWZOO_BIN, else target/release/flowzoo) on bundled
data (8x8 digits, two moons, 64-d digits), exported with `flowzoo export`, loaded with
`torch.jit.load` and compared with the Rust model's own outputs on the same inputs, which
`flowzoo export --reference-in IN --reference-out OUT` writes (a test hook, see
src/export/mod.rs): float64 to 1e-10 absolute, float32 to 1e-5 (relative to the size of the
values when they exceed 1), two batch sizes.

Set FLOWZOO_EXPORT_REPORT=FILE.json to get the largest differences measured.
"""
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import BATCHES, ROOT, TOL, cond_input, flowzoo, load, make_x, max_diff, record, reference

def test_state_dict_is_the_safetensors_file(exported):
    m = load(exported)
    sd = m.state_dict()
    weights = load_file(str(exported["st"]))
    assert sorted(sd) == sorted(weights)
    # ... which are the run's own weights (best checkpoint), names and values.
    run_weights = load_file(str(exported["run"] / "best.safetensors"))
    assert sorted(run_weights) == sorted(sd)
    for k, v in weights.items():
        assert sd[k].shape == v.shape, k
        assert sd[k].dtype == v.dtype, k
        assert torch.equal(sd[k], v), k
        assert torch.equal(run_weights[k], v), k
    params = dict(m.named_parameters())
    buffers = dict(m.named_buffers())
    assert set(params) | set(buffers) == set(sd) and not set(params) & set(buffers)
    assert params and all(p.requires_grad for p in params.values())
    # What is not trained is a buffer: ActNorm's flag, permutations, LU's P and sign(s),
    # batch-norm statistics, the standardisation of tabular data.
    for k in buffers:
        assert k.rsplit(".", 1)[1] in ("initialized", "perm", "p", "sign_s", "running_mean", "running_var", "mean", "std",
                                       "mask", "degrees", "order"), k
    assert all(float(v) == 1.0 for k, v in buffers.items() if k.endswith("initialized"))
    assert m.event_shape() == list(exported["shape"]) and m.dim == exported["dim"]
    assert m.n_bits == (4 if exported["image"] else 0)
    assert m.n_classes == (10 if exported["conditional"] and not exported["context"] else 0)
    assert m.context_dim == exported["context"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_matches_the_rust_model(exported, dtype):
    m = load(exported, dtype)
    tol = exported["tol"][dtype]
    name, dim = exported["name"], exported["dim"]
    outputs = ["z", "logabsdet", "log_prob", "x_rec", "inverse_eps", "sample"] + (["bits_per_dim"] if exported["image"] else [])
    for b in BATCHES:
        g = torch.Generator().manual_seed(100 + b)
        x = make_x(exported, b, g, dtype)
        eps = torch.randn(b, dim, generator=g).to(dtype) * 0.8
        seed, temperature = 7 + b, 0.7
        inputs = {
            "x": x,
            "eps": eps,
            "sample_n": torch.tensor([b]),
            "sample_temperature": torch.tensor([temperature], dtype=torch.float64),
            "sample_seed": torch.tensor([seed]),
        }
        labels = eps_labels = sample_labels = None
        if exported["conditional"]:
            labels = cond_input(exported, b, 0, dtype)
            eps_labels, sample_labels = labels.flip(0), cond_input(exported, b, 3, dtype)
            inputs.update(labels=labels, eps_labels=eps_labels, sample_labels=sample_labels)
        ref = reference(exported, inputs, f"{dtype}_{b}".replace("torch.", ""))
        for k in outputs:
            assert ref[k].dtype == dtype, (k, ref[k].dtype)
        with torch.no_grad():
            z, ld = m(x, labels)
            assert z.shape == (b, dim) and ld.shape == (b,) and z.dtype == dtype
            checks = {
                "forward_z": (z, ref["z"]),
                "forward_logabsdet": (ld, ref["logabsdet"]),
                "log_prob": (m.log_prob(x, labels), ref["log_prob"]),
                "inverse_z": (m.inverse(ref["z"], labels), ref["x_rec"]),
                "inverse_eps": (m.inverse(eps, eps_labels), ref["inverse_eps"]),
            }
            if exported["image"]:
                checks["bits_per_dim"] = (m.bits_per_dim(x, labels), ref["bits_per_dim"])
            torch.manual_seed(seed)
            checks["sample"] = (m.sample(b, temperature, sample_labels), ref["sample"])
            # the inverse is exact too (both directions in the module itself).
            checks["roundtrip"] = (m.inverse(z, labels), x)
        for what, (got, want) in checks.items():
            assert torch.isfinite(want).all(), (what, want)
            diff = max_diff(got, want)
            record(name, what, dtype, diff)
            # float32: 1e-5 relative to the values' size (log_prob is in the hundreds, where one
            # float32 ulp is 1.5e-5; the two processes' kernels may round the last bit apart).
            scale = 1.0 if dtype == torch.float64 else max(1.0, want.abs().max().item())
            if what == "roundtrip":  # x -> z -> x through float arithmetic, not a comparison with Rust
                scale *= 100
                if exported["roundtrip"]:  # an ODE solver inverts itself only to its accuracy
                    scale = max(1.0, want.abs().max().item()) * exported["roundtrip"] / tol
            assert diff <= tol * scale, f"{name} {dtype} B={b} {what}: max |difference| {diff:.3e} > {tol * scale:.1e}"
        # log_prob is log N(z; 0, I) + logabsdet, and bits/dim follows from it with n_bits = 4.
        lp = -0.5 * (z.double() ** 2).sum(1) - 0.5 * dim * math.log(2 * math.pi) + ld.double()
        assert max_diff(lp, ref["log_prob"]) <= 1e-3
        if exported["image"]:
            bpd = -(ref["log_prob"].double() - 64 * 4 * math.log(2)) / (64 * math.log(2))
            assert max_diff(bpd, ref["bits_per_dim"]) <= 1e-4


def test_log_prob_agrees_with_flowzoo_eval(exported):
    if exported["conditional"]:
        pytest.skip("eval --tensors takes no labels: a class-conditional model is compared in test_matches_the_rust_model")
    m = load(exported)
    m.eval()
    x = make_x(exported, 4, torch.Generator().manual_seed(3))
    f = exported["dir"] / "eval_x.safetensors"
    save_file({"x": x}, str(f))
    out = flowzoo("eval", "--model", exported["run"], "--tensors", f"{f}:x", "--json")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    with torch.no_grad():
        lp = m.log_prob(x)
    assert max_diff(lp, torch.tensor(got["log_prob"])) <= 1e-3
    if exported["image"]:
        with torch.no_grad():
            bpd = m.bits_per_dim(x)
        assert max_diff(bpd, torch.tensor(got["bpd"])) <= 1e-5
    else:  # tabular: log-likelihoods in the data's own units, as the module's
        assert got["n"] == 4 and math.isfinite(got["mean_log_prob"])


def loss_of(m, ex, x, labels):
    return m.bits_per_dim(x, labels).mean() if ex["image"] else -m.log_prob(x, labels).mean() / ex["dim"]


def test_fine_tune_save_and_reload(exported, tmp_path):
    m = load(exported)
    m.train()
    labels = cond_input(exported, 32)
    x = make_x(exported, 32, torch.Generator().manual_seed(11))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = loss_of(m, exported, x, labels)
        loss.backward()
        grads = [p.grad for p in m.parameters()]
        assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = loss_of(m, exported, x, labels).item()
    assert final < losses[0] - 1e-3, (losses, final)
    changed = [k for k, v in m.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "no parameter changed"
    # Buffers stay as they are (batch-norm statistics are fixed in the exported module).
    assert all(torch.equal(m.state_dict()[k], before[k]) for k, _ in m.named_buffers())
    path = tmp_path / "finetuned.pt"
    torch.jit.save(m, str(path))
    m2 = torch.jit.load(str(path))
    m2.eval()
    m.eval()
    assert sorted(m2.state_dict()) == sorted(m.state_dict())
    with torch.no_grad():
        assert torch.equal(m2.log_prob(x, labels), m.log_prob(x, labels))
        c4 = cond_input(exported, 4) if exported["context"] else None  # labels default to 0, 1, ...
        torch.manual_seed(1)
        s1 = m.sample(4, 0.5, c4)
        torch.manual_seed(1)
        s2 = m2.sample(4, 0.5, c4)
    assert torch.equal(s1, s2)
    # the fine-tuned weights load back as a plain state dict too.
    m3 = load(exported)
    m3.load_state_dict(m2.state_dict())
    with torch.no_grad():
        assert torch.equal(m3.log_prob(x, labels), m.log_prob(x, labels))


def test_batch_sizes_dtypes_and_helpers(exported):
    m = load(exported)
    shape = exported["shape"]
    labels = lambda n: cond_input(exported, n)
    with torch.no_grad():
        for n in (1, 2, 7):
            s = m.sample(n, 0.6, labels(n))
            assert s.shape == (n, *shape) and s.dtype == torch.float32
            assert torch.isfinite(m.log_prob(s, labels(n))).all()
        if exported["context"]:
            s = m.sample(12, 0.6, torch.tensor([0.25]))  # one context for every sample
            assert s.shape == (12, *shape)
        elif exported["conditional"]:
            s = m.sample(12, 0.6)  # labels default to 0, 1, ..., 9, 0, 1
            assert s.shape == (12, *shape)
        md = m.double()
        sd = md.sample(3, 0.5, labels(3))
        assert sd.dtype == torch.float64 and md.log_prob(sd, labels(3)).dtype == torch.float64
        if exported["image"]:
            m = load(exported)
            px = m.to_pixels(m.sample(6, 0.7, labels(6)))
            assert px.dtype == torch.uint8 and px.shape == (6, 1, 8, 8)
            x = m.preprocess(px)
            assert x.dtype == torch.float32 and x.min() >= -0.5 and x.max() < 0.5
            assert torch.equal(m.preprocess(px, False), torch.floor(px.float() / 16) / 16 - 0.5)
            assert md.preprocess(px).dtype == torch.float64
        else:
            assert not hasattr(m, "bits_per_dim")


def test_clear_errors(exported):
    m = load(exported)
    dim = exported["dim"]
    bad = torch.zeros(2, 3, 8, 8) if exported["image"] else torch.zeros(2, dim + 1)
    good = torch.zeros(2, *exported["shape"])
    with pytest.raises(Exception, match="expected x of shape"):
        m.log_prob(bad)
    with pytest.raises(Exception, match="expected z of shape"):
        m.inverse(torch.zeros(2, dim - 1))
    if exported["context"]:
        with pytest.raises(Exception, match="conditional on the context columns"):
            m.log_prob(good)
        with pytest.raises(Exception, match="expected a context of shape"):
            m.log_prob(good, torch.zeros(2, exported["context"] + 1))
    elif exported["conditional"]:
        with pytest.raises(Exception, match="class-conditional"):
            m.log_prob(good)
    else:
        with pytest.raises(Exception, match="not class-conditional"):
            m.log_prob(good, torch.zeros(2, dtype=torch.int64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda(exported):
    m = load(exported, torch.float64)
    m.eval()
    labels = cond_input(exported, 4, 0, torch.float64)
    x = make_x(exported, 4, torch.Generator().manual_seed(5), torch.float64)
    with torch.no_grad():
        lp = m.log_prob(x, labels)
        mc = m.to("cuda")
        lpc = mc.log_prob(x.cuda(), None if labels is None else labels.cuda())
        assert lpc.device.type == "cuda"
        assert max_diff(lpc.cpu(), lp) <= 1e-8
        s = mc.sample(3, 0.5, None if labels is None else labels[:3].cuda())
        assert s.shape[0] == 3
        assert s.device.type == "cuda" and torch.isfinite(s).all()
    mc.train()
    loss = -mc.log_prob(x.cuda(), None if labels is None else labels.cuda()).mean()
    loss.backward()
    assert all(p.grad is not None and p.grad.device.type == "cuda" for p in mc.parameters())


def readme_example(marker="torch.jit.load"):
    """The Python example of the README section "Using flowzoo models from PyTorch" that
    contains `marker` (the TorchScript one by default)."""
    text = (ROOT / "README.md").read_text()
    at = text.find("## Using flowzoo models from PyTorch")
    assert at >= 0, "README.md has no section 'Using flowzoo models from PyTorch'"
    end = text.find("\n## ", at + 1)
    section = text[at:end if end > 0 else len(text)]
    blocks = [b.split("```", 1)[0] for b in section.split("```python\n")[1:]]
    found = [b for b in blocks if marker in b]
    assert found, f"no Python example with {marker!r} in the README section"
    return found[0]


# The example is for a Glow on digits: run it on that variant only (the fixture's other
# parameters are not collected for this test, rather than collected and skipped).
@pytest.mark.parametrize("exported", ["glow_affine_lu"], indirect=True)
def test_readme_example_runs(exported, tmp_path, monkeypatch):
    code = readme_example()
    assert len(code.strip().splitlines()) <= 12, code
    assert "glow_digits.pt" in code and "range(100)" in code
    code = code.replace("glow_digits.pt", str(exported["pt"])).replace("range(100)", "range(3)")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README example", "exec"), namespace)
    assert (tmp_path / "glow_digits_finetuned.pt").is_file()
    assert namespace["loss"].item() > 0
