"""MCMC reference for the Bayesian logistic regression example of `flowzoo fit` (README,
"Fitting a density"): the posterior of the weights given data/breast_cancer.csv.

Model: the 30 features standardised (mean 0, population std 1), an intercept column of ones in
front, weights beta in R^31 with prior N(0, PRIOR_STD^2 I), and y = benign in {0, 1} with
P(y = 1) = sigmoid(x . beta). The same model as scripts/vi_targets.py's logreg.pt.

Sampler: Hamiltonian Monte Carlo in numpy, seeded, all chains advanced together. It runs in the
coordinates u of beta = MAP + L u, with L L^T the Laplace covariance at the MAP (a dense
pre-conditioner found by Newton's method), so the posterior it explores is close to isotropic.
Leapfrog step size adapted during warm-up by dual averaging to an acceptance rate of 0.8, then
frozen; the number of leapfrog steps drawn uniformly from {5, ..., 15} per transition (jitter).
Effective sample size per coordinate: Geyer's initial monotone sequence estimator on the
autocorrelations averaged over chains (Stan's, without chain splitting); R-hat from the chains.

    python scripts/logreg_reference.py --chains 8 --warmup 2000 --draws 25000 -o data/breast_cancer_posterior.json

writes the posterior means, standard deviations and Monte Carlo errors with these settings
(the committed file); `--quick` runs a short version for the tests (tests/python/test_vi.py).
"""
import argparse
import json
import os
import time

import numpy as np

PRIOR_STD = 1.0
HERE = os.path.dirname(os.path.abspath(__file__))


def load(path=os.path.join(HERE, "..", "data", "breast_cancer.csv")):
    d = np.loadtxt(path, delimiter=",", skiprows=1)
    x, y = d[:, :30], d[:, 30]
    x = (x - x.mean(0)) / x.std(0)
    return np.hstack([np.ones((len(x), 1)), x]), y


def log_post_and_grad(beta, x, y):
    """log p(beta | data) + const and its gradient, for beta [C, D] (one row per chain)."""
    logits = beta @ x.T
    ll = (y * logits - np.logaddexp(0.0, logits)).sum(1) - 0.5 * (beta**2).sum(1) / PRIOR_STD**2
    grad = (y - 0.5 * (1.0 + np.tanh(0.5 * logits))) @ x - beta / PRIOR_STD**2
    return ll, grad


def laplace(x, y):
    b = np.zeros(x.shape[1])
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-x @ b))
        g = x.T @ (y - p) - b / PRIOR_STD**2
        h = -(x.T * (p * (1 - p))) @ x - np.eye(len(b)) / PRIOR_STD**2
        b = b - np.linalg.solve(h, g)
    return b, np.linalg.cholesky(np.linalg.inv(-h))


def hmc(x, y, chains, warmup, draws, seed):
    rng = np.random.default_rng(seed)
    mode, chol = laplace(x, y)
    dim = len(mode)

    def f(u):
        ll, g = log_post_and_grad(mode + u @ chol.T, x, y)
        return ll, g @ chol

    u = rng.standard_normal((chains, dim))
    lp, g = f(u)
    log_eps, log_eps_bar, h_bar, mu = np.log(0.3), 0.0, 0.0, np.log(3.0)
    out = np.empty((draws, chains, dim))
    accepted = 0.0
    for t in range(warmup + draws):
        eps = np.exp(log_eps) if t < warmup else np.exp(log_eps_bar)
        steps = rng.integers(5, 16)
        p = rng.standard_normal((chains, dim))
        h0 = lp - 0.5 * (p**2).sum(1)
        un, gn, pn = u.copy(), g.copy(), p + 0.5 * eps * g
        for s in range(steps):
            un = un + eps * pn
            lpn, gn = f(un)
            if s < steps - 1:
                pn = pn + eps * gn
        pn = pn + 0.5 * eps * gn
        h1 = lpn - 0.5 * (pn**2).sum(1)
        accept_prob = np.exp(np.minimum(0.0, np.nan_to_num(h1 - h0, nan=-np.inf)))
        take = rng.random(chains) < accept_prob
        u[take], lp[take], g[take] = un[take], lpn[take], gn[take]
        if t < warmup:
            # Dual averaging (Hoffman & Gelman 2014) towards a mean acceptance of 0.8.
            m = t + 1
            h_bar = (1 - 1 / (m + 10)) * h_bar + (0.8 - accept_prob.mean()) / (m + 10)
            log_eps = mu - np.sqrt(m) / 0.05 * h_bar
            w = m**-0.75
            log_eps_bar = w * log_eps + (1 - w) * log_eps_bar
        else:
            accepted += accept_prob.mean()
            out[t - warmup] = mode + u @ chol.T
    return out, float(np.exp(log_eps_bar)), accepted / draws


def ess(chain_draws):
    """Geyer's initial monotone sequence ESS of one coordinate, draws [n, chains]."""
    n, m = chain_draws.shape
    centred = chain_draws - chain_draws.mean(0)
    f = np.fft.rfft(centred, n=2 * n, axis=0)
    acov = np.fft.irfft(f * np.conj(f), axis=0)[:n] / n
    var_within = acov[0].mean() * n / (n - 1)
    var_between = n * chain_draws.mean(0).var(ddof=1) if m > 1 else 0.0
    var_plus = var_within * (n - 1) / n + var_between / n
    rho = 1.0 - (var_within - acov.mean(1)) / var_plus
    rho[0] = 1.0
    total, prev = 0.0, np.inf
    for k in range(0, n - 1, 2):
        pair = rho[k] + rho[k + 1]
        if pair < 0:
            break
        pair = min(pair, prev)
        total += pair
        prev = pair
    return n * m / (2 * total - 1), float(np.sqrt(var_plus / var_within))


def run(chains, warmup, draws, seed):
    x, y = load()
    t0 = time.time()
    samples, eps, accept = hmc(x, y, chains, warmup, draws, seed)
    seconds = time.time() - t0
    flat = samples.reshape(-1, samples.shape[2])
    per = [ess(samples[:, :, j]) for j in range(samples.shape[2])]
    e = np.array([p[0] for p in per])
    rhat = np.array([p[1] for p in per])
    std = flat.std(0, ddof=1)
    return {
        "model": f"logistic regression, intercept + 30 standardised features, prior N(0, {PRIOR_STD}^2 I)",
        "data": "data/breast_cancer.csv (569 rows)",
        "sampler": "HMC, Laplace-preconditioned, dual-averaged step size (target acceptance 0.8), 5-15 leapfrog steps",
        "chains": chains,
        "warmup": warmup,
        "draws_per_chain": draws,
        "seed": seed,
        "seconds": round(seconds, 1),
        "step_size": eps,
        "acceptance": accept,
        "ess_min": float(e.min()),
        "ess_median": float(np.median(e)),
        "rhat_max": float(rhat.max()),
        "mean": flat.mean(0).tolist(),
        "std": std.tolist(),
        "mean_mcse": (std / np.sqrt(e)).tolist(),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chains", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2000)
    ap.add_argument("--draws", type=int, default=25000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="4 chains, 500 warm-up, 2500 draws")
    ap.add_argument("-o", "--output", default=None)
    a = ap.parse_args()
    if a.quick:
        a.chains, a.warmup, a.draws = 4, 500, 2500
    r = run(a.chains, a.warmup, a.draws, a.seed)
    text = json.dumps(r, indent=1)
    if a.output:
        with open(a.output, "w") as f:
            f.write(text + "\n")
    print(f"{a.chains} chains x {a.draws} draws in {r['seconds']} s: ESS min {r['ess_min']:.0f}, median {r['ess_median']:.0f}, R-hat max {r['rhat_max']:.4f}, acceptance {r['acceptance']:.3f}")


if __name__ == "__main__":
    main()
