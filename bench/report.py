#!/usr/bin/env python3
"""Turns bench/run.sh's raw lines into the table (stdout) and bench/results/<date>.json.

Each raw line: {"case", "impl": "flowzoo" | "pytorch" | "pytorch_compile", "round", "result": <the
JSON a benchmark printed>}. "pytorch_compile" (the reference under torch.compile) becomes two more
columns, its rate and flowzoo's paired ratio to it, and its compilation seconds are listed apart. For every case and every metric both sides report (a numeric top-level field whose
per-repeat values are in result["runs"][metric]), each side's value is the median over all
repeats of all rounds. The ratio is flowzoo / pytorch (higher is better for flowzoo: every metric
is a rate), taken PAIRED: the two sides of one round ran back to back under the same load, so the
ratio is the median over rounds of (flowzoo's median in the round / pytorch's median in the
round); the range of those per-round ratios is printed beside it. On a machine whose load drifts
(other users), that is steadier than the ratio of the overall medians.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

METRIC_LABELS = {
    "train_steps_per_s": "train steps/s",
    "log_prob_images_per_s": "log_prob images/s",
    "sample_images_per_s": "sample images/s (T=0.7)",
}


def machine() -> dict:
    model = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
                break
    except (OSError, subprocess.CalledProcessError):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "hostname": platform.node(),
            "loadavg": list(os.getloadavg())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--rounds", type=int, required=True)
    args = ap.parse_args()

    rows = [json.loads(line) for line in open(args.raw) if line.strip()]
    cases: dict = {}
    for r in rows:
        c = cases.setdefault(r["case"], {"flowzoo": [], "pytorch": [], "pytorch_compile": []})
        c[r["impl"]].append(r["result"])

    def paired_ratio(case, m, ref):
        per_round = {}
        for r in rows:
            if r["case"] == case and r["result"].get("runs", {}).get(m):
                per_round.setdefault(r["round"], {})[r["impl"]] = statistics.median(r["result"]["runs"][m])
        return [d["flowzoo"] / d[ref] for d in per_round.values() if "flowzoo" in d and ref in d]

    compile_key = {"train_steps_per_s": "train", "log_prob_images_per_s": "log_prob", "sample_images_per_s": "sample"}

    table = []
    torch_versions = set()
    for case, sides in cases.items():
        for res in sides["flowzoo"] + sides["pytorch"]:
            torch_versions.add(res.get("torch", "unknown"))
        fz, pt = sides["flowzoo"], sides["pytorch"]
        if not fz or not pt:
            continue
        metrics = [k for k in fz[0].get("runs", {}) if k in pt[0].get("runs", {})]
        for m in metrics:
            a = [v for res in fz for v in res["runs"][m]]
            b = [v for res in pt for v in res["runs"][m]]
            if not a or not b:
                continue
            ma, mb = statistics.median(a), statistics.median(b)
            paired = paired_ratio(case, m, "pytorch")
            comp = {}
            cruns = [v for res in sides["pytorch_compile"] for v in res.get("runs", {}).get(m, [])]
            if cruns:
                cp = paired_ratio(case, m, "pytorch_compile")
                mc = statistics.median(cruns)
                secs = [res.get("compile_seconds", {}).get(compile_key.get(m, m)) for res in sides["pytorch_compile"]]
                secs = [x for x in secs if x is not None]
                comp = {"compile": mc, "compile_ratio": statistics.median(cp) if cp else ma / mc, "compile_round_ratios": cp,
                        "compile_runs": cruns, "compile_seconds": statistics.median(secs) if secs else None}
            table.append({**comp,
                "case": case, "metric": m, "flowzoo": ma, "pytorch": mb,
                "ratio": statistics.median(paired) if paired else ma / mb,
                "ratio_min": min(paired) if paired else ma / mb, "ratio_max": max(paired) if paired else ma / mb,
                "ratio_of_medians": ma / mb, "round_ratios": paired,
                "flowzoo_runs": a, "pytorch_runs": b,
                "config": fz[0].get("config", {}), "pytorch_config": pt[0].get("config", {}),
            })

    name_w = max([len(f"{t['case']}: {METRIC_LABELS.get(t['metric'], t['metric'])}") for t in table] + [6])
    with_compile = any("compile" in t for t in table)
    extra = f"  {'compiled':>10}  {'ratio':>6}  {'compile s':>9}" if with_compile else ""
    print(f"{'metric':<{name_w}}  {'flowzoo':>10}  {'pytorch':>10}  {'ratio':>6}  {'rounds':>11}{extra}")
    print(f"{'-' * name_w}  {'-' * 10}  {'-' * 10}  {'-' * 6}  {'-' * 11}" + (f"  {'-' * 10}  {'-' * 6}  {'-' * 9}" if with_compile else ""))
    for t in table:
        label = f"{t['case']}: {METRIC_LABELS.get(t['metric'], t['metric'])}"
        low = t["ratio"] < 1.0 or t.get("compile_ratio", 1.0) < 1.0
        flag = "  < 1.0" if low else ""
        spread = f"{t['ratio_min']:.2f}-{t['ratio_max']:.2f}"
        comp = ""
        if "compile" in t:
            secs = f"{t['compile_seconds']:.0f}" if t.get("compile_seconds") is not None else "-"
            comp = f"  {t['compile']:>10.2f}  {t['compile_ratio']:>5.2f}x  {secs:>9}"
        elif with_compile:
            comp = f"  {'-':>10}  {'-':>6}  {'-':>9}"
        print(f"{label:<{name_w}}  {t['flowzoo']:>10.2f}  {t['pytorch']:>10.2f}  {t['ratio']:>5.2f}x  {spread:>11}{comp}{flag}")
    mach = machine()
    print(f"\n{mach['cpu']}, {mach['cores']} cores, {args.threads} threads each side, torch "
          f"{', '.join(sorted(torch_versions))}; medians over {args.rounds} alternating rounds (ratio: median of "
          f"the per-round ratios, their range beside it; 'compiled': the reference under torch.compile, "
          f"Inductor, default mode, its compilation time apart); "
          f"load average now {mach['loadavg'][0]:.2f}")

    out = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": mach,
        "torch": sorted(torch_versions),
        "threads": args.threads,
        "rounds": args.rounds,
        "table": table,
        "raw": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
