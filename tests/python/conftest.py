"""Shared by the export tests (TorchScript: test_export.py; plain PyTorch source:
test_export_python.py): tiny trained models of every family, exported both ways once per
session, and the Rust model's reference outputs (see test_export.py's docstring)."""
import json
import math
import os
import pathlib
import subprocess

import pytest
import torch
from safetensors.torch import load_file, save_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("FLOWZOO_BIN") or str(ROOT / "target" / "release" / "flowzoo")

# Tiny models of every family, trained a few steps so that every layer (ActNorm data init,
# couplings, priors, batch-norm statistics) is away from its identity initialisation.
COMMON = [
    "train.max_steps=8",
    "train.warmup_steps=1",
    "train.lr=0.003",
    "train.batch_size=32",
    "train.eval_every=8",
    "train.sample_every=0",
    "train.checkpoint_every=8",
    "train.threads=2",
]
GLOW = ["model.steps=2", "model.levels=2", "model.width=16"]
DIGITS = "configs/glow_digits.toml"
VARIANTS = {
    # Glow on 8x8x1 digits (K=2, L=2, width 16).
    "glow_affine_lu": dict(config=DIGITS, sets=GLOW + ["model.coupling=affine", "model.permutation=invconv_lu"]),
    "glow_additive_reverse": dict(config=DIGITS, sets=GLOW + ["model.coupling=additive", "model.permutation=reverse"]),
    "glow_affine_invconv": dict(config=DIGITS, sets=GLOW + ["model.coupling=affine", "model.permutation=invconv"]),
    "glow_shuffle_conditional": dict(
        config=DIGITS, sets=GLOW + ["model.permutation=shuffle", "model.conditional=true"], conditional=True
    ),
    # rosinality/glow-pytorch's conventions (what `flowzoo import rosinality` builds): linear
    # ActNorm, biased hidden convs, zero-convs padded with ones, contiguous halves.
    "glow_rosinality": dict(config=DIGITS, sets=GLOW + ["model.style=rosinality", "model.permutation=invconv"]),
    # RealNVP on images (checkerboard and channel couplings, batch norm, squeeze, split).
    "realnvp_image": dict(config=DIGITS, sets=["model.kind=realnvp", "model.levels=2", "model.width=16"]),
    # RealNVP and NICE on vectors (MLP conditioners, standardisation, batch norm / ActNorm,
    # permutations, a diagonal Gaussian base, NICE's scaling).
    "realnvp_moons": dict(config="configs/realnvp_moons.toml", sets=["model.blocks=2", "model.width=16"], dim=2),
    "realnvp_digits64_halves": dict(
        config="configs/realnvp_digits64.toml",
        sets=["model.blocks=2", "model.width=16", "model.norm=actnorm", "model.mask=halves",
              "model.permutation=invconv_lu", "model.base=diag_gaussian", "model.activation=tanh"],
        dim=64,
    ),
    "nice_digits64": dict(config="configs/nice_digits64.toml", sets=["model.blocks=2", "model.width=16"], dim=64),
    # Autoregressive and spline flows: MADE masks and orders as buffers, the sequential and
    # Jacobi inverse loops (sampling a MAF, the density of an IAF), splines in MADEs (NSF-AR,
    # residual blocks) and in couplings (NSF-C), LU-linear maps and batch norm between layers.
    "maf_moons": dict(config="configs/maf_moons.toml", sets=["model.blocks=2", "model.width=16"], dim=2),
    "maf_digits64_jacobi": dict(
        config="configs/maf_digits64.toml",
        sets=["model.blocks=2", "model.width=32", "model.inverse=jacobi", "model.made_order=random",
              "model.made_degrees=random", "model.permutation=invconv_lu"],
        dim=64,
    ),
    "iaf_moons": dict(config="configs/iaf_moons.toml", sets=["model.blocks=2", "model.width=16"], dim=2),
    # An IAF's density through Jacobi's loop, which stops early (test_export_python.py checks
    # that torch.export / torch.compile, which trace every iteration, give the same result).
    "iaf_digits64_jacobi": dict(
        config="configs/maf_digits64.toml",
        sets=["model.kind=iaf", "model.blocks=2", "model.width=16", "model.inverse=jacobi", "model.jacobi_tol=1e-4"],
        dim=64,
    ),
    "nsf_ar_moons": dict(config="configs/nsf_moons.toml", sets=["model.blocks=2", "model.width=16", "model.residual=true"], dim=2),
    # Conditional density estimation: p(x, y | rotation) on the rotated moons, the context
    # (`data.context_columns`) an argument of every method (`log_prob(x, context)`).
    "nsf_moons_conditional": dict(
        config="configs/nsf_moons_conditional.toml", sets=["model.blocks=2", "model.width=16"], dim=2, conditional=True, context=1
    ),
    "nsf_c_digits64": dict(config="configs/nsf_digits64.toml", sets=["model.blocks=2", "model.width=16", "model.norm=batchnorm"], dim=64),
    # FFJORD (hidden 16): the adaptive Dormand-Prince in the module, and RK4 chosen by the config's
    # eval_solver (two blocks with batch norm, zuko's MLP field, softplus). The Rust reference
    # integrates with the same solver. Dormand-Prince takes the same steps as the Rust one when
    # its host-side accept/reject comparisons of the error estimate come out the same; in
    # float32 a last-bit difference between the two processes' kernels (other thread counts,
    # other blocking) could flip one and move the result by up to the solver's tolerance
    # (rtol = atol = 1e-5), hence float32's `tol` (measured on one machine: identical, 0).
    # `roundtrip`: inverse(forward(x)) is x only to the solver's accuracy (Dormand-Prince: its
    # tolerance; RK4 at 8 steps: its truncation error).
    "ffjord_pinwheel": dict(
        config="configs/ffjord_pinwheel.toml", sets=["model.cnf.hidden=[16, 16]"], dim=2, ode="dopri5",
        tol={torch.float64: 1e-10, torch.float32: 1e-4}, roundtrip=1e-4,
    ),
    "ffjord_8gaussians_rk4": dict(
        config="configs/ffjord_8gaussians.toml",
        sets=["model.cnf.hidden=[16]", "model.blocks=2", "model.norm=batchnorm", "model.cnf.layer_type=mlp",
              "model.cnf.activation=softplus", "model.cnf.eval_solver=rk4", "model.cnf.eval_steps=8"],
        dim=2, ode="rk4", roundtrip=1e-4,
    ),
    # FFJORD's multi-scale image model (conv fields, squeeze, split, ActNorm), RK4 in the module:
    # its exact trace takes the one-hot images where the Rust layer takes the conv's colours.
    "ffjord_image_rk4": dict(
        config="configs/ffjord_digits.toml",
        sets=["model.cnf.hidden=[8]", "model.cnf.solver=rk4", "model.cnf.steps=4", "model.cnf.eval_solver=rk4", "model.cnf.eval_steps=8"],
        ode="rk4", roundtrip=1e-3,
    ),
}
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
BATCHES = (3, 5)

REPORT = {}


def record(variant, what, dtype, diff):
    key = f"{variant}/{str(dtype).replace('torch.', '')}/{what}"
    REPORT[key] = max(REPORT.get(key, 0.0), float(diff))


@pytest.fixture(scope="session", autouse=True)
def write_report():
    yield
    path = os.environ.get("FLOWZOO_EXPORT_REPORT")
    if path:
        pathlib.Path(path).write_text(json.dumps(REPORT, indent=1, sort_keys=True))


def flowzoo(*args, check=True):
    r = subprocess.run([BIN, *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"flowzoo {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def max_diff(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


@pytest.fixture(scope="session", params=sorted(VARIANTS))
def exported(request, tmp_path_factory):
    name = request.param
    v = VARIANTS[name]
    d = tmp_path_factory.mktemp(name)
    run = d / "run"
    sets = []
    for s in COMMON + v["sets"]:
        sets += ["--set", s]
    flowzoo("train", "--config", v["config"], "--out", run, *sets, "-q")
    pt, st, py = d / "model.pt", d / "weights.safetensors", d / "py"
    out = flowzoo("export", "--model", run, "--torchscript", pt, "--safetensors", st, "--python", py)
    assert pt.is_file() and st.is_file() and (py / "weights.safetensors").is_file(), out.stdout
    image = "dim" not in v
    return {
        "name": name, "run": run, "pt": pt, "st": st, "dir": d, "py": py,
        "conditional": v.get("conditional", False),
        # The size of a context of column values (0: labels or nothing) and the name of the
        # methods' conditioning argument.
        "context": v.get("context", 0),
        "arg": "context" if v.get("context") else "labels",
        "image": image,
        "shape": (1, 8, 8) if image else (v["dim"],),
        "dim": 64 if image else v["dim"],
        # FFJORD: the exported solver, and the tolerances that fit it (see VARIANTS).
        "ode": v.get("ode"),
        "tol": v.get("tol", TOL),
        "roundtrip": v.get("roundtrip"),
    }


def cond_input(ex, b, shift=0, dtype=torch.float32):
    """What conditions a model's `b` points: class labels (0..9, shifted by `shift`), a context of
    raw column values (seeded by `b` and `shift`), or None."""
    if ex["context"]:
        return torch.rand(b, ex["context"], generator=torch.Generator().manual_seed(1000 * shift + b)).to(dtype)
    if ex["conditional"]:
        return (torch.arange(b) + shift) % 10
    return None


def make_x(ex, b, g, dtype=torch.float32):
    """Points in model space: dequantised 4-bit images in [-0.5, 0.5), or rows like the data."""
    if ex["image"]:
        x = torch.floor(torch.rand(b, 1, 8, 8, generator=g) * 16) / 16 - 0.5 + torch.rand(b, 1, 8, 8, generator=g) / 16
    elif ex["dim"] == 64:  # digits64: grey levels 0..16 plus U(0, 1) noise
        x = torch.floor(torch.rand(b, 64, generator=g) * 17) + torch.rand(b, 64, generator=g)
    else:  # moons
        x = torch.randn(b, ex["dim"], generator=g)
    return x.to(dtype)


def load(ex, dtype=torch.float32):
    m = torch.jit.load(str(ex["pt"]))
    m.eval()
    return m.double() if dtype == torch.float64 else m


def reference(ex, inputs, tag):
    """The Rust model's outputs on `inputs` (see write_reference in src/export/mod.rs)."""
    fin, fout = ex["dir"] / f"ref_in_{tag}.safetensors", ex["dir"] / f"ref_out_{tag}.safetensors"
    save_file({k: v.contiguous() for k, v in inputs.items()}, str(fin))
    flowzoo("export", "--model", ex["run"], "--reference-in", fin, "--reference-out", fout)
    return load_file(str(fout))


