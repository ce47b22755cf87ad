#!/usr/bin/env python3
"""Training-time curves of FFJORD variants on one toy (run by bench/cnf_objectives.sh): the time
each variant needs to reach given test log-likelihoods. Method and results: bench/NOTES.md,
section "Flow matching vs maximum likelihood".

Every variant trains the same model (the config's: FFJORD's concat-squash field by default) on
the SAME seeded split (bench_tabular.write_split, --test-fraction held out) with
examples/cnf_bench (flowzoo train's step: our Adam, the config's learning rate and batch, the
loss of train.objective plus the layers' weighted penalties), and scores the test set exactly
(adaptive Dormand-Prince at the config's eval tolerances, exact trace) every --eval-every steps
of that variant. The scoring is outside the timing: the curve is test log-likelihood against
the training seconds spent so far, process CPU seconds (steadier on a shared machine than wall
seconds, which are reported too) and wall seconds.

A variant is NAME[:KEY=VALUE,KEY=VALUE...] with `--set` overrides of the config, and its steps
and evaluation interval as STEPS/EVERY after an @: e.g.
    mle@1500/100
    fm:train.objective=flow_matching@20000/1000
    rnode:model.cnf.kinetic_weight=0.01,model.cnf.jacobian_weight=0.01@1500/100

`--table FILE.json [FILE.json ...]` prints the table of saved runs again (their variants merged),
for other --targets.

Output: a table on stdout (per variant: final test LL ± standard error, NFE per training step,
CPU and wall seconds per step, evaluation NFE, and the CPU / wall seconds to first reach each
--targets log-likelihood, "—" when it never did), and JSON with every curve in --out-dir.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
from bench_tabular import loadavg, write_split  # noqa: E402


def log(msg):
    print(f"[cnf_objectives] {msg}", file=sys.stderr, flush=True)


def parse_variant(text):
    """NAME[:K=V,K=V]@STEPS/EVERY -> (name, sets, steps, every)."""
    head, sep, tail = text.rpartition("@")
    if not sep:
        raise SystemExit(f"variant {text!r}: expected NAME[:KEY=VALUE,...]@STEPS/EVERY")
    steps, _, every = tail.partition("/")
    name, _, sets = head.partition(":")
    return name, [s for s in sets.split(",") if s], int(steps), int(every or steps)


def first_reaching(curve, target, key):
    """Training seconds (`key`) at the first evaluation whose test LL is >= target, or None."""
    for c in curve:
        if c["test_log_prob"] >= target:
            return c[key]
    return None


def fmt_time(v):
    return "—" if v is None else f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--example", default="", help="the built examples/cnf_bench binary")
    p.add_argument("--config", default="configs/ffjord_pinwheel.toml")
    p.add_argument("--data", default="", help="the data file (default: the config's data.path)")
    p.add_argument("--variants", nargs="+", default=[], help="NAME[:KEY=VALUE,...]@STEPS/EVERY (see above)")
    p.add_argument("--table", nargs="+", default=[], help="only print the table of these saved JSON files (merged)")
    p.add_argument("--targets", default="-2.0,-1.9,-1.8,-1.75,-1.72", help="test log-likelihoods, comma-separated")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--set", default="", help="overrides for every variant, space-separated")
    p.add_argument("--work", default="")
    p.add_argument("--out-dir", default=os.path.join(ROOT, "bench", "results"))
    a = p.parse_args()
    targets = [float(t) for t in a.targets.split(",") if t]
    if a.table:
        return table_only(a.table, targets)
    if not a.example or not a.variants:
        raise SystemExit("cnf_objectives: --example and --variants are needed (or --table FILE.json ...)")
    import tomllib
    with open(os.path.join(ROOT, a.config), "rb") as f:
        cfg = tomllib.load(f)
    data = a.data or cfg["data"]["path"]
    noise = float(cfg["data"].get("uniform_noise", 0.0))
    work = a.work or tempfile.mkdtemp(prefix="flowzoo-cnf-objectives-")
    paths, n_train, n_test, dim = write_split(data, work, a.test_fraction, a.seed, noise)
    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "config": a.config, "data": data,
               "threads": a.threads, "seed": a.seed, "n_train": n_train, "n_test": n_test, "targets": targets,
               "load_start": loadavg(), "variants": {}}
    log(f"{data}: {n_train} train / {n_test} test rows, {dim} dims, {a.threads} thread(s), work {work}")
    for text in a.variants:
        name, sets, steps, every = parse_variant(text)
        sets = ["data.test_fraction=0", "data.val_fraction=0", *a.set.split(), *sets]
        cmd = [a.example, "--config", a.config, "--train", paths["train"], "--test", paths["test"], "--steps", str(steps),
               "--threads", str(a.threads), "--seed", str(a.seed), "--eval-every", str(every)]
        for s in sets:
            cmd += ["--set", s]
        load0, t0 = loadavg(), time.perf_counter()
        r = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            log(f"{name} failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-3000:]}")
            raise SystemExit(1)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        res.update({"sets": sets, "steps": steps, "eval_every": every, "load_before": load0, "load_after": loadavg(),
                    "process_seconds": time.perf_counter() - t0})
        results["variants"][name] = res
        log(f"  {name}: test LL {res['mean_log_prob']:.3f} ± {res['stderr']:.3f} after {steps} steps, "
            f"{res['cpu_s_per_step']:.4f} CPU s/step, NFE {res['nfe_forward_per_step']:.1f} + {res['nfe_backward_per_step']:.1f} "
            f"(load {load0:.1f} -> {res['load_after']:.1f})")
    results["load_end"] = loadavg()
    os.makedirs(a.out_dir, exist_ok=True)
    out = os.path.join(a.out_dir, f"cnf-objectives-{datetime.date.today().isoformat()}.json")
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print_table(results, targets, out)


def print_table(results, targets, source):
    """The table of every variant in `results` (this run's, or JSON files merged by --table)."""
    print(f"\n{results['config']} on {results['data']} ({results['n_train']} train / {results['n_test']} test rows), "
          f"{results['threads']} thread(s), seed {results['seed']}, load {results['load_start']:.1f} -> "
          f"{results['load_end']:.1f}; JSON: {source}\n")
    tcols = " | ".join(f"LL ≥ {t:g}: CPU / wall s" for t in targets)
    print(f"| variant | steps | test LL | NFE/step (f+b) | CPU s/step | wall s/step | eval NFE (test set) | {tcols} |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(targets))
    for name, r in results["variants"].items():
        reach = " | ".join(f"{fmt_time(first_reaching(r['curve'], t, 'train_cpu_s'))} / {fmt_time(first_reaching(r['curve'], t, 'train_wall_s'))}"
                           for t in targets)
        print(f"| {name} | {r['steps']} | {r['mean_log_prob']:.3f} ± {r['stderr']:.3f} | {r['nfe_forward_per_step']:.0f} + "
              f"{r['nfe_backward_per_step']:.0f} | {r['cpu_s_per_step']:.4f} | {r['s_per_step']:.4f} | {r['eval_nfe']:.0f} | {reach} |")


def table_only(files, targets):
    """--table: the table of saved runs (their variants merged, in order), with these targets."""
    merged = None
    for f in files:
        with open(f) as fh:
            r = json.load(fh)
        if merged is None:
            merged = r
        else:
            merged["variants"].update(r["variants"])
            merged["load_start"] = min(merged["load_start"], r["load_start"])
            merged["load_end"] = max(merged["load_end"], r["load_end"])
    print_table(merged, targets, ", ".join(files))


if __name__ == "__main__":
    main()
