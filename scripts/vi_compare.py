"""Compares a flow's samples with the MCMC reference of the logistic-regression posterior
(data/breast_cancer_posterior.json, made by scripts/logreg_reference.py):

    python scripts/vi_compare.py SAMPLES.csv [REFERENCE.json]

SAMPLES.csv is `flowzoo sample --model RUN -n N --temperature 1 -o SAMPLES.csv` of a run
fitted to logreg.pt (scripts/vi_targets.py). Prints one JSON object: the number of draws, the
largest |mean difference| in units of the reference posterior std (and which weight), the
range of std ratios flow / reference, and the reference's Monte Carlo error on the same scale.
"""
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def compare(samples, ref):
    mean, std = np.asarray(ref["mean"]), np.asarray(ref["std"])
    m, s = samples.mean(0), samples.std(0, ddof=1)
    z = np.abs(m - mean) / std
    ratio = s / std
    return {
        "draws": int(len(samples)),
        "max_abs_mean_diff_over_std": float(z.max()),
        "worst_weight": int(z.argmax()),
        "mean_abs_mean_diff_over_std": float(z.mean()),
        "std_ratio_min": float(ratio.min()),
        "std_ratio_max": float(ratio.max()),
        "std_ratio_median": float(np.median(ratio)),
        # The flow's own Monte Carlo error of a mean is about 1/sqrt(draws) of a std.
        "flow_mean_mcse_over_std": float(1.0 / np.sqrt(len(samples))),
        "reference_mean_mcse_over_std_max": float((np.asarray(ref["mean_mcse"]) / std).max()),
    }


def main():
    samples = np.loadtxt(sys.argv[1], delimiter=",", skiprows=1, ndmin=2)
    path = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "..", "data", "breast_cancer_posterior.json")
    with open(path) as f:
        ref = json.load(f)
    if samples.shape[1] != len(ref["mean"]):
        sys.exit(f"{sys.argv[1]}: {samples.shape[1]} columns, the reference has {len(ref['mean'])} weights")
    print(json.dumps(compare(samples, ref)))


if __name__ == "__main__":
    main()
