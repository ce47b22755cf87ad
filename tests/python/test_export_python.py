"""flowzoo export --python: every model family as plain PyTorch source, checked from PyTorch.

For each tiny trained model of conftest.py, the generated module is imported from its folder
and checked: its state_dict is the TorchScript export's (names, values); its log_prob, forward,
inverse and seeded samples match the Rust model's reference outputs (float32 to 1e-5 relative,
float64 to 1e-10); `torch.export.export` accepts it with a dynamic batch size and the exported
program computes the same; `torch.compile(m.log_prob, fullgraph=True)` captures it without a
graph break (aot_eager: dynamo and AOT autograd, without code generation, which costs minutes
on 2 cores; one model also compiles with Inductor); and it trains (loss.backward, Adam).
"""
import importlib.util
import sys
from typing import Optional

import pytest
import torch
from safetensors.torch import load_file

from conftest import BATCHES, TOL, cond_input, load, make_x, max_diff, record, reference
from test_export import readme_example

torch.set_num_threads(2)


def module_of(ex):
    """The generated Python module of an export folder (imported under a unique name)."""
    files = [f for f in ex["py"].iterdir() if f.suffix == ".py"]
    assert len(files) == 1, files
    name = f"flowzoo_export_{ex['name']}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, files[0])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def load_py(ex, dtype=torch.float32):
    m = module_of(ex).load(str(ex["py"]))
    m.eval()
    return m.double() if dtype == torch.float64 else m


def labels_for(ex, b, dtype=torch.float32):
    return cond_input(ex, b, 0, dtype)


def test_imports_only_torch(exported):
    src = next(f for f in exported["py"].iterdir() if f.suffix == ".py").read_text()
    imports = {line.split()[1].split(".")[0] for line in src.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"os", "typing", "torch"}, imports
    # one class per layer kind: a Glow of 2 levels x 2 steps has far more layers than classes.
    assert src.count("\nclass ") < 25


def test_same_state_dict_as_torchscript(exported):
    m, ts = load_py(exported), load(exported)
    sd, tsd = m.state_dict(), ts.state_dict()
    assert list(sd) == sorted(sd, key=list(sd).index) and sorted(sd) == sorted(tsd)
    for k, v in tsd.items():
        assert torch.equal(sd[k], v), k
    weights = load_file(str(exported["py"] / "weights.safetensors"))
    assert sorted(weights) == sorted(sd)
    assert {k for k, _ in m.named_parameters()} == {k for k, _ in ts.named_parameters()}
    assert m.dim == ts.dim and m.n_classes == ts.n_classes and m.n_bits == ts.n_bits and m.context_dim == ts.context_dim
    assert m.event_shape() == ts.event_shape()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_matches_the_rust_model(exported, dtype):
    m = load_py(exported, dtype)
    name, dim = exported["name"], exported["dim"]
    for b in BATCHES:
        g = torch.Generator().manual_seed(200 + b)
        x = make_x(exported, b, g, dtype)
        eps = torch.randn(b, dim, generator=g).to(dtype) * 0.8
        inputs = {"x": x, "eps": eps, "sample_n": torch.tensor([b]), "sample_temperature": torch.tensor([0.7], dtype=torch.float64),
                  "sample_seed": torch.tensor([11 + b])}
        labels = labels_for(exported, b, dtype)
        if labels is not None:
            inputs.update(labels=labels, eps_labels=labels.clone(), sample_labels=labels.clone())
        ref = reference(exported, inputs, f"py_{dtype}_{b}".replace("torch.", ""))
        with torch.no_grad():
            z, ld = m(x, labels)
            checks = {"forward_z": (z, ref["z"]), "forward_logabsdet": (ld, ref["logabsdet"]),
                      "log_prob": (m.log_prob(x, labels), ref["log_prob"]), "inverse_eps": (m.inverse(eps, labels), ref["inverse_eps"])}
            if exported["image"]:
                checks["bits_per_dim"] = (m.bits_per_dim(x, labels), ref["bits_per_dim"])
            torch.manual_seed(11 + b)
            checks["sample"] = (m.sample(b, 0.7, labels), ref["sample"])
        for what, (got, want) in checks.items():
            diff = max_diff(got, want)
            record(name + "/python", what, dtype, diff)
            scale = 1.0 if dtype == torch.float64 else max(1.0, want.abs().max().item())
            assert diff <= exported["tol"][dtype] * scale, f"{name} {dtype} B={b} {what}: {diff:.3e}"


class FixedSteps(torch.nn.Module):
    """FFJORD's forward with RK4 at 8 steps: torch.export and torch.compile(fullgraph=True) need
    a graph without data-dependent control flow, and the adaptive solver decides every step from
    a host read of its error estimate (it runs in eager PyTorch and TorchScript only)."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x, labels: Optional[torch.Tensor] = None):
        return self.m.forward_ode(x, labels, "rk4", 8)

    def log_prob(self, x, labels: Optional[torch.Tensor] = None):
        return self.m.log_prob_ode(x, labels, "rk4", 8)


def graph_friendly(ex, m):
    """The module itself, or (FFJORD exported with the adaptive solver) its fixed-step path."""
    return FixedSteps(m) if ex["ode"] == "dopri5" else m


def test_torch_export_with_a_dynamic_batch(exported):
    m = graph_friendly(exported, load_py(exported))
    batch = torch.export.Dim("batch", min=2, max=1024)
    x = make_x(exported, 4, torch.Generator().manual_seed(3))
    args, shapes = (x,), {"x": {0: batch}}
    if exported["conditional"]:
        args, shapes = (x, labels_for(exported, 4)), {"x": {0: batch}, exported["arg"]: {0: batch}}
    ep = torch.export.export(m, args, dynamic_shapes=shapes)
    for b in (3, 9):
        xb = make_x(exported, b, torch.Generator().manual_seed(b))
        lb = labels_for(exported, b)
        z1, ld1 = ep.module()(xb, lb) if lb is not None else ep.module()(xb)
        with torch.no_grad():
            z2, ld2 = m(xb, lb)
        assert z1.shape == (b, exported["dim"])
        assert max_diff(ld1, ld2) <= 1e-4 * max(1.0, ld2.abs().max().item())
        assert max_diff(z1, z2) <= 1e-4


def test_torch_compile_captures_log_prob_whole(exported):
    m = graph_friendly(exported, load_py(exported))
    torch._dynamo.reset()
    x = make_x(exported, 5, torch.Generator().manual_seed(4))
    labels = labels_for(exported, 5)
    compiled = torch.compile(m.log_prob, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        want = m.log_prob(x, labels)
        got = compiled(x, labels)
    assert max_diff(got, want) <= 1e-5 * max(1.0, want.abs().max().item())


# Inductor's code generation takes minutes on 2 cores: one small model (the fixture's other
# parameters are not collected for this test, rather than collected and skipped).
@pytest.mark.parametrize("exported", ["realnvp_moons"], indirect=True)
def test_inductor_compiles_one_model(exported):
    m = load_py(exported)
    torch._dynamo.reset()
    x = make_x(exported, 6, torch.Generator().manual_seed(5))
    compiled = torch.compile(m.log_prob)
    with torch.no_grad():
        assert max_diff(compiled(x), m.log_prob(x)) <= 1e-4


def test_trains_with_adam(exported):
    m = load_py(exported)
    m.train()
    x = make_x(exported, 32, torch.Generator().manual_seed(6))
    labels = labels_for(exported, 32)
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = -m.log_prob(x, labels).mean() / exported["dim"]
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = (-m.log_prob(x, labels).mean() / exported["dim"]).item()
    assert final < losses[0] - 1e-3, (losses, final)
    # The trained weights go back into the TorchScript module under the same names.
    ts = load(exported)
    ts.load_state_dict(m.state_dict())
    with torch.no_grad():
        assert max_diff(ts.log_prob(x, labels), m.log_prob(x, labels)) <= 1e-4 * max(1.0, m.log_prob(x, labels).abs().max().item())


@pytest.mark.parametrize("exported", ["iaf_digits64_jacobi"], indirect=True)
def test_jacobi_early_stop_is_the_traced_fixed_count(exported, monkeypatch):
    """Jacobi's inverse stops when no feature moves by more than the tolerance: eager PyTorch
    breaks out of the loop; under torch.export / torch.compile (no branching on a tensor's
    value) every one of the D iterations runs and those after the stop keep x and the log-det
    (`torch.where`). Both give the same numbers, and the stop really happens here."""
    m = load_py(exported, torch.float64)
    x = make_x(exported, 5, torch.Generator().manual_seed(8), torch.float64)
    calls = []
    for mod in m.modules():
        if hasattr(mod, "masked") and hasattr(mod, "hidden"):  # the MADEs
            orig = mod.hidden
            mod.hidden = lambda *a, orig=orig: calls.append(1) or orig(*a)
    with torch.no_grad():
        eager = m.log_prob(x)
    layers = 2
    assert 0 < len(calls) < layers * exported["dim"], len(calls)
    calls.clear()
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    with torch.no_grad():
        traced_path = m.log_prob(x)
    assert len(calls) == layers * exported["dim"]
    assert torch.equal(eager, traced_path)


@pytest.mark.parametrize("exported", ["glow_affine_lu"], indirect=True)
def test_readme_example_runs(exported, monkeypatch):
    code = readme_example("torch.export.export")
    assert len(code.strip().splitlines()) <= 8, code
    code = code.replace("glow_digits_py", str(exported["py"]))
    namespace = {}
    exec(compile(code, "README example (plain PyTorch)", "exec"), namespace)
    x = torch.rand(3, 1, 8, 8) - 0.5
    with torch.no_grad():
        assert max_diff(namespace["log_prob"](x), namespace["m"].log_prob(x)) < 1e-3
        assert namespace["ep"].module()(x)[0].shape == (3, 64)
