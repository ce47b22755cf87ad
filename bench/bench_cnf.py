#!/usr/bin/env python3
"""flowzoo's FFJORD against zuko's CNF (run by bench/cnf.sh). Method and results: bench/NOTES.md,
section "Continuous flows: flowzoo FFJORD vs zuko CNF".

Per dataset, both sides get the same work:
  * the SAME split: a seeded permutation, --test-fraction held out, written as train.csv /
    test.csv (bench_tabular.write_split); data with uniform dequantisation noise (the digits)
    get fresh U(0, w) noise per training batch on both sides, while test.csv is dequantised
    ONCE, so both sides score exactly the same points;
  * the same standardisation (flowzoo's statistics: mean + w/2, sqrt(biased var + w^2/12)),
    a fixed first layer on both sides, its log-det included: log-likelihoods are in the data's
    own units;
  * the same vector field: zuko's (an MLP on [cos(k pi t), sin(k pi t)], k = 1..3, then x; the
    hidden widths and activation of the config), which flowzoo has as model.cnf.layer_type =
    "mlp" with PyTorch's initialisation; checked by scoring flowzoo's trained weights with
    zuko's CNF (float64, tight tolerance: the two must agree to solver precision). With
    --flowzoo-layer concatsquash flowzoo uses FFJORD's concat-squash field instead;
  * the same time interval [0, 1] (flowzoo: model.cnf.time_length = 1, train_time = false),
    the same tolerances (rtol, atol: training and evaluation), adaptive Dormand-Prince on both
    sides, the same trace (exact on the 2-D toys; Hutchinson with Gaussian probes in training
    on digits64, exact at evaluation on both sides);
  * the same optimisation: Adam (0.9, 0.999, 1e-8), constant learning rate, no clipping,
    batch size, number of steps, a fresh permutation per epoch, one CPU thread count for both.
What differs, by design of each library: the error norm (flowzoo: RMS over the state, Hairer /
torchdiffeq / FFJORD; zuko: max over the state with the log-det scaled by 1e-2; flowzoo's can be
set to max with --flowzoo-set model.cnf.error_norm=max), the first step (flowzoo: Hairer's
heuristic; zuko: the whole interval), FSAL (flowzoo: 6 evaluations per step; zuko: 7), the trace
(flowzoo: Jacobian-vector products carried through the layers; zuko: batched vector-Jacobian
products with create_graph) and the gradients (flowzoo: back-propagation through the solver;
zuko: the adaptive checkpoint adjoint). To show that the solver settings do not buy the
log-likelihood, both sides' trained models are also scored in float64 at a tight tolerance
(--tight-tol).

Measured: test log-likelihood (mean +- standard error over test rows) at the training tolerance
and at the tight one; function evaluations per training step, forward (the solve, rejected steps
included) and backward (the evaluations the backward pass differentiates: flowzoo counts the
accepted steps' stages; zuko's adjoint calls the field six times per accepted step, counted);
seconds per step (wall, mean over steps; and process CPU). flowzoo's side is
examples/cnf_bench.rs (flowzoo train's step with a sink that counts evaluations).

Subcommands:
  run   the whole benchmark: table on stdout, JSON to --out-dir/cnf-<date>.json
  zuko  (internal) trains zuko's CNF on one split and prints JSON
"""
import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
from bench_tabular import loadavg, read_rows, standardization, summary, write_split  # noqa: E402

# name: (data file, flowzoo config: its [model.cnf], [data] and [train] settings are used by both sides)
DATASETS = {
    "pinwheel": ("data/toys/pinwheel.csv", "configs/ffjord_pinwheel.toml"),
    "8gaussians": ("data/toys/8gaussians.csv", "configs/ffjord_8gaussians.toml"),
    "digits64": ("data/digits64.csv", "configs/ffjord_digits64.toml"),
}


def log(msg):
    print(f"[bench_cnf] {msg}", file=sys.stderr, flush=True)


def read_config(path):
    import tomllib
    with open(os.path.join(ROOT, path), "rb") as f:
        return tomllib.load(f)


# --------------------------------------------------------------------------------------------
# The zuko side
# --------------------------------------------------------------------------------------------


def cmd_zuko(a):
    import torch
    import zuko
    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    cfg = read_config(a.config)
    c = cfg["model"].get("cnf", {})
    tr = cfg["train"]
    noise = float(cfg["data"].get("uniform_noise", 0.0))
    _, train_np = read_rows(a.train)
    _, test_np = read_rows(a.test)
    mean, std = standardization(train_np, noise)
    n, dim = train_np.shape
    acts = {"tanh": torch.nn.Tanh, "elu": torch.nn.ELU, "softplus": torch.nn.Softplus}
    hidden = tuple(int(h) for h in c.get("hidden", [64, 64, 64]))
    exact = a.trace == "exact"
    torch.manual_seed(a.seed)
    flow = zuko.flows.CNF(dim, hidden_features=hidden, activation=acts[c.get("activation", "tanh")],
                          atol=a.atol, rtol=a.rtol, exact=exact)
    calls = [0]
    field = flow.transform.f

    def counted(*args, **kw):
        calls[0] += 1
        return field(*args, **kw)

    flow.transform.f = counted
    check = None
    if a.check_weights:
        # Architecture check: flowzoo's trained MLP field in zuko's CNF must score the test set as
        # flowzoo does (both in float64 at the tight tolerance).
        from safetensors.torch import load_file
        w = load_file(a.check_weights)
        chk = zuko.flows.CNF(dim, hidden_features=hidden, activation=acts[c.get("activation", "tanh")],
                             atol=a.tight_tol, rtol=a.tight_tol, exact=True).double().eval()
        linears = [m for m in chk.transform.ode if isinstance(m, zuko.nn.Linear)]
        if len(linears) != len(hidden) + 1 or any(f"blocks.0.cnf.net.{i}.linear.weight" not in w for i in range(len(linears))):
            raise SystemExit(f"bench_cnf: {a.check_weights} does not hold a {len(hidden) + 1}-layer MLP field")
        with torch.no_grad():
            for i, lin in enumerate(linears):
                lin.weight.copy_(w[f"blocks.0.cnf.net.{i}.linear.weight"].double())
                lin.bias.copy_(w[f"blocks.0.cnf.net.{i}.linear.bias"].double())
            fz_mean, fz_std = w["standardize.mean"].double(), w["standardize.std"].double()
            xs = (torch.as_tensor(test_np, dtype=torch.float64) - fz_mean) / fz_std
            lp = torch.cat([chk().log_prob(xs[i:i + 1024]) for i in range(0, xs.shape[0], 1024)])
            check = float((lp - fz_std.log().sum()).mean())
    mean_t = torch.as_tensor(mean, dtype=torch.float32)
    std_t = torch.as_tensor(std, dtype=torch.float32)
    log_std_sum = float(np.log(std).sum())
    train = torch.as_tensor(train_np, dtype=torch.float32)
    test = torch.as_tensor(test_np, dtype=torch.float32)
    params = [p for p in flow.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=tr["lr"], betas=(0.9, 0.999), eps=1e-8)
    batch = int(tr["batch_size"])
    spe = max(n // batch, 1)
    gen = torch.Generator().manual_seed(a.seed + 1)

    def log_prob(x):
        # The fixed standardisation and its log-det, as flowzoo's first layer.
        return flow().log_prob((x - mean_t) / std_t) - log_std_sum

    walls, cpus, nfe_f, nfe_b, losses = [], [], [], [], []
    flow.train()
    t_start = time.perf_counter()
    perm = None
    for step in range(a.steps):
        if step % spe == 0:
            perm = torch.randperm(n, generator=gen)
        x = train[perm[(step % spe) * batch:(step % spe + 1) * batch]]
        if noise > 0:
            x = x + torch.rand(x.shape, generator=gen) * noise
        w0, c0 = time.perf_counter(), time.process_time()
        k0 = calls[0]
        opt.zero_grad()
        loss = -log_prob(x).mean()
        k1 = calls[0]
        loss.backward()
        opt.step()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
        nfe_f.append(k1 - k0)
        nfe_b.append(calls[0] - k1)
        losses.append(loss.item())
    train_s = time.perf_counter() - t_start

    def score(atol, rtol, dtype=torch.float32):
        flow.eval()
        flow.to(dtype)
        flow.transform.exact = True  # every reported likelihood uses the exact trace
        flow.transform.atol, flow.transform.rtol = atol, rtol
        k0, t0 = calls[0], time.perf_counter()
        out = []
        with torch.no_grad():
            for i in range(0, test.shape[0], 1024):
                out.append(log_prob(test[i:i + 1024].to(dtype)).double())
        lp = torch.cat(out).numpy()
        return lp, calls[0] - k0, time.perf_counter() - t0

    lp, eval_nfe, eval_s = score(a.atol, a.rtol)
    res = {"impl": "zuko", "zuko_version": zuko.__version__, "threads": torch.get_num_threads(), "steps": a.steps,
           "batch_size": batch, "parameters": int(sum(p.numel() for p in params)), "train_seconds": train_s,
           "s_per_step": float(np.mean(walls)), "median_s_per_step": float(np.median(walls)),
           "cpu_s_per_step": float(np.mean(cpus)), "nfe_forward_per_step": float(np.mean(nfe_f)),
           "nfe_backward_per_step": float(np.mean(nfe_b)), "final_train_nll": float(np.mean(losses[-spe:])),
           "eval_nfe": eval_nfe, "eval_seconds": eval_s}
    res.update(summary(lp))
    if check is not None:
        res["check_mean_log_prob"] = check
    if a.tight_tol > 0:
        # float64: in float32 zuko's max-norm controller cannot reach 1e-7 and shrinks its step
        # forever (it has no minimum step).
        mean_t, std_t = mean_t.double(), std_t.double()
        lp_t, nfe_t, _ = score(a.tight_tol, a.tight_tol, torch.float64)
        res.update({"tight_rtol": a.tight_tol, "tight_mean_log_prob": float(lp_t.mean()), "tight_eval_nfe": nfe_t})
    print(json.dumps(res))


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


def run_json(cmd, env):
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        log(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
        raise SystemExit(1)
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["process_seconds"] = time.perf_counter() - t
    return r


def cmd_run(a):
    import tempfile
    import torch
    import zuko
    names = [s for s in a.datasets.split(",") if s]
    for s in names:
        if s not in DATASETS:
            raise SystemExit(f"bench_cnf: unknown dataset {s!r} (have {', '.join(DATASETS)})")
    work_root = a.work or tempfile.mkdtemp(prefix="flowzoo-cnf-")
    env = dict(os.environ)
    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "threads": a.threads,
               "torch": torch.__version__, "zuko": zuko.__version__, "load_start": loadavg(), "datasets": {}}
    for name in names:
        data, cfg_path = DATASETS[name]
        cfg = read_config(cfg_path)
        c = cfg["model"].get("cnf", {})
        noise = float(cfg["data"].get("uniform_noise", 0.0))
        steps = a.steps_digits if name == "digits64" else a.steps_toys
        trace = c.get("trace", "auto")
        if trace == "auto":
            trace = "exact" if read_rows(os.path.join(ROOT, data))[1].shape[1] <= 8 else "hutchinson"
        work = os.path.join(work_root, name)
        paths, n_train, n_test, dim = write_split(data, work, a.test_fraction, a.seed, noise)
        rtol, atol = float(c.get("rtol", 1e-5)), float(c.get("atol", 1e-5))
        sets = ["data.test_fraction=0", "data.val_fraction=0", "model.cnf.time_length=1.0",
                f"model.cnf.layer_type={a.flowzoo_layer}", "model.cnf.time_frequencies=3",
                "model.cnf.train_time=false", f"model.cnf.eval_rtol={rtol}", f"model.cnf.eval_atol={atol}",
                "model.cnf.noise=gaussian", "model.cnf.eval_solver=dopri5", "model.cnf.solver=dopri5",
                "train.warmup_steps=0", "train.grad_clip=0.0", *a.flowzoo_set.split()]
        fz_cmd = [a.example, "--config", cfg_path, "--train", paths["train"], "--test", paths["test"],
                  "--steps", str(steps), "--threads", str(a.threads), "--seed", str(a.seed), "--tight-rtol", str(a.tight_tol),
                  "--save-weights", os.path.join(work, "flowzoo.safetensors")]
        if trace == "hutchinson":
            fz_cmd.append("--stochastic")
        for s in sets:
            fz_cmd += ["--set", s]
        zk_cmd = [sys.executable, os.path.abspath(__file__), "zuko", "--config", cfg_path, "--train", paths["train"],
                  "--test", paths["test"], "--steps", str(steps), "--threads", str(a.threads), "--seed", str(a.seed),
                  "--trace", trace, "--rtol", str(rtol), "--atol", str(atol), "--tight-tol", str(a.tight_tol)]
        if a.flowzoo_layer == "mlp":
            zk_cmd += ["--check-weights", os.path.join(work, "flowzoo.safetensors")]
        log(f"{name}: {n_train} train / {n_test} test rows, {dim} dims, {steps} steps, trace {trace}, work {work}")
        # flowzoo first: zuko's side checks flowzoo's trained weights.
        order = [("flowzoo", fz_cmd), ("zuko", zk_cmd)]
        res = {}
        for side, cmd in order:
            load0 = loadavg()
            res[side] = run_json(cmd, env)
            res[side]["load_before"], res[side]["load_after"] = load0, loadavg()
            log(f"  {side}: test LL {res[side]['mean_log_prob']:.3f} +- {res[side]['stderr']:.3f}, "
                f"{res[side]['s_per_step']:.4f} s/step, NFE {res[side]['nfe_forward_per_step']:.1f} + "
                f"{res[side]['nfe_backward_per_step']:.1f} per step")
        res["speedup"] = res["zuko"]["s_per_step"] / res["flowzoo"]["s_per_step"]
        res["cpu_speedup"] = res["zuko"]["cpu_s_per_step"] / res["flowzoo"]["cpu_s_per_step"]
        res.update({"n_train": n_train, "n_test": n_test, "dim": dim, "steps": steps, "trace": trace, "rtol": rtol,
                    "atol": atol, "flowzoo_sets": sets})
        results["datasets"][name] = res
    results["load_end"] = loadavg()
    os.makedirs(a.out_dir, exist_ok=True)
    out = os.path.join(a.out_dir, f"cnf-{datetime.date.today().isoformat()}.json")
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nflowzoo FFJORD vs zuko {zuko.__version__} CNF, {a.threads} thread(s), torch {torch.__version__} "
          f"(load {results['load_start']:.1f} -> {results['load_end']:.1f}); JSON: {out}\n")
    print(f"flowzoo's field: {a.flowzoo_layer}; 'LL at tol': both models re-scored in float64 at rtol = atol = "
          f"{a.tight_tol:g}, in brackets flowzoo's weights scored by zuko's CNF (the architecture check)\n")
    hdr = ("| data | trace | steps | flowzoo test LL | zuko test LL | LL at tol " + f"{a.tight_tol:g}" +
           " (fz / zuko) | NFE/step fz (f+b) | NFE/step zuko (f+b) | s/step fz | s/step zuko | speed-up (wall / CPU) |")
    print(hdr)
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results["datasets"].items():
        fz, zk = r["flowzoo"], r["zuko"]
        tight = f"{fz.get('tight_mean_log_prob', float('nan')):.3f} / {zk.get('tight_mean_log_prob', float('nan')):.3f}"
        if "check_mean_log_prob" in zk:
            tight += f" ({zk['check_mean_log_prob']:.3f})"
        print(f"| {name} | {r['trace']} | {r['steps']} | {fz['mean_log_prob']:.3f} ± {fz['stderr']:.3f} | "
              f"{zk['mean_log_prob']:.3f} ± {zk['stderr']:.3f} | {tight} | "
              f"{fz['nfe_forward_per_step']:.0f} + {fz['nfe_backward_per_step']:.0f} | "
              f"{zk['nfe_forward_per_step']:.0f} + {zk['nfe_backward_per_step']:.0f} | "
              f"{fz['s_per_step']:.3f} | {zk['s_per_step']:.3f} | {r['speedup']:.2f}x / {r['cpu_speedup']:.2f}x |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--example", required=True, help="the built examples/cnf_bench binary")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--datasets", default="pinwheel,8gaussians,digits64")
    r.add_argument("--steps-toys", type=int, default=1000)
    r.add_argument("--steps-digits", type=int, default=300)
    r.add_argument("--test-fraction", type=float, default=0.2)
    r.add_argument("--tight-tol", type=float, default=1e-8)
    r.add_argument("--flowzoo-set", default="", help="extra flowzoo --set overrides, space-separated")
    r.add_argument("--flowzoo-layer", default="mlp", choices=["mlp", "concatsquash"],
                   help="flowzoo's field: mlp (zuko's architecture, the like-for-like comparison) or concatsquash (FFJORD's)")
    r.add_argument("--work", default="")
    r.add_argument("--out-dir", default=os.path.join(ROOT, "bench", "results"))
    z = sub.add_parser("zuko")
    for k in ("--config", "--train", "--test"):
        z.add_argument(k, required=True)
    z.add_argument("--steps", type=int, required=True)
    z.add_argument("--threads", type=int, default=2)
    z.add_argument("--seed", type=int, default=0)
    z.add_argument("--trace", choices=["exact", "hutchinson"], required=True)
    z.add_argument("--rtol", type=float, required=True)
    z.add_argument("--atol", type=float, required=True)
    z.add_argument("--tight-tol", type=float, default=0.0)
    z.add_argument("--check-weights", default="", help="flowzoo weights (layer_type = mlp) to score in zuko's CNF")
    a = p.parse_args()
    {"run": cmd_run, "zuko": cmd_zuko}[a.cmd](a)


if __name__ == "__main__":
    main()
