#!/usr/bin/env python3
"""flowzoo's tabular RealNVP against the same architecture in nflows (run by bench/tabular.sh).

For every dataset the same work is given to both sides:
  * the SAME split: this script splits the data (seeded permutation, --test-fraction held out)
    and writes train.csv / test.csv; flowzoo trains on train.csv with data.test_fraction = 0
    and data.val_fraction = 0, so there is no validation set and no early stopping on either
    side: both train a fixed number of epochs and are scored with their FINAL weights.
    Data with uniform dequantisation noise (the digits) get fresh U(0, w) noise per batch on
    both sides during training, while test.csv is dequantised ONCE here (seeded), so both sides
    score exactly the same test points (flowzoo: `eval --csv`, which adds no noise);
  * the same architecture, read from the flowzoo run's own config.toml and weights
    (permutations included), see `build_flow`;
  * the same optimisation: Adam (0.9, 0.999, 1e-8), lr with flowzoo's linear warm-up,
    gradient-norm clipping, batch size, steps = epochs * floor(N / batch) (flowzoo's epoch:
    a fresh permutation per epoch, the last partial batch dropped), the same seeds (--seeds
    training runs per side, seeds --seed, --seed + 1, ...), the same number of CPU threads;
  * the same units: test log-likelihood in nats in the data's own units (the standardisation
    layer's log-det included), mean +- standard error over test rows (of the per-row
    log-likelihood averaged over the seeds), with the standard error over the seeds' means
    beside it in the details and the JSON.

Architecture check: every nflows run first loads the flowzoo run's trained weights into a fresh
nflows model and compares its per-row test log-likelihoods with `flowzoo eval`'s
(check_max_abs_diff; float32 round-off, ~1e-5 on the toys).

Timing: seconds per epoch of the training loop only (flowzoo: `elapsed_s` of the last
metrics.csv row, which is taken before the end-of-training plot and checkpoint; nflows: the
loop), the median over the seeds; plus each process's whole wall and CPU seconds (start-up,
data, eval included) in the JSON. Method and results: bench/TABULAR.md.

Subcommands:
  run      the whole benchmark: table on stdout, JSON to --out-dir/tabular-<date>.json
  nflows   (internal) trains the nflows model for one flowzoo run and prints JSON
"""
import argparse
import csv
import datetime
import importlib.metadata
import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import time
import tomllib

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def log(msg):
    print(f"[bench_tabular] {msg}", file=sys.stderr, flush=True)


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return float("nan")


# --------------------------------------------------------------------------------------------
# The nflows side
# --------------------------------------------------------------------------------------------


def build_flow(cfg, dim, mean, std, weights):
    """The flowzoo RealNVP of `cfg` (its run's config.toml) as an nflows Flow.

    Library classes: Flow, StandardNormal, CompositeTransform, PointwiseAffineTransform (the
    fixed standardisation), AffineCouplingTransform (masking, split/merge, conditioner call),
    nflows.nn.nets.MLP (the conditioner), BatchNorm, Permutation / ReversePermutation.
    Custom, where nflows lacks flowzoo's exact piece (subclasses, see below):
      * FlowzooAffineCoupling: flowzoo's y = (x + shift) * exp(3 tanh(raw / 3)) with
        (shift, raw) interleaved in the net output; nflows' own is y = x * (sigmoid(raw + 2)
        + 1e-3) + shift with contiguous halves;
      * FlowzooBatchNorm: flowzoo's exp(log_gamma) weight, biased batch variance, running
        variance starting at 1, momentum 0.05; nflows' own has a softplus weight, the unbiased
        variance and a running variance starting at 0;
      * Conditioner: a wrapper that lets nflows' MLP take the (unused) context argument and
        initialises it like flowzoo (zero last layer; flowzoo feeds the masked full vector, so
        the first layer's init bound is 1/sqrt(D) for alternating masks, the weights on the
        zeroed inputs having no effect and no gradient).
    """
    import torch
    from torch import nn
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.nn.nets import MLP
    from nflows.transforms.base import CompositeTransform
    from nflows.transforms.coupling import AffineCouplingTransform
    from nflows.transforms.normalization import BatchNorm
    from nflows.transforms.permutations import Permutation, ReversePermutation
    from nflows.transforms.standard import PointwiseAffineTransform

    class FlowzooAffineCoupling(AffineCouplingTransform):
        def _log_scale_and_shift(self, params):
            shift = params[:, 0::2]
            log_scale = torch.tanh(params[:, 1::2] / 3.0) * 3.0
            return log_scale, shift

        def _scale_and_shift(self, params):
            log_scale, shift = self._log_scale_and_shift(params)
            return torch.exp(log_scale), shift

        def _coupling_transform_forward(self, inputs, transform_params):
            ls, shift = self._log_scale_and_shift(transform_params)
            return (inputs + shift) * torch.exp(ls), ls.sum(dim=1)

        def _coupling_transform_inverse(self, inputs, transform_params):
            ls, shift = self._log_scale_and_shift(transform_params)
            return inputs * torch.exp(-ls) - shift, -ls.sum(dim=1)

    class FlowzooBatchNorm(BatchNorm):
        def __init__(self, features, eps=1e-5, momentum=0.05):
            super().__init__(features, eps=eps, momentum=momentum)
            del self.unconstrained_weight
            self.log_gamma = nn.Parameter(torch.zeros(features))
            self.running_var.fill_(1.0)

        @property
        def weight(self):
            return torch.exp(self.log_gamma)

        def forward(self, inputs, context=None):
            if self.training:
                mean = inputs.mean(0)
                var = (inputs - mean).square().mean(0)
                with torch.no_grad():
                    self.running_mean.mul_(1 - self.momentum).add_(mean.detach() * self.momentum)
                    self.running_var.mul_(1 - self.momentum).add_(var.detach() * self.momentum)
            else:
                mean, var = self.running_mean, self.running_var
            outputs = (inputs - mean) * torch.rsqrt(var + self.eps) * torch.exp(self.log_gamma) + self.bias
            logabsdet = (self.log_gamma - 0.5 * torch.log(var + self.eps)).sum() * inputs.new_ones(inputs.shape[0])
            return outputs, logabsdet

    acts = {"relu": torch.relu, "tanh": torch.tanh, "elu": nn.functional.elu, "leaky_relu": nn.functional.leaky_relu,
            "gelu": nn.functional.gelu, "silu": nn.functional.silu}

    class Conditioner(nn.Module):
        def __init__(self, d_in, d_out, width, depth, activation, first_fan_in):
            super().__init__()
            self.mlp = MLP((d_in,), (d_out,), [width] * depth, activation=acts[activation])
            b = 1.0 / math.sqrt(first_fan_in)
            with torch.no_grad():
                nn.init.uniform_(self.mlp._input_layer.weight, -b, b)
                nn.init.uniform_(self.mlp._input_layer.bias, -b, b)
                nn.init.zeros_(self.mlp._output_layer.weight)
                nn.init.zeros_(self.mlp._output_layer.bias)

        def forward(self, inputs, context=None):
            return self.mlp(inputs)

    m = cfg["model"]
    if m["kind"] != "realnvp":
        raise SystemExit(f"bench_tabular: model.kind {m['kind']!r}: only realnvp is mirrored in nflows")
    if m.get("base", "normal") != "normal":
        raise SystemExit("bench_tabular: only model.base = \"normal\" is mirrored")
    if m.get("norm", "batchnorm") not in ("batchnorm", "none"):
        raise SystemExit("bench_tabular: only model.norm = \"batchnorm\" | \"none\" is mirrored")
    transforms = []
    if cfg["data"].get("standardize", True):
        transforms.append(PointwiseAffineTransform(shift=torch.as_tensor(-mean / std, dtype=torch.float32),
                                                   scale=torch.as_tensor(1.0 / std, dtype=torch.float32)))
    idx = np.arange(dim)
    # flowzoo's `vector_mask`: the mask alternates unless a reversal already swaps the roles.
    reversal_swaps = m.get("permutation") == "reverse" and (m["mask"] == "halves" or dim % 2 == 0)
    for b in range(m["blocks"]):
        k = 0 if reversal_swaps else b % 2
        if m["mask"] == "alternating":
            mask = (idx % 2 != k).astype(np.int64)  # 1 = transformed; i % 2 == parity conditions
            fan_in = int((mask == 0).sum())  # flowzoo's net reads only the conditioning features
        elif m["mask"] == "halves":
            c1 = dim // 2
            mask = (idx < c1) if k == 1 else (idx >= c1)
            mask = mask.astype(np.int64)
            fan_in = int((mask == 0).sum())
        else:
            raise SystemExit(f"bench_tabular: model.mask {m['mask']!r} not mirrored")
        transforms.append(FlowzooAffineCoupling(
            torch.as_tensor(mask),
            lambda i, o, fi=fan_in: Conditioner(i, o, m["width"], m["depth"], m["activation"], fi)))
        if m.get("norm", "batchnorm") == "batchnorm":
            transforms.append(FlowzooBatchNorm(dim))
        key = f"blocks.{b}.permutation.perm"
        if key in weights:
            perm = weights[key].to(torch.int64)
            if m["permutation"] == "reverse":
                p = ReversePermutation(dim)
                assert torch.equal(p._permutation, perm), "flowzoo's reverse permutation differs"
                transforms.append(p)
            else:
                transforms.append(Permutation(perm.clone()))  # flowzoo's own seeded shuffle
        elif any(k.startswith(f"blocks.{b}.permutation.") for k in weights):
            raise SystemExit(f"bench_tabular: block {b}: a learned permutation (invconv) is not mirrored")
    return Flow(CompositeTransform(transforms), StandardNormal([dim]))


def load_flowzoo_weights(flow, cfg, dim, weights):
    """Copies a flowzoo run's weights into `build_flow`'s model (architecture check)."""
    import torch
    from nflows.transforms.standard import PointwiseAffineTransform

    ts = list(flow._transform._transforms)
    if isinstance(ts[0], PointwiseAffineTransform):
        mean, std = weights["standardize.mean"].double(), weights["standardize.std"].double()
        ts[0]._shift.copy_((-mean / std).float())
        ts[0]._scale.copy_((1.0 / std).float())
        ts = ts[1:]
    couplings = [t for t in ts if hasattr(t, "transform_net")]
    norms = [t for t in ts if hasattr(t, "log_gamma")]
    with torch.no_grad():
        for b, c in enumerate(couplings):
            p = f"blocks.{b}.coupling.net."
            mlp = c.transform_net.mlp
            layers = [mlp._input_layer, *mlp._hidden_layers, mlp._output_layer]
            ident, trans = c.identity_features, c.transform_features
            for i, layer in enumerate(layers):
                w, bias = weights[f"{p}{2 * i}.weight"], weights[f"{p}{2 * i}.bias"]
                if i == 0 and w.shape[1] == dim:  # flowzoo's net reads the masked full vector
                    w = w[:, ident]
                if i == len(layers) - 1 and w.shape[0] == 2 * dim:  # outputs for every feature
                    rows = torch.stack([2 * trans, 2 * trans + 1], 1).reshape(-1)
                    w, bias = w[rows], bias[rows]
                layer.weight.copy_(w)
                layer.bias.copy_(bias)
        for b, n in enumerate(norms):
            p = f"blocks.{b}.norm."
            n.log_gamma.copy_(weights[p + "log_gamma"].reshape(-1))
            n.bias.copy_(weights[p + "beta"].reshape(-1))
            n.running_mean.copy_(weights[p + "running_mean"].reshape(-1))
            n.running_var.copy_(weights[p + "running_var"].reshape(-1))


def read_rows(path):
    with open(path) as f:
        r = csv.reader(f)
        header = next(r)
        rows = np.array([[float(v) for v in row] for row in r if row], dtype=np.float64)
    return header, rows


def standardization(train, noise):
    """flowzoo's statistics (src/data/tabular.rs): the moments of the noisy data (mean + w/2,
    biased var + w^2/12), then std 1 for a column that is still constant."""
    mean = train.mean(0) + noise / 2.0
    std = np.sqrt(train.var(0) + noise * noise / 12.0)
    return mean, np.where(std > 1e-12, std, 1.0)


def score(flow, x, batch=256):
    import torch
    flow.eval()
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            out.append(flow.log_prob(x[i:i + batch]).double())
    lp = torch.cat(out).numpy()
    return lp


def summary(lp):
    lp = np.asarray(lp, dtype=np.float64)
    n = lp.size
    return {"n": int(n), "mean_log_prob": float(lp.mean()), "stderr": float(lp.std(ddof=1) / math.sqrt(n))}


def cmd_nflows(a):
    import torch
    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    from safetensors.torch import load_file

    t_start = time.perf_counter()
    with open(os.path.join(a.run, "config.toml"), "rb") as f:
        cfg = tomllib.load(f)
    weights = load_file(os.path.join(a.run, "weights.safetensors"))
    tr = cfg["train"]
    noise = float(cfg["data"].get("uniform_noise", 0.0))
    _, train_np = read_rows(a.train)
    _, test_np = read_rows(a.test)
    n, dim = train_np.shape
    mean, std = standardization(train_np, noise)
    if "standardize.mean" in weights:  # the run's own statistics (the same train rows)
        fz_mean, fz_std = weights["standardize.mean"].double().numpy(), weights["standardize.std"].double().numpy()
        assert np.allclose(fz_mean, mean, rtol=1e-5, atol=1e-5) and np.allclose(fz_std, std, rtol=1e-5, atol=1e-5), \
            "flowzoo's standardisation statistics differ from this script's: different train rows?"
        mean, std = fz_mean, fz_std
    train = torch.as_tensor(train_np, dtype=torch.float32)
    test = torch.as_tensor(test_np, dtype=torch.float32)
    result = {"impl": "nflows", "threads": torch.get_num_threads()}

    if a.check_weights:
        # Architecture check: flowzoo's trained weights in the nflows model must give flowzoo's
        # test log-likelihood.
        chk = build_flow(cfg, dim, mean, std, weights)
        load_flowzoo_weights(chk, cfg, dim, weights)
        lp = score(chk, test)
        with open(a.check_weights) as f:
            ref = np.asarray(json.load(f)["log_prob"], dtype=np.float64)
        result["check_max_abs_diff"] = float(np.max(np.abs(lp - ref)))
        result["check_mean_log_prob"] = float(lp.mean())

    torch.manual_seed(a.seed)
    flow = build_flow(cfg, dim, mean, std, weights)
    params = [p for p in flow.parameters() if p.requires_grad]
    result["parameters"] = int(sum(p.numel() for p in params))
    opt = torch.optim.Adam(params, lr=tr["lr"], betas=(0.9, 0.999), eps=1e-8)
    batch = int(tr["batch_size"])
    spe = max(n // batch, 1)
    steps = a.epochs * spe
    warm = int(tr.get("warmup_steps", 0))
    clip = float(tr.get("grad_clip", 0.0))
    gen = torch.Generator().manual_seed(a.seed + 1)

    def lr_at(step):
        return tr["lr"] * min((step + 1) / warm, 1.0) if warm > 0 else tr["lr"]

    def batch_at(idx):
        x = train[idx]
        if noise > 0:
            x = x + torch.rand(x.shape, generator=gen) * noise
        return x

    # flowzoo's data-dependent initialisation pass: one train-mode forward on up to 512 rows
    # (updates the batch-norm running statistics once).
    flow.train()
    with torch.no_grad():
        flow.log_prob(batch_at(torch.randperm(n, generator=gen)[:min(n, max(batch, 512))]))

    losses = []
    skipped = 0
    t0, c0 = time.perf_counter(), time.process_time()
    step = 0
    for epoch in range(a.epochs):
        perm = torch.randperm(n, generator=gen)
        for k in range(spe):
            x = batch_at(perm[k * batch:(k + 1) * batch])
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            opt.zero_grad()
            loss = -flow.log_prob(x).mean()
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, clip) if clip > 0 else torch.zeros(())
            lv, nv = loss.item(), float(norm)
            if math.isfinite(lv) and math.isfinite(nv):
                opt.step()
            else:
                skipped += 1
            losses.append(lv)
            step += 1
    train_s = time.perf_counter() - t0
    train_cpu = time.process_time() - c0
    lp = score(flow, test)
    result.update(summary(lp))
    if a.log_prob_out:
        np.save(a.log_prob_out, lp)
    result.update({
        "epochs": a.epochs, "steps": steps, "steps_per_epoch": spe, "batch_size": batch,
        "train_seconds": train_s, "s_per_epoch": train_s / a.epochs, "train_cpu_seconds": train_cpu,
        "final_train_nll": float(np.mean(losses[-spe:])), "skipped_steps": skipped,
        "process_seconds": time.perf_counter() - t_start,
    })
    print(json.dumps(result))


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------

DATASETS = {
    # name: (data file, flowzoo config, extra --set overrides)
    "digits64": ("data/digits64.csv", "configs/realnvp_digits64.toml", []),
    "moons": ("data/toys/moons.csv", "configs/realnvp_moons.toml", []),
    "8gaussians": ("data/toys/8gaussians.csv", "configs/realnvp_moons.toml", []),
}


def write_split(data, out_dir, test_fraction, seed, noise):
    """Seeded split; test rows dequantised once with seeded U(0, noise)."""
    header, rows = read_rows(os.path.join(ROOT, data))
    n = rows.shape[0]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_test = int(round(n * test_fraction))
    test, train = rows[perm[:n_test]], rows[perm[n_test:]]
    if noise > 0:
        test = test + rng.uniform(0.0, noise, size=test.shape)
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for name, part in (("train", train), ("test", test)):
        p = os.path.join(out_dir, f"{name}.csv")
        with open(p, "w") as f:
            f.write(",".join(header) + "\n")
            for r in part:
                f.write(",".join(f"{v:.9g}" for v in r) + "\n")
        paths[name] = p
    return paths, train.shape[0], test.shape[0], rows.shape[1]


def timed(cmd, env=None):
    """Runs cmd; returns (stdout, wall seconds, CPU seconds of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        log(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
        raise SystemExit(1)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return p.stdout, wall, cpu


def flowzoo_side(a, cfg_path, sets, paths, work, epochs, n_train, seed):
    run = os.path.join(work, "flowzoo_run")
    if os.path.isdir(run):
        import shutil
        shutil.rmtree(run)
    with open(os.path.join(ROOT, cfg_path), "rb") as f:
        cfg = tomllib.load(f)
    batch = int(cfg["train"]["batch_size"])
    for s in sets:
        if s.startswith("train.batch_size="):
            batch = int(s.split("=", 1)[1])
    spe = max(n_train // batch, 1)
    steps = epochs * spe
    overrides = [
        f"data.path={paths['train']}", "data.test_fraction=0", "data.val_fraction=0",
        f"train.max_steps={steps}", f"train.threads={a.threads}", f"train.seed={seed}",
        "train.eval_every=0", "train.patience=0", "train.sample_every=0", "train.checkpoint_every=0",
        "train.device=cpu", f"train.log_every={spe}", *sets,
    ]
    cmd = [a.bin, "train", "--config", cfg_path, "--out", run, "-q"]
    for o in overrides:
        cmd += ["--set", o]
    load0 = loadavg()
    stdout, wall, cpu = timed(cmd)
    load1 = loadavg()
    m = re.search(r"(\d+) parameters", stdout)
    with open(os.path.join(run, "metrics.csv")) as f:
        last = list(csv.DictReader(f))[-1]
    with open(os.path.join(run, "state.json")) as f:
        state = json.load(f)
    out, _, _ = timed([a.bin, "eval", "--model", run, "--checkpoint", "last", "--csv", paths["test"], "--json",
                       "--batch", "256"])
    ev = json.loads(out)
    with open(os.path.join(work, "flowzoo_eval.json"), "w") as f:
        json.dump(ev, f)
    train_s = float(last["elapsed_s"])
    if int(last["step"]) != steps:
        raise SystemExit(f"bench_tabular: flowzoo stopped at step {last['step']}, expected {steps}")
    return run, np.asarray(ev["log_prob"], dtype=np.float64), {
        "seed": seed, "n": ev["n"], "mean_log_prob": ev["mean_log_prob"], "stderr": ev["stderr"],
        "parameters": int(m.group(1)) if m else None, "steps": steps, "steps_per_epoch": spe, "batch_size": batch,
        "train_seconds": train_s, "s_per_epoch": train_s / epochs, "state_train_seconds": state["train_seconds"],
        "final_train_nll": float(last["train_nll"]), "skipped_steps": int(last["skipped_steps"]),
        "process_seconds": wall, "process_cpu_seconds": cpu, "load_before": load0, "load_after": load1,
    }, [o.replace(paths["train"], "train.csv").replace(f"train.seed={seed}", "train.seed=<seed>") for o in overrides]


def nflows_side(a, run, paths, work, epochs, seed):
    cmd = [sys.executable, os.path.abspath(__file__), "nflows", "--run", run, "--train", paths["train"],
           "--test", paths["test"], "--epochs", str(epochs), "--threads", str(a.threads), "--seed", str(seed),
           "--check-weights", os.path.join(work, "flowzoo_eval.json"), "--log-prob-out", os.path.join(work, "nflows_lp.npy")]
    load0 = loadavg()
    out, wall, cpu = timed(cmd)
    load1 = loadavg()
    r = json.loads(out.strip().splitlines()[-1])
    r.update({"seed": seed, "process_seconds_outer": wall, "process_cpu_seconds": cpu, "load_before": load0,
              "load_after": load1})
    return np.load(os.path.join(work, "nflows_lp.npy")), r


def fmt_ll(r):
    return f"{r['mean_log_prob']:.3f} ± {r['stderr']:.3f}"


def aggregate(lps, runs):
    """Per-row log-likelihood averaged over the seeds, then mean and stderr over the rows;
    the standard error over the seeds' means; the median over the seeds of the seconds per epoch
    (robust to a burst of load from other processes during one run)."""
    out = summary(np.mean(lps, axis=0))
    means = [r["mean_log_prob"] for r in runs]
    out["per_seed_mean_log_prob"] = means
    out["seed_stderr"] = float(np.std(means, ddof=1) / math.sqrt(len(means))) if len(means) > 1 else float("nan")
    out["s_per_epoch"] = float(np.median([r["s_per_epoch"] for r in runs]))
    out["per_seed_s_per_epoch"] = [r["s_per_epoch"] for r in runs]
    out["process_cpu_seconds"] = float(np.sum([r["process_cpu_seconds"] for r in runs]))
    out["runs"] = runs
    return out


def cmd_run(a):
    import shutil
    import tempfile
    names = [s for s in a.datasets.split(",") if s]
    for s in names:
        if s not in DATASETS:
            raise SystemExit(f"bench_tabular: unknown dataset {s!r} (have {', '.join(DATASETS)})")
    seeds = list(range(a.seed, a.seed + a.seeds))
    work_root = a.work or tempfile.mkdtemp(prefix="flowzoo-tabular-")
    toy_sets = [s for s in a.toy_set.split() if s]
    import nflows  # noqa: F401  (fail early when it is missing)
    import torch
    import hashlib
    with open(a.bin, "rb") as f:
        bin_sha = hashlib.sha256(f.read()).hexdigest()[:16]
    bin_mtime = datetime.datetime.fromtimestamp(os.path.getmtime(a.bin)).isoformat(timespec="seconds")
    try:
        git_head = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                                  text=True).stdout.strip()
    except OSError:
        git_head = ""
    results = []
    t_all = time.perf_counter()
    for name in names:
        data, cfg_path, sets = DATASETS[name]
        sets = list(sets) + (toy_sets if name != "digits64" else [])
        epochs = a.epochs_digits if name == "digits64" else a.epochs_toys
        with open(os.path.join(ROOT, cfg_path), "rb") as f:
            noise = float(tomllib.load(f)["data"].get("uniform_noise", 0.0))
        work = os.path.join(work_root, name)
        paths, n_train, n_test, dim = write_split(data, work, a.test_fraction, a.split_seed, noise)
        log(f"{name}: {n_train} train / {n_test} test rows, {dim} dims, {epochs} epochs, seeds {seeds}")
        fz_lps, fz_runs, nf_lps, nf_runs = [], [], [], []
        for seed in seeds:
            run, lp, fz, overrides = flowzoo_side(a, cfg_path, sets, paths, work, epochs, n_train, seed)
            fz_lps.append(lp)
            fz_runs.append(fz)
            log(f"{name} seed {seed}: flowzoo {fmt_ll(fz)} nats, {fz['s_per_epoch']:.3f} s/epoch "
                f"(load {fz['load_before']:.1f} -> {fz['load_after']:.1f})")
            lp, nf = nflows_side(a, run, paths, work, epochs, seed)
            nf_lps.append(lp)
            nf_runs.append(nf)
            log(f"{name} seed {seed}: nflows  {fmt_ll(nf)} nats, {nf['s_per_epoch']:.3f} s/epoch "
                f"(load {nf['load_before']:.1f} -> {nf['load_after']:.1f}); flowzoo's weights in the nflows "
                f"model: max |Δ log p| = {nf['check_max_abs_diff']:.1e}")
        fz_all, nf_all = aggregate(fz_lps, fz_runs), aggregate(nf_lps, nf_runs)
        d = np.mean(fz_lps, axis=0) - np.mean(nf_lps, axis=0)
        seed_se = math.hypot(fz_all["seed_stderr"], nf_all["seed_stderr"])
        results.append({
            "dataset": name, "data": data, "config": cfg_path, "flowzoo_overrides": overrides, "dim": dim,
            "n_train": n_train, "n_test": n_test, "uniform_noise": noise, "epochs": epochs,
            "steps_per_epoch": fz_runs[0]["steps_per_epoch"], "batch_size": fz_runs[0]["batch_size"], "seeds": seeds,
            "flowzoo": fz_all, "nflows": nf_all,
            "ll_diff_flowzoo_minus_nflows": float(d.mean()),
            "ll_diff_paired_stderr": float(d.std(ddof=1) / math.sqrt(d.size)),
            "ll_diff_seed_stderr": seed_se,
            "flowzoo_within_its_stderr": bool(fz_all["mean_log_prob"] + fz_all["stderr"] >= nf_all["mean_log_prob"]),
            "architecture_check_max_abs_diff": max(r["check_max_abs_diff"] for r in nf_runs),
            "speed_ratio_nflows_over_flowzoo": nf_all["s_per_epoch"] / fz_all["s_per_epoch"],
        })
    total = time.perf_counter() - t_all

    hdr = ("dataset", "flowzoo LL", "nflows LL", "flowzoo s/epoch", "nflows s/epoch", "ratio nflows/flowzoo")
    lines = [hdr] + [(r["dataset"], fmt_ll(r["flowzoo"]), fmt_ll(r["nflows"]), f"{r['flowzoo']['s_per_epoch']:.3f}",
                      f"{r['nflows']['s_per_epoch']:.3f}", f"{r['speed_ratio_nflows_over_flowzoo']:.2f}") for r in results]
    w = [max(len(l[i]) for l in lines) for i in range(len(hdr))]
    print(f"test log-likelihood (nats, data units; per-row log-likelihood averaged over the seeds, mean ± stderr "
          f"over test rows; higher is better) and training seconds per epoch (median over the seeds); "
          f"{a.threads} threads, seeds {seeds[0]}..{seeds[-1]}, load {loadavg():.1f}")
    for i, l in enumerate(lines):
        print("  ".join(c.ljust(w[j]) if j == 0 else c.rjust(w[j]) for j, c in enumerate(l)))
        if i == 0:
            print("  ".join("-" * x for x in w))
    for r in results:
        print(f"  {r['dataset']}: {r['epochs']} epochs x {r['steps_per_epoch']} steps of {r['batch_size']}; "
              f"flowzoo - nflows = {r['ll_diff_flowzoo_minus_nflows']:+.3f} nats (± {r['ll_diff_paired_stderr']:.3f} "
              f"paired over rows, ± {r['ll_diff_seed_stderr']:.3f} over seeds); per seed: flowzoo "
              f"{', '.join(f'{v:.2f}' for v in r['flowzoo']['per_seed_mean_log_prob'])} / nflows "
              f"{', '.join(f'{v:.2f}' for v in r['nflows']['per_seed_mean_log_prob'])}; same-weights check "
              f"{r['architecture_check_max_abs_diff']:.0e}")
    out = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_end": loadavg(),
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")},
        "torch": torch.__version__, "nflows": importlib.metadata.version("nflows"),
        "threads": a.threads, "seeds": seeds, "split_seed": a.split_seed, "test_fraction": a.test_fraction,
        "toy_set": toy_sets, "flowzoo_bin": a.bin, "flowzoo_bin_sha256": bin_sha,
        "flowzoo_bin_mtime": bin_mtime,
        "git_head": git_head, "total_seconds": total, "results": results,
    }
    os.makedirs(a.out_dir, exist_ok=True)
    path = os.path.join(a.out_dir, f"tabular-{datetime.date.today().isoformat()}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {os.path.relpath(path, ROOT)} (total {total:.0f} s)")
    if not a.work:
        shutil.rmtree(work_root, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--bin", default=os.path.join(ROOT, "target/release/flowzoo"))
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--seed", type=int, default=0, help="first training seed")
    r.add_argument("--seeds", type=int, default=3, help="number of training seeds (the same for both sides)")
    r.add_argument("--split-seed", type=int, default=0)
    r.add_argument("--datasets", default="digits64,moons,8gaussians")
    r.add_argument("--epochs-digits", type=int, default=25)
    r.add_argument("--epochs-toys", type=int, default=30)
    r.add_argument("--test-fraction", type=float, default=0.2)
    r.add_argument("--toy-set", default="", help="extra flowzoo --set overrides for the 2-D toys (space-separated)")
    r.add_argument("--work", default="", help="keep the splits and runs here (default: a temporary folder, removed)")
    r.add_argument("--out-dir", default=os.path.join(ROOT, "bench", "results"))
    n = sub.add_parser("nflows")
    n.add_argument("--run", required=True)
    n.add_argument("--train", required=True)
    n.add_argument("--test", required=True)
    n.add_argument("--epochs", type=int, required=True)
    n.add_argument("--threads", type=int, default=2)
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("--check-weights", default="")
    n.add_argument("--log-prob-out", default="")
    a = ap.parse_args()
    if a.cmd == "run":
        a.bin = os.path.abspath(a.bin)
        cmd_run(a)
    else:
        cmd_nflows(a)


if __name__ == "__main__":
    main()
