#!/usr/bin/env python3
"""Tables of `make ood-table` from what scripts/ood_table.sh and scripts/ood_tabular.sh measured.

Standard library only. Each measured set left in WORK (the scripts' work folder):
`<name>.ood.json` (the line `flowzoo ood --json` printed) and `<name>.scores.csv` (`flowzoo
score`'s CSV of the same inputs, for the mean bits/dim and PNG length the table shows), and
for the in-distribution inputs `in.scores.csv`.

    ood_tables.py images WORK MODEL SEED OUT_STEM SET=DESCRIPTION...   # OUT_STEM.md and OUT_STEM.json
    ood_tables.py tabular WORK OUT_STEM CLASS...                     # WORK/no<CLASS>/...
    ood_tables.py readme README.md TAG FILE.md                       # FILE.md between README's TAG markers

The JSON holds every figure the markdown shows, and more (AUPRC, the FPR at 95% TPR, every
count), with how it was measured.
"""
import csv
import json
import os
import statistics
import subprocess
import sys

SCORES_IMAGES = ("nll", "typicality", "complexity")
SCORES_ROWS = ("nll", "typicality")
# Sets that are not out of distribution (a check that the scores do not flag any unseen image):
# their row marks no score as the best.
CONTROLS = {"train"}


def mean_of(path, column):
    with open(path, newline="") as f:
        values = [float(r[column]) for r in csv.DictReader(f)]
    if not values:
        sys.exit(f"{path}: no rows")
    return statistics.fmean(values)


def load_ood(path):
    with open(path) as f:
        return json.load(f)


def cell(d, kind, best):
    """A score's AUROC as the table shows it, in bold when it is the row's best (as shown:
    every score tied at the best three decimals is bold)."""
    text = f"{d['scores'][kind]['auroc']:.3f}"
    return f"**{text}**" if text == best else text


def best_kind(d, kinds):
    """The row's best AUROC, as the table shows it."""
    return f"{max(d['scores'][k]['auroc'] for k in kinds):.3f}"


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def model_facts(model, best_name):
    """A run's path, steps and best held-out figure (state.json's `best_test_bpd`: the test
    bits/dim of an image run, the validation −log p in nats of a tabular one)."""
    with open(os.path.join(model, "state.json")) as f:
        state = json.load(f)
    return {"path": model, "steps": state["step"], "best_step": state["best_step"], best_name: state["best_test_bpd"]}


def images(work, model, seed, out_stem, sets):
    inliers = os.path.join(work, "in.scores.csv")
    rows, table = [], {}
    n_in = None
    for spec in sets:
        name, _, what = spec.partition("=")
        d = load_ood(os.path.join(work, f"{name}.ood.json"))
        scores = os.path.join(work, f"{name}.scores.csv")
        n_in = d["n_in"] if n_in is None else n_in
        if d["n_in"] != n_in:
            sys.exit(f"{name}: {d['n_in']} in-distribution inputs, the other sets {n_in}")
        table[name] = {
            "description": what,
            "n": d["n_ood"],
            "mean_bits_per_dim": mean_of(scores, "bits_per_dim"),
            "mean_input_complexity": mean_of(scores, "input_complexity"),
            "scores": d["scores"],
        }
        rows.append((name, what, d))
    facts = model_facts(model, "best_test_bpd")
    result = {
        "model": facts,
        "in_distribution": {
            "description": "Fashion-MNIST test images",
            "n": n_in,
            "mean_bits_per_dim": mean_of(inliers, "bits_per_dim"),
            "mean_input_complexity": mean_of(inliers, "input_complexity"),
        },
        "sets": table,
        "seed": int(seed),
        "how": "flowzoo ood --json per set (--in the in-distribution images, --ood the set), one dequantisation draw per image; "
        "means from flowzoo score --score complexity of the same inputs",
        "flowzoo_commit": git_commit(),
    }
    ind = result["in_distribution"]
    n_ood = sorted({t["n"] for t in table.values()})
    md = [
        f"Model `{model}` ({facts['steps']} training steps, best test bits/dim {facts['best_test_bpd']:.3f}); "
        f"in-distribution: {n_in} Fashion-MNIST test images drawn with seed {seed}; "
        f"{' or '.join(map(str, n_ood))} images per other set (same seed); one dequantisation draw per image. "
        "Cells: AUROC (1 = every outlier scores above every test image, 0.5 = chance, below 0.5 = the score "
        "prefers the outliers); the best score of each out-of-distribution row in bold.",
        "",
        "| inputs | images | mean bits/dim | mean L(x), PNG bits/dim | AUROC nll | AUROC typicality | AUROC complexity |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| {ind['description']} (in-distribution, the negatives) | {n_in} | {ind['mean_bits_per_dim']:.3f} | {ind['mean_input_complexity']:.3f} | | | |",
    ]
    for name, what, d in rows:
        t = table[name]
        best = None if name in CONTROLS else best_kind(d, SCORES_IMAGES)
        cells = " | ".join(cell(d, k, best) for k in SCORES_IMAGES)
        md.append(f"| {what} | {t['n']} | {t['mean_bits_per_dim']:.3f} | {t['mean_input_complexity']:.3f} | {cells} |")
    md += [
        "",
        "AUPRC / FPR at 95% TPR of the same runs:",
        "",
        "| inputs | nll | typicality | complexity |",
        "|---|---:|---:|---:|",
    ]
    for name, what, d in rows:
        s = d["scores"]
        md.append(f"| {what} | " + " | ".join(f"{s[k]['auprc']:.3f} / {s[k]['fpr95']:.3f}" for k in SCORES_IMAGES) + " |")
    write(out_stem, md, result)


def tabular(work, out_stem, classes):
    md = [
        "| digit left out | held-out rows, other digits | rows of the left-out digit | mean −log p, other digits (nats) | mean −log p, left-out digit (nats) | AUROC nll | AUROC typicality | AUPRC / FPR95 nll | AUPRC / FPR95 typicality |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    result = {"classes": {}, "how": "per class: flowzoo train (configs/realnvp_digits64.toml) on data/digits/train's rows of the other classes, "
              "then flowzoo ood --json --in their data/digits/test rows --ood every row of the class", "flowzoo_commit": git_commit()}
    for c in classes:
        folder = os.path.join(work, f"no{c}")
        d = load_ood(os.path.join(folder, "ood.json"))
        s = d["scores"]
        entry = {
            "n_in": d["n_in"],
            "n_ood": d["n_ood"],
            "mean_nll_in": mean_of(os.path.join(folder, "in.scores.csv"), "nll"),
            "mean_nll_ood": mean_of(os.path.join(folder, "ood.scores.csv"), "nll"),
            "scores": s,
            "model": model_facts(os.path.join(folder, "run"), "best_validation_nll"),
        }
        result["classes"][c] = entry
        best = best_kind(d, SCORES_ROWS)
        md.append(
            f"| {c} | {d['n_in']} | {d['n_ood']} | {entry['mean_nll_in']:.1f} | {entry['mean_nll_ood']:.1f} | "
            + " | ".join(cell(d, k, best) for k in SCORES_ROWS)
            + " | "
            + " | ".join(f"{s[k]['auprc']:.3f} / {s[k]['fpr95']:.3f}" for k in SCORES_ROWS)
            + " |"
        )
    if len(classes) > 1:
        mean = {k: statistics.fmean(result["classes"][c]["scores"][k]["auroc"] for c in classes) for k in SCORES_ROWS}
        result["mean_auroc"] = mean
        md.append(f"| mean | | | | | {mean['nll']:.3f} | {mean['typicality']:.3f} | | |")
    write(out_stem, md, result)


def write(out_stem, md, result):
    os.makedirs(os.path.dirname(out_stem) or ".", exist_ok=True)
    with open(out_stem + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    with open(out_stem + ".json", "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(f"wrote {out_stem}.md and {out_stem}.json", file=sys.stderr)


def readme(path, tag, table):
    text = open(path).read()
    start, end = f"<!-- {tag}: written by make ood-table -->\n", f"<!-- /{tag} -->"
    if start not in text or end not in text:
        sys.exit(f"{path} has no {start.strip()} ... {end} block")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w") as f:
        f.write(head + start + open(table).read() + end + tail)
    print(f"{path}: {tag} updated from {table}", file=sys.stderr)


if __name__ == "__main__":
    a = sys.argv[1:]
    if len(a) >= 6 and a[0] == "images":
        images(a[1], a[2], a[3], a[4], a[5:])
    elif len(a) >= 4 and a[0] == "tabular":
        tabular(a[1], a[2], a[3:])
    elif len(a) == 4 and a[0] == "readme":
        readme(a[1], a[2], a[3])
    else:
        sys.exit(__doc__)
