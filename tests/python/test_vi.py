"""`flowzoo fit` on the Bayesian logistic regression of the README (data/breast_cancer.csv)
against an MCMC reference: the committed reference (data/breast_cancer_posterior.json, made by
scripts/logreg_reference.py) is reproduced by a short independent run, the TorchScript target
agrees with the sampler's numpy log-posterior, and a small flow fitted by `flowzoo fit` has the
reference's posterior means and standard deviations."""
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("FLOWZOO_BIN") or str(ROOT / "target" / "release" / "flowzoo")
sys.path.insert(0, str(ROOT / "scripts"))
import logreg_reference  # noqa: E402
import vi_compare  # noqa: E402
import vi_targets  # noqa: E402

REF = json.loads((ROOT / "data" / "breast_cancer_posterior.json").read_text())


def flowzoo(*args):
    r = subprocess.run([BIN, *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, f"flowzoo {' '.join(map(str, args))} failed:\n{r.stderr}"
    return r.stdout


def test_the_committed_reference_is_reproduced_by_an_independent_short_run():
    assert REF["ess_min"] > 50_000 and REF["rhat_max"] < 1.01, REF
    r = logreg_reference.run(chains=4, warmup=400, draws=1500, seed=7)
    se = np.sqrt(np.asarray(r["mean_mcse"]) ** 2 + np.asarray(REF["mean_mcse"]) ** 2)
    z = np.abs(np.asarray(r["mean"]) - np.asarray(REF["mean"])) / se
    assert z.max() < 5.0, f"means differ by up to {z.max():.1f} Monte Carlo errors"
    ratio = np.asarray(r["std"]) / np.asarray(REF["std"])
    assert 0.93 < ratio.min() and ratio.max() < 1.07, ratio


def test_the_sampler_gradient_and_the_torchscript_target_agree():
    x, y = logreg_reference.load()
    rng = np.random.default_rng(0)
    beta = rng.standard_normal((3, x.shape[1])) * 0.5
    lp, g = logreg_reference.log_post_and_grad(beta, x, y)
    h = 1e-6
    for j in [0, 5, 30]:
        e = np.zeros_like(beta)
        e[:, j] = h
        fd = (logreg_reference.log_post_and_grad(beta + e, x, y)[0] - logreg_reference.log_post_and_grad(beta - e, x, y)[0]) / (2 * h)
        assert np.allclose(fd, g[:, j], rtol=1e-5, atol=1e-4), (j, fd, g[:, j])
    m = torch.jit.script(vi_targets.LogisticRegression(torch.tensor(x), torch.tensor(y), logreg_reference.PRIOR_STD))
    ts = m.log_prob(torch.tensor(beta)).numpy()
    # The module carries the prior's normaliser; the sampler does not need it.
    norm = -0.5 * x.shape[1] * math.log(2 * math.pi * logreg_reference.PRIOR_STD**2)
    assert np.allclose(ts, lp + norm, rtol=1e-12, atol=1e-9), (ts, lp + norm)


def test_a_fitted_flow_matches_the_mcmc_posterior(tmp_path):
    x, y = logreg_reference.load()
    target = tmp_path / "logreg.pt"
    torch.jit.save(torch.jit.script(vi_targets.LogisticRegression(torch.tensor(x), torch.tensor(y), logreg_reference.PRIOR_STD)), target)
    run = tmp_path / "run"
    # A small flow, few steps: enough for a posterior this close to Gaussian.
    sets = ["model.blocks=4", "model.width=32", "train.max_steps=600", "train.lr=3e-3", "train.eval_every=300",
            "train.checkpoint_every=300", "train.sample_every=0", "train.threads=1"]
    flowzoo("fit", "--target", target, "--dim", 31, "--out", run, "--device", "cpu", "-q", *[a for s in sets for a in ("--set", s)])
    samples = tmp_path / "s.csv"
    flowzoo("sample", "--model", run, "-n", 20000, "--temperature", 1, "-o", samples, "--device", "cpu")
    c = vi_compare.compare(np.loadtxt(samples, delimiter=",", skiprows=1), REF)
    assert c["max_abs_mean_diff_over_std"] < 0.2, c
    assert 0.8 < c["std_ratio_min"] and c["std_ratio_max"] < 1.1, c
    e = json.loads(flowzoo("eval", "--model", run, "--target", target, "--n", 20000, "--json", "--device", "cpu"))
    assert e["elbo"] <= e["log_z"] and e["ess_fraction"] > 0.05, e
