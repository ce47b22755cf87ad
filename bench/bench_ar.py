#!/usr/bin/env python3
"""flowzoo's MAF, NSF-AR and NSF-C (and MAF / IAF sampling) against the same architectures in
zuko and nflows 0.14 (run by bench/ar.sh).

The protocol is bench/bench_tabular.py's (whose helpers this imports), per (model, dataset):
the same split (this script writes train.csv / test.csv), the same architecture (each peer
model is built from the flowzoo run's config.toml and weights: masks, orders, permutations,
standardisation; bench/ar_mirrors.py), the same optimisation (Adam, flowzoo's warm-up,
gradient clipping, batch, epochs of floor(N / batch) steps over a fresh permutation, one
train-mode forward on up to 512 rows first), the same seeds and threads; test log-likelihood
in nats in the data's units (mean +- standard error over test rows of the per-row mean over
seeds) and training seconds per epoch (median over seeds).

Architecture check: each peer first loads the flowzoo run's trained weights and compares its
per-row test log-likelihoods with `flowzoo eval`'s (float32 round-off).

Sampling (samples/s, no gradients, temperature 1, the trained seed-0 weights): MAF with
flowzoo's sequential and Jacobi inverses against the peers' (both run D whole network passes per
layer), and IAF (one pass per layer). Both sides are timed in process, the median of repeated
calls after a warm-up: flowzoo by examples/ar_sampling.rs (which also counts the MADE passes a
Jacobi inverse makes), the peers here.

Subcommands: `run` (the whole benchmark: tables on stdout, JSON to --out-dir/ar-<date>.json),
`peer` (internal: one zuko or nflows run for one flowzoo run, JSON on stdout).
"""
import argparse
import datetime
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_tabular as bt  # noqa: E402

ROOT = bt.ROOT
log = bt.log

# Settings every side can mirror (bench/ar_mirrors.py): natural MADE orders with reversals
# between the layers (nflows' MAF; zuko: its permutation transform), no normalisation.
COMMON = ["model.made_order=natural", "model.made_degrees=cyclic", "model.permutation=reverse", "model.norm=none",
          "model.base=normal", "model.residual=false", "model.activation=relu", "model.depth=2"]
MODELS = {
    "maf": ("MAF", ["model.kind=maf"]),
    "nsf_ar": ("NSF-AR", ["model.kind=nsf", "model.structure=autoregressive"]),
    "nsf_c": ("NSF-C", ["model.kind=nsf", "model.structure=coupling", "model.mask=alternating"]),
}
DATASETS = {
    # name: (data file, config per model family)
    "digits64": ("data/digits64.csv", {"maf": "configs/maf_digits64.toml", "nsf": "configs/nsf_digits64.toml"}),
    "moons": ("data/toys/moons.csv", {"maf": "configs/maf_moons.toml", "nsf": "configs/nsf_moons.toml"}),
    "8gaussians": ("data/toys/8gaussians.csv", {"maf": "configs/maf_moons.toml", "nsf": "configs/nsf_moons.toml"}),
}
IMPLS = ("zuko", "nflows")
DIMS = {"digits64": 64, "moons": 2, "8gaussians": 2}


# --------------------------------------------------------------------------------------------
# One peer run (a subprocess, so that each side's threads and allocator start fresh)
# --------------------------------------------------------------------------------------------


def time_sampling(sample, n, repeats):
    """samples/s: the median of at most `repeats` timed calls after a warm-up (at least 3, and no
    more once 8 s are spent), as examples/ar_sampling.rs times flowzoo."""
    import torch
    with torch.no_grad():
        sample(min(n, 16))  # warm-up
        times = []
        for r in range(repeats):
            if r >= 3 and sum(times) > 8.0:
                break
            torch.manual_seed(r)
            t = time.perf_counter()
            s = sample(n)
            times.append(time.perf_counter() - t)
        assert torch.isfinite(s).all()
    return n / statistics.median(times)


def cmd_peer(a):
    import torch
    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    from safetensors.torch import load_file
    import ar_mirrors

    t_start = time.perf_counter()
    with open(os.path.join(a.run, "config.toml"), "rb") as f:
        cfg = tomllib.load(f)
    weights = load_file(os.path.join(a.run, "weights.safetensors"))
    tr = cfg["train"]
    noise = float(cfg["data"].get("uniform_noise", 0.0))
    _, train_np = bt.read_rows(a.train)
    _, test_np = bt.read_rows(a.test)
    n, dim = train_np.shape
    spec = ar_mirrors.spec_of(cfg, weights, dim)
    train = torch.as_tensor(train_np, dtype=torch.float32)
    test = torch.as_tensor(test_np, dtype=torch.float32)
    result = {"impl": a.impl, "threads": torch.get_num_threads()}

    def score(m):
        m.module.eval()
        with torch.no_grad():
            return torch.cat([m.log_prob(test[i:i + 256]).double() for i in range(0, test.shape[0], 256)]).numpy()

    # Architecture check: flowzoo's trained weights in the peer's model.
    chk = ar_mirrors.build(a.impl, spec)
    chk.load(weights, spec)
    with open(a.check_weights) as f:
        ref = np.asarray(json.load(f)["log_prob"], dtype=np.float64)
    lp = score(chk)
    result["check_max_abs_diff"] = float(np.max(np.abs(lp - ref)))
    sizes = [int(v) for v in a.sample_n.split(",") if v and int(v) > 0]
    if sizes:
        result["samples_per_s"] = {str(n): time_sampling(chk.sample, n, a.sample_repeats) for n in sizes}
    if a.epochs == 0:
        print(json.dumps(result))
        return

    torch.manual_seed(a.seed)
    model = ar_mirrors.build(a.impl, spec)
    params = model.parameters()
    result["parameters"] = int(sum(p.numel() for p in params))
    opt = torch.optim.Adam(params, lr=tr["lr"], betas=(0.9, 0.999), eps=1e-8)
    batch = int(tr["batch_size"])
    spe = max(n // batch, 1)
    warm = int(tr.get("warmup_steps", 0))
    clip = float(tr.get("grad_clip", 0.0))
    gen = torch.Generator().manual_seed(a.seed + 1)

    def batch_at(idx):
        x = train[idx]
        return x + torch.rand(x.shape, generator=gen) * noise if noise > 0 else x

    model.module.train()
    with torch.no_grad():  # flowzoo's data-dependent initialisation pass
        model.log_prob(batch_at(torch.randperm(n, generator=gen)[:min(n, max(batch, 512))]))
    losses, skipped, step = [], 0, 0
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(a.epochs):
        perm = torch.randperm(n, generator=gen)
        for k in range(spe):
            x = batch_at(perm[k * batch:(k + 1) * batch])
            for g in opt.param_groups:
                g["lr"] = tr["lr"] * min((step + 1) / warm, 1.0) if warm > 0 else tr["lr"]
            opt.zero_grad()
            loss = -model.log_prob(x).mean()
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
    lp = score(model)
    result.update(bt.summary(lp))
    np.save(a.log_prob_out, lp)
    result.update({
        "epochs": a.epochs, "steps": step, "steps_per_epoch": spe, "batch_size": batch, "train_seconds": train_s,
        "s_per_epoch": train_s / a.epochs, "train_cpu_seconds": train_cpu, "skipped_steps": skipped,
        "final_train_nll": float(np.mean(losses[-spe:])), "process_seconds": time.perf_counter() - t_start,
    })
    print(json.dumps(result))


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


def peer_side(a, impl, run, paths, work, epochs, seed, sample_n=""):
    lp_out = os.path.join(work, f"{impl}_lp.npy")
    cmd = [sys.executable, os.path.abspath(__file__), "peer", "--impl", impl, "--run", run, "--train", paths["train"],
           "--test", paths["test"], "--epochs", str(epochs), "--threads", str(a.threads), "--seed", str(seed),
           "--check-weights", os.path.join(work, "flowzoo_eval.json"), "--log-prob-out", lp_out,
           "--sample-n", str(sample_n), "--sample-repeats", str(a.sample_repeats)]
    out, wall, cpu = bt.timed(cmd)
    r = json.loads(out.strip().splitlines()[-1])
    r.update({"seed": seed, "process_seconds_outer": wall, "process_cpu_seconds": cpu})
    return (np.load(lp_out) if epochs else None), r


def flowzoo_sampling(a, run, n, inverse="sequential"):
    """flowzoo's samples/s, in process (examples/ar_sampling.rs), and the MADE passes per call."""
    out, _, _ = bt.timed([a.sampler, run, str(n), str(a.sample_repeats), inverse])
    r = json.loads(out.strip().splitlines()[-1])
    return r["samples_per_s"], r


def cmd_run(a):
    import torch
    datasets = [s for s in a.datasets.split(",") if s]
    models = [s for s in a.models.split(",") if s]
    seeds = list(range(a.seed, a.seed + a.seeds))
    work_root = a.work or tempfile.mkdtemp(prefix="flowzoo-ar-")
    results, sampling = [], []
    t_all = time.perf_counter()
    for ds in datasets:
        data, configs = DATASETS[ds]
        digits = ds == "digits64"
        epochs = a.epochs_digits if digits else a.epochs_toys
        with open(os.path.join(ROOT, configs["maf"]), "rb") as f:
            noise = float(tomllib.load(f)["data"].get("uniform_noise", 0.0))
        paths, n_train, n_test, dim = bt.write_split(data, os.path.join(work_root, ds), a.test_fraction, a.split_seed, noise)
        sample_n = a.sample_n_digits if digits else a.sample_n_toys
        for model in models:
            label, sets = MODELS[model]
            cfg_path = configs["nsf" if model.startswith("nsf") else "maf"]
            sets = COMMON + sets
            work = os.path.join(work_root, ds, model)
            os.makedirs(work, exist_ok=True)
            log(f"{label} on {ds}: {n_train} train / {n_test} test rows, {dim} dims, {epochs} epochs, seeds {seeds}")
            fz_lps, fz_runs, peer = [], [], {i: ([], []) for i in IMPLS}
            for seed in seeds:
                run, lp, fz, overrides = bt.flowzoo_side(a, cfg_path, sets, {**paths}, work, epochs, n_train, seed)
                fz_lps.append(lp)
                fz_runs.append(fz)
                log(f"  seed {seed}: flowzoo {bt.fmt_ll(fz)}, {fz['s_per_epoch']:.3f} s/epoch")
                timed_sampling = model == "maf" and seed == seeds[0]
                for impl in IMPLS:
                    plp, r = peer_side(a, impl, run, paths, work, epochs, seed, sample_n if timed_sampling else "")
                    peer[impl][0].append(plp)
                    peer[impl][1].append(r)
                    log(f"  seed {seed}: {impl:7s} {bt.fmt_ll(r)}, {r['s_per_epoch']:.3f} s/epoch; flowzoo's weights in "
                        f"the {impl} model: max |d log p| = {r['check_max_abs_diff']:.1e}")
                if timed_sampling:
                    for n in sample_n.split(","):
                        sampling.append(sampling_row(a, "MAF", ds, run, int(n), {i: peer[i][1][-1] for i in IMPLS}))
            row = {"model": label, "dataset": ds, "dim": dim, "epochs": epochs, "seeds": seeds, "flowzoo_overrides": overrides,
                   "n_train": n_train, "n_test": n_test, "flowzoo": bt.aggregate(fz_lps, fz_runs)}
            for impl in IMPLS:
                row[impl] = bt.aggregate(peer[impl][0], peer[impl][1])
                row[impl]["architecture_check_max_abs_diff"] = max(r["check_max_abs_diff"] for r in peer[impl][1])
                d = np.mean(fz_lps, axis=0) - np.mean(peer[impl][0], axis=0)
                row[f"ll_diff_vs_{impl}"] = float(d.mean())
                row[f"ll_diff_vs_{impl}_paired_stderr"] = float(d.std(ddof=1) / math.sqrt(d.size))
            fastest = min(IMPLS, key=lambda i: row[i]["s_per_epoch"])
            row["faster_peer"] = fastest
            row["speed_ratio"] = row[fastest]["s_per_epoch"] / row["flowzoo"]["s_per_epoch"]
            results.append(row)
        if "maf" in models:
            # IAF: sampling is one pass per layer; a flowzoo IAF trained for one epoch.
            work = os.path.join(work_root, ds, "iaf")
            os.makedirs(work, exist_ok=True)
            sets = COMMON + ["model.kind=iaf"]
            run, _, _, _ = bt.flowzoo_side(a, configs["maf"], sets, {**paths}, work, 1, n_train, seeds[0])
            peers = {impl: peer_side(a, impl, run, paths, work, 0, seeds[0], sample_n)[1] for impl in IMPLS}
            for n in sample_n.split(","):
                sampling.append(sampling_row(a, "IAF", ds, run, int(n), peers))
    total = time.perf_counter() - t_all
    print_tables(a, results, sampling, seeds)
    out = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
        "zuko": bt.importlib.metadata.version("zuko"), "nflows": bt.importlib.metadata.version("nflows"),
        "threads": a.threads, "seeds": seeds, "loadavg_end": bt.loadavg(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""), "total_seconds": total,
        "git_head": subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
        "training": results, "sampling": sampling,
    }
    os.makedirs(a.out_dir, exist_ok=True)
    path = os.path.join(a.out_dir, f"ar-{datetime.date.today().isoformat()}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {os.path.relpath(path, ROOT)} (total {total:.0f} s)")
    if not a.work:
        shutil.rmtree(work_root, ignore_errors=True)


def sampling_row(a, label, ds, run, n, peers):
    row = {"model": label, "dataset": ds, "n": n}
    row["flowzoo"], row["flowzoo_detail"] = flowzoo_sampling(a, run, n)
    with open(os.path.join(run, "config.toml"), "rb") as f:
        blocks = tomllib.load(f)["model"]["blocks"]
    if label == "MAF":
        row["flowzoo_jacobi"], row["flowzoo_jacobi_detail"] = flowzoo_sampling(a, run, n, "jacobi")
        row["jacobi_iterations_per_layer"] = row["flowzoo_jacobi_detail"]["made_passes"] / blocks
    for impl in IMPLS:
        row[impl] = peers[impl]["samples_per_s"][str(n)]
        row[f"{impl}_check_max_abs_diff"] = peers[impl]["check_max_abs_diff"]
    row["faster_peer"] = max(IMPLS, key=lambda i: row[i])
    row["ratio"] = row["flowzoo"] / row[row["faster_peer"]]
    if label == "MAF":
        row["ratio_jacobi"] = row["flowzoo_jacobi"] / row[row["faster_peer"]]
    log(f"  {label} sampling on {ds} (n={n}): flowzoo {row['flowzoo']:.0f}/s"
        + (f", Jacobi {row['flowzoo_jacobi']:.0f}/s ({row['jacobi_iterations_per_layer']:.1f} iterations per layer)" if label == "MAF" else "")
        + "".join(f", {i} {row[i]:.0f}/s" for i in IMPLS))
    return row


def print_tables(a, results, sampling, seeds):
    def table(hdr, rows):
        w = [max(len(str(r[i])) for r in [hdr] + rows) for i in range(len(hdr))]
        for k, r in enumerate([hdr] + rows):
            print("  ".join(str(c).ljust(w[j]) if j < 2 else str(c).rjust(w[j]) for j, c in enumerate(r)))
            if k == 0:
                print("  ".join("-" * x for x in w))

    print(f"\ntraining: test log-likelihood (nats, data units; mean ± stderr over test rows of the per-row mean over "
          f"seeds {seeds[0]}..{seeds[-1]}) and seconds per epoch (median over seeds); {a.threads} threads")
    table(("model", "dataset", "flowzoo LL", "zuko LL", "nflows LL", "flowzoo s/ep", "zuko s/ep", "nflows s/ep",
           "ratio (faster peer / flowzoo)"),
          [(r["model"], r["dataset"], bt.fmt_ll(r["flowzoo"]), bt.fmt_ll(r["zuko"]), bt.fmt_ll(r["nflows"]),
            f"{r['flowzoo']['s_per_epoch']:.3f}", f"{r['zuko']['s_per_epoch']:.3f}", f"{r['nflows']['s_per_epoch']:.3f}",
            f"{r['speed_ratio']:.2f} ({r['faster_peer']})") for r in results])
    for r in results:
        print(f"  {r['model']} {r['dataset']}: flowzoo - zuko {r['ll_diff_vs_zuko']:+.3f} (± {r['ll_diff_vs_zuko_paired_stderr']:.3f}), "
              f"flowzoo - nflows {r['ll_diff_vs_nflows']:+.3f} (± {r['ll_diff_vs_nflows_paired_stderr']:.3f}) paired over rows; "
              f"same-weights checks {r['zuko']['architecture_check_max_abs_diff']:.0e} (zuko), "
              f"{r['nflows']['architecture_check_max_abs_diff']:.0e} (nflows)")
    if sampling:
        print("\nsampling: samples/s (no gradients, temperature 1)")
        table(("model", "dataset", "n", "flowzoo", "flowzoo Jacobi", "zuko", "nflows", "ratio (flowzoo / faster peer)",
               "Jacobi iterations per layer (of D)"),
              [(s["model"], s["dataset"], s["n"], f"{s['flowzoo']:.0f}",
                f"{s['flowzoo_jacobi']:.0f}" if "flowzoo_jacobi" in s else "-", f"{s['zuko']:.0f}", f"{s['nflows']:.0f}",
                f"{s['ratio']:.2f}" + (f" / Jacobi {s['ratio_jacobi']:.2f}" if "ratio_jacobi" in s else ""),
                f"{s['jacobi_iterations_per_layer']:.1f} (of {DIMS[s['dataset']]})" if "jacobi_iterations_per_layer" in s else "-")
               for s in sampling])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--bin", default=os.path.join(ROOT, "target/release/flowzoo"))
    r.add_argument("--sampler", default=os.path.join(ROOT, "target/release/examples/ar_sampling"),
                   help="examples/ar_sampling.rs, built (flowzoo's in-process sampling timer)")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--seeds", type=int, default=3)
    r.add_argument("--split-seed", type=int, default=0)
    r.add_argument("--datasets", default="digits64,moons,8gaussians")
    r.add_argument("--models", default="maf,nsf_ar,nsf_c")
    r.add_argument("--epochs-digits", type=int, default=25)
    r.add_argument("--epochs-toys", type=int, default=20)
    r.add_argument("--test-fraction", type=float, default=0.2)
    r.add_argument("--sample-n-digits", default="1000", help="comma-separated sample sizes")
    r.add_argument("--sample-n-toys", default="1000,10000", help="comma-separated sample sizes")
    r.add_argument("--sample-repeats", type=int, default=20, help="at most this many timed calls (and 8 s) per figure")
    r.add_argument("--work", default="")
    r.add_argument("--out-dir", default=os.path.join(ROOT, "bench", "results"))
    p = sub.add_parser("peer")
    p.add_argument("--impl", choices=IMPLS, required=True)
    for k in ("--run", "--train", "--test", "--check-weights", "--log-prob-out"):
        p.add_argument(k, required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-n", default="", help="comma-separated sample sizes to time (none: no timing)")
    p.add_argument("--sample-repeats", type=int, default=20)
    a = ap.parse_args()
    if a.cmd == "run":
        a.bin = os.path.abspath(a.bin)
        a.sampler = os.path.abspath(a.sampler)
        a.toy_set = ""
        cmd_run(a)
    else:
        cmd_peer(a)


if __name__ == "__main__":
    main()
