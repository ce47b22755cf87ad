"""`flowzoo import` against the PyTorch reference Glow (python/flowzoo_ref, written from
/work/shared/interop/glow-pytorch-semantics.md, no code of either public repository).

Small models of both conventions (16x16x3, K=4, L=2) with every parameter moved away from its
initial value (zero-convs included) and ActNorm initialised from data are saved the ways users
have them (a state_dict .pt, a checkpoint dict, DataParallel keys, .safetensors), imported, and
compared: per-image bits/dim (`flowzoo eval --tensors --json`) and samples given the same noise
(`flowzoo sample --eps --raw-out`) to 1e-4. Then the error paths, and the round trip
export -> fine-tune in PyTorch -> `import state-dict`.

Run: FLOWZOO_BIN=target/release/flowzoo python -m pytest tests/python/test_import.py
"""
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))

from flowzoo_ref import Glow, dequantize, preprocess  # noqa: E402
from flowzoo_ref.glow import ActNorm  # noqa: E402

torch.set_num_threads(1)
BIN = os.environ.get("FLOWZOO_BIN", str(ROOT / "target" / "release" / "flowzoo"))
SIZE, C, K, L = 16, 3, 4, 2
B = 6
T = 0.7
TOL = 1e-4


def flowzoo(*args, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([BIN, *map(str, args)], capture_output=True, text=True, env=env, cwd=ROOT)
    if check and p.returncode != 0:
        raise AssertionError(f"flowzoo {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stderr}")
    return p


def fails(*args, needles=()):
    p = flowzoo(*args, check=False)
    assert p.returncode == 1, f"expected a clean failure, got {p.returncode}:\n{p.stdout}\n{p.stderr}"
    assert "panicked" not in p.stderr and "backtrace" not in p.stderr, p.stderr
    for n in needles:
        assert n in p.stderr, f"{n!r} not in:\n{p.stderr}"
    return p.stderr


def make_model(style, *, width, affine=True, lu=True, learn_top=True, n_bits=8, seed=0):
    """A float32 model with every parameter moved away from its init: the non-ActNorm ones are
    perturbed, the ActNorms initialised from a batch (so activations stay normalised), then
    perturbed in turn."""
    torch.manual_seed(seed)
    model = Glow(C, SIZE, K=K, L=L, width=width, affine=affine, lu=lu, learn_top=learn_top, n_bits=n_bits, style=style)
    g = torch.Generator().manual_seed(seed + 1)
    x = dequantize(preprocess(torch.randint(0, 256, (32, C, SIZE, SIZE), generator=g), n_bits), n_bits, g)
    actnorm = {id(p) for m in model.modules() if isinstance(m, ActNorm) for p in m.parameters()}

    def perturb(select):
        for name, p in model.named_parameters():
            if select(id(p) in actnorm):
                std = 0.1 / math.sqrt(p[0].numel()) if p.dim() >= 2 and p.shape[0] > 1 else 0.1
                noise = std * torch.randn(p.shape, generator=g)
                if name.endswith("actnorm.scale"):
                    p.mul_(torch.exp(noise))
                else:
                    p.add_(noise)

    model.train()
    with torch.no_grad():
        perturb(lambda is_an: not is_an)
        model.log_prob(x)  # ActNorm's data-dependent init
        perturb(lambda is_an: is_an)
    model.eval()
    for name, p in model.named_parameters():
        assert (p != 0).any(), f"{name} is still zero"
    return model


def data(n_bits, seed=5):
    g = torch.Generator().manual_seed(seed)
    return dequantize(preprocess(torch.randint(0, 256, (B, C, SIZE, SIZE), generator=g), n_bits), n_bits, g)


def reference(model, x):
    """bpd in float64 of the float32 weights, and samples from fixed noise."""
    m64 = _double_copy(model)
    with torch.no_grad():
        bpd = m64.bpd(x.double())
        g = torch.Generator().manual_seed(11)
        eps = [torch.randn((B,) + s, generator=g, dtype=torch.float64) for s in m64.latent_shapes()]
        xs = m64.sample(eps, T)
    flat = torch.cat([e.reshape(B, -1) for e in eps], 1).float()
    return bpd, flat, xs


def _double_copy(model):
    import copy

    m = copy.deepcopy(model).double()
    m.eval()
    return m


def y0ast_hparams(**kw):
    hp = dict(K=K, L=L, hidden_channels=64, flow_coupling="affine", flow_permutation="invconv", LU_decomposed=True,
              learn_top=True, actnorm_scale=1.0, y_condition=False, dataset="cifar10", n_init_batches=8, lr=5e-4)
    hp.update(kw)
    return hp


def write_json(path, obj):
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    if not pathlib.Path(BIN).exists():
        pytest.fail(f"flowzoo binary {BIN} not found: build it (make build) or set FLOWZOO_BIN")
    return tmp_path_factory.mktemp("import")


# (name, style, model kwargs, how the file is saved, import arguments)
CASES = {
    "y0ast-affine-lu": ("y0ast", dict(width=64), "state_dict",
                        lambda d, w: ["y0ast", "--weights", w, "--hparams", write_json(d / "hp1.json", y0ast_hparams()),
                                      "--image-size", SIZE]),
    "y0ast-additive-plain-notop": ("y0ast", dict(width=64, affine=False, lu=False, learn_top=False), "data_parallel",
                                   lambda d, w: ["y0ast", "--weights", w, "--hparams", write_json(
                                       d / "hp2.json", y0ast_hparams(flow_coupling="additive", LU_decomposed=False,
                                                                     learn_top=False, dataset="faces"))]),
    "rosinality-affine-lu": ("rosinality", dict(width=32, n_bits=5), "checkpoint",
                             lambda d, w: ["rosinality", "--weights", w, "--n-flow", K, "--n-block", L, "--affine",
                                           "--image-size", SIZE]),
    "rosinality-additive-nolu": ("rosinality", dict(width=32, affine=False, lu=False, n_bits=5), "safetensors",
                                 lambda d, w: ["rosinality", "--weights", w, "--n-flow", K, "--n-block", L, "--no-lu",
                                               "--image-size", SIZE, "--n-bits", 5]),
}


def save(model, how, path):
    sd = model.state_dict()
    if how == "state_dict":
        torch.save(sd, path)
    elif how == "data_parallel":
        torch.save({"module." + k: v for k, v in sd.items()}, path)
    elif how == "checkpoint":
        opt = torch.optim.Adam(model.parameters())
        torch.save({"model": sd, "optimizer": opt.state_dict(), "step": 5, "args": {"n_flow": K}}, path)
    elif how == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        raise ValueError(how)


@pytest.fixture(scope="module")
def imported(work):
    """Every case imported once: name -> (model, run dir, x, reference bpd, eps, reference samples)."""
    out = {}
    for i, (name, (style, kw, how, args)) in enumerate(CASES.items()):
        model = make_model(style, seed=i, **kw)
        w = work / f"{name}.{'safetensors' if how == 'safetensors' else 'pt'}"
        save(model, how, w)
        run = work / f"run-{name}"
        p = flowzoo("import", *args(work, w), "-o", run)
        assert "imported" in p.stdout, p.stdout
        x = data(model.n_bits, seed=20 + i)
        save_file({"x": x.contiguous()}, str(work / f"x-{name}.safetensors"))
        bpd, eps, xs = reference(model, x)
        save_file({"eps": eps.contiguous()}, str(work / f"eps-{name}.safetensors"))
        out[name] = (model, run, x, bpd, eps, xs)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_bits_per_dim_match_pytorch(name, imported, work):
    model, run, x, bpd_ref, _, _ = imported[name]
    res = json.loads(flowzoo("eval", "--model", run, "--tensors", f"{work}/x-{name}.safetensors:x", "--json").stdout)
    bpd = torch.tensor(res["bpd"], dtype=torch.float64)
    diff = (bpd - bpd_ref).abs().max().item()
    print(f"{name}: max |bpd - PyTorch| = {diff:.2e} (bpd {bpd_ref.mean().item():.4f})")
    assert bpd.shape == bpd_ref.shape
    assert diff < TOL, (bpd, bpd_ref)
    # the log-likelihood in nats agrees too (D ln2 · bpd scale)
    D = C * SIZE * SIZE
    lp_ref = -(bpd_ref * D * math.log(2)) + D * math.log(2 ** model.n_bits)
    assert (torch.tensor(res["log_prob"], dtype=torch.float64) - lp_ref).abs().max().item() < TOL * D * math.log(2)


@pytest.mark.parametrize("name", list(CASES))
def test_samples_from_the_same_noise_match_pytorch(name, imported, work):
    model, run, _, _, eps, xs_ref = imported[name]
    raw = work / f"raw-{name}.safetensors"
    flowzoo("sample", "--model", run, "--eps", f"{work}/eps-{name}.safetensors:eps", "--temperature", T,
            "--raw-out", raw, "-o", work / f"grid-{name}.png")
    xs = load_file(str(raw))["x"].double()
    assert xs.shape == xs_ref.shape
    diff = (xs - xs_ref).abs().max().item()
    print(f"{name}: max |sample - PyTorch| = {diff:.2e} (sample range {xs_ref.abs().max().item():.2f})")
    assert diff < TOL
    assert (work / f"grid-{name}.png").stat().st_size > 0


def test_imported_run_is_an_ordinary_run(imported):
    _, run, _, _, _, _ = imported["rosinality-affine-lu"]
    for f in ["config.toml", "state.json", "weights.safetensors", "best.safetensors", "optimizer.safetensors"]:
        assert (run / f).is_file(), f
    cfg = (run / "config.toml").read_text()
    assert 'style = "rosinality"' in cfg and "n_bits = 5" in cfg and "image_size = 16" in cfg, cfg
    info = flowzoo("info", "--model", run).stdout
    assert "rosinality" in info and "K=4" in info, info
    y = (imported["y0ast-affine-lu"][1] / "config.toml").read_text()
    assert 'style = "flowzoo"' in y and 'path = "data/cifar10"' in y and "width = 64" in y, y
    # nothing temporary left next to the runs
    assert not [p for p in run.parent.iterdir() if p.name.endswith(".tmp")]


def _write_png(path, w, h, rgb):
    """A minimal 8-bit RGB PNG (no imaging library needed)."""
    import struct
    import zlib

    raw = b"".join(b"\x00" + bytes(rgb[y * w * 3:(y + 1) * w * 3]) for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_imported_run_fine_tunes_with_train_resume(imported, work):
    import random
    import shutil

    rng = random.Random(0)
    folder = work / "pngs"
    folder.mkdir()
    for i in range(12):
        _write_png(folder / f"{i}.png", SIZE, SIZE, [rng.randrange(256) for _ in range(SIZE * SIZE * 3)])
    run = work / "run-finetune"
    shutil.copytree(imported["rosinality-affine-lu"][1], run)
    before = (run / "weights.safetensors").read_bytes()
    p = flowzoo("train", "--resume", "--out", run, "--data", folder, "-q", "--set", "train.max_steps=2",
                "--set", "train.eval_every=2", "--set", "train.checkpoint_every=2", "--set", "train.sample_every=100",
                "--set", "train.batch_size=4", "--set", "train.threads=1", "--set", 'train.device="cpu"')
    assert "trained 2 steps" in p.stdout, p.stdout
    assert (run / "weights.safetensors").read_bytes() != before
    assert json.loads((run / "state.json").read_text())["step"] == 2
    res = json.loads(flowzoo("eval", "--model", run, "--data", folder, "--json").stdout)
    assert math.isfinite(res["mean_bpd"])


# ---------------------------------------------------------------------------------------------
# error paths: clear messages naming the key and shapes, nothing written
def _no_run(path):
    assert not path.exists(), f"{path} was written"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")], "temporary folder left behind"


@pytest.fixture(scope="module")
def y0ast_sd(imported):
    return imported["y0ast-affine-lu"][0].state_dict()


def test_missing_key_is_named_with_its_shape(work, y0ast_sd):
    sd = dict(y0ast_sd)
    del sd["flow.layers.3.invconv.lower"]
    w = work / "missing.pt"
    torch.save(sd, w)
    out = work / "run-missing"
    fails("import", "y0ast", "--weights", w, "--hparams", work / "hp1.json", "--image-size", SIZE, "-o", out,
          needles=["missing key flow.layers.3.invconv.lower (expected shape [12, 12])", "nothing was written"])
    _no_run(out)


def test_unexpected_key_is_named(work, y0ast_sd):
    sd = dict(y0ast_sd)
    sd["flow.layers.3.extra.weight"] = torch.zeros(2, 3)
    w = work / "unexpected.pt"
    torch.save(sd, w)
    out = work / "run-unexpected"
    fails("import", "y0ast", "--weights", w, "--hparams", work / "hp1.json", "--image-size", SIZE, "-o", out,
          needles=["unexpected key flow.layers.3.extra.weight (shape [2, 3])"])
    _no_run(out)


def test_shape_mismatch_names_key_expected_and_found(work):
    w = work / "y0ast-affine-lu.pt"
    hp = write_json(work / "hp-wrong.json", y0ast_hparams(hidden_channels=32))
    out = work / "run-shape"
    err = fails("import", "y0ast", "--weights", w, "--hparams", hp, "--image-size", SIZE, "-o", out,
                needles=["key flow.layers.1.block.0.conv.weight: expected shape [32, 6, 3, 3], found [64, 6, 3, 3]",
                         "hidden_channels = 64"])
    assert "problems" in err
    _no_run(out)


def test_wrong_image_size_is_a_shape_mismatch(work):
    out = work / "run-size"
    fails("import", "y0ast", "--weights", work / "y0ast-affine-lu.pt", "--hparams", work / "hp1.json", "-o", out,
          needles=["key prior_h: expected shape [1, 48, 8, 8], found [1, 48, 4, 4]", "image size 16"])
    _no_run(out)


def test_rosinality_options_hint(work):
    out = work / "run-ros-hint"
    fails("import", "rosinality", "--weights", work / "rosinality-affine-lu.pt", "--n-flow", K, "--n-block", L,
          "--image-size", SIZE, "-o", out,
          needles=["blocks.0.flows.0.coupling.net.4.conv.weight: expected shape [6, 32, 3, 3], found [12, 32, 3, 3]",
                   "--affine"])
    _no_run(out)


def test_legacy_format_says_how_to_convert(work, y0ast_sd):
    w = work / "legacy.pt"
    torch.save(y0ast_sd, w, _use_new_zipfile_serialization=False)
    out = work / "run-legacy"
    fails("import", "y0ast", "--weights", w, "--hparams", work / "hp1.json", "--image-size", SIZE, "-o", out,
          needles=["legacy", "torch.save(torch.load("])
    _no_run(out)
    # the conversion it prints works
    conv = work / "converted.pt"
    torch.save(torch.load(w, map_location="cpu", weights_only=True), conv)
    flowzoo("import", "y0ast", "--weights", conv, "--hparams", work / "hp1.json", "--image-size", SIZE,
            "-o", work / "run-converted")


def test_existing_run_dir_is_not_overwritten(work, imported):
    run = imported["y0ast-affine-lu"][1]
    before = (run / "weights.safetensors").read_bytes()
    fails("import", "y0ast", "--weights", work / "y0ast-affine-lu.pt", "--hparams", work / "hp1.json",
          "--image-size", SIZE, "-o", run, needles=["already exists"])
    assert (run / "weights.safetensors").read_bytes() == before


def test_pickled_code_is_not_executed(work, y0ast_sd):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {work}/pwned",))

    w = work / "evil.pt"
    torch.save({"model": dict(y0ast_sd), "evil": Evil()}, w)
    out = work / "run-evil"
    flowzoo("import", "y0ast", "--weights", w, "--hparams", work / "hp1.json", "--image-size", SIZE, "-o", out)
    assert not (work / "pwned").exists()


# ---------------------------------------------------------------------------------------------
# round trip: export -> fine-tune in PyTorch -> import state-dict
@pytest.mark.parametrize("name", ["y0ast-affine-lu", "rosinality-affine-lu"])
def test_round_trip_export_finetune_import(name, imported, work):
    _, run, x, bpd_ref, _, _ = imported[name]
    ts = work / f"export-{name}.pt"
    flowzoo("export", "--model", run, "--torchscript", ts)
    m = torch.jit.load(str(ts))
    with torch.no_grad():
        before = m.log_prob(x)
        # the exported module keeps the imported conventions: it matches the PyTorch reference
        export_diff = (m.double().bits_per_dim(x.double()) - bpd_ref).abs().max().item()
        m.float()
    print(f"{name}: exported TorchScript, max |bpd - reference| = {export_diff:.2e}")
    assert export_diff < TOL
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    m.train()
    for _ in range(3):
        opt.zero_grad()
        loss = -m.log_prob(x).mean()
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        after = m.log_prob(x)
    assert (after - before).abs().max().item() > 1e-3, "fine-tuning changed nothing"
    sd_file, jit_file = work / f"ft-{name}.pt", work / f"ft-{name}.jit.pt"
    torch.save(m.state_dict(), sd_file)
    torch.jit.save(m, str(jit_file))
    D = C * SIZE * SIZE
    for i, f in enumerate([sd_file, jit_file]):
        out = work / f"run-ft-{name}-{i}"
        flowzoo("import", "state-dict", "--weights", f, "--like", run, "-o", out)
        res = json.loads(flowzoo("eval", "--model", out, "--tensors", f"{work}/x-{name}.safetensors:x", "--json").stdout)
        lp = torch.tensor(res["log_prob"], dtype=torch.float64)
        diff = (lp - after.double()).abs().max().item()
        print(f"{name} round trip ({f.name}): max |log_prob - PyTorch| = {diff:.2e} nats ({diff / (D * math.log(2)):.1e} bits/dim)")
        assert diff / (D * math.log(2)) < TOL, (lp, after)


def test_state_dict_errors(work, imported):
    run = imported["y0ast-affine-lu"][1]
    sd = load_file(str(run / "weights.safetensors"))
    bad = dict(sd)
    name = "levels.0.steps.0.coupling.net.0.conv.weight"
    bad[name] = bad[name][:32]
    bad.pop("prior.learn_top.logs")
    f = work / "bad-sd.pt"
    torch.save(bad, f)
    out = work / "run-bad-sd"
    fails("import", "state-dict", "--weights", f, "--like", run, "-o", out,
          needles=[f"key {name}: expected shape [64, 6, 3, 3], found [32, 6, 3, 3]",
                   "missing key prior.learn_top.logs (expected shape [48, 1, 1])"])
    _no_run(out)
    # a y0ast file given to state-dict says which command to use
    fails("import", "state-dict", "--weights", work / "y0ast-affine-lu.pt", "--like", run, "-o", out,
          needles=["flowzoo import y0ast"])
    _no_run(out)
