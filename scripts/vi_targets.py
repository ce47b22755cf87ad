"""Writes the target densities of the README's `flowzoo fit` examples as TorchScript modules
(each with a method log_prob(x: Tensor[B, D]) -> Tensor[B], an unnormalised log-density), made
at run time so that no binary is committed:

    python scripts/vi_targets.py OUT_DIR

- u1.pt .. u4.pt: the four 2-D test energies of Rezende & Mohamed (2015), Table 1,
  p(z) ∝ exp(-U(z)). U2, U3 and U4 do not decay along z1 (for every z1 the density in z2 is the
  same bump, shifted), so they have no normaliser; the paper shows them on [-4, 4]^2. These
  modules add a soft wall outside |z1| <= 4, 0.5 (max(|z1| - 4, 0) / 0.2)^2, which leaves the
  picture inside the box as it is and makes the density proper. U1 is used as it is.
- gaussian8.pt: an 8-D Gaussian N(mu, Sigma) with a seeded dense covariance, times exp(C):
  log Z = C + log det(2 pi Sigma) / 2, known exactly (written to gaussian8.json).
- logreg.pt: the posterior of a Bayesian logistic regression on data/breast_cancer.csv
  (scripts/logreg_reference.py describes the model; the data live in the module as buffers):
  log p~(beta) = log N(beta; 0, PRIOR_STD^2 I) + sum_i log p(y_i | x_i, beta), so log Z is the
  model's log evidence.
"""
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import logreg_reference  # noqa: E402  (the data and the prior of the MCMC reference)


def _wall(z1):
    return 0.5 * (torch.relu(torch.abs(z1) - 4.0) / 0.2) ** 2


class U1(torch.nn.Module):
    @torch.jit.export
    def log_prob(self, z):
        z1 = z[:, 0]
        r = torch.sqrt((z * z).sum(1))
        a = -0.5 * ((z1 - 2.0) / 0.6) ** 2
        b = -0.5 * ((z1 + 2.0) / 0.6) ** 2
        return -(0.5 * ((r - 2.0) / 0.4) ** 2 - torch.logaddexp(a, b))


class U2(torch.nn.Module):
    @torch.jit.export
    def log_prob(self, z):
        z1, z2 = z[:, 0], z[:, 1]
        w1 = torch.sin(2.0 * math.pi * z1 / 4.0)
        return -(0.5 * ((z2 - w1) / 0.4) ** 2 + _wall(z1))


class U3(torch.nn.Module):
    @torch.jit.export
    def log_prob(self, z):
        z1, z2 = z[:, 0], z[:, 1]
        w1 = torch.sin(2.0 * math.pi * z1 / 4.0)
        w2 = 3.0 * torch.exp(-0.5 * ((z1 - 1.0) / 0.6) ** 2)
        a = -0.5 * ((z2 - w1) / 0.35) ** 2
        b = -0.5 * ((z2 - w1 + w2) / 0.35) ** 2
        return torch.logaddexp(a, b) - _wall(z1)


class U4(torch.nn.Module):
    @torch.jit.export
    def log_prob(self, z):
        z1, z2 = z[:, 0], z[:, 1]
        w1 = torch.sin(2.0 * math.pi * z1 / 4.0)
        w3 = 3.0 * torch.sigmoid((z1 - 1.0) / 0.3)
        a = -0.5 * ((z2 - w1) / 0.4) ** 2
        b = -0.5 * ((z2 - w1 + w3) / 0.35) ** 2
        return torch.logaddexp(a, b) - _wall(z1)


class Gaussian(torch.nn.Module):
    """N(mu, Sigma) times exp(c), through the Cholesky factor of the precision."""

    def __init__(self, mu, cov, c):
        super().__init__()
        self.register_buffer("mu", mu)
        self.register_buffer("prec_chol", torch.linalg.cholesky(torch.linalg.inv(cov)))
        self.log_norm = float(c - 0.5 * torch.logdet(2 * math.pi * cov))

    @torch.jit.export
    def log_prob(self, x):
        u = (x.to(self.mu.dtype) - self.mu) @ self.prec_chol
        return (-0.5 * (u * u).sum(1) + self.log_norm).to(x.dtype)


class LogisticRegression(torch.nn.Module):
    def __init__(self, x, y, prior_std):
        super().__init__()
        self.register_buffer("x", x)
        self.register_buffer("y", y)
        self.prior_std = prior_std
        self.log_prior_norm = -0.5 * x.shape[1] * math.log(2 * math.pi * prior_std**2)

    @torch.jit.export
    def log_prob(self, beta):
        b = beta.to(self.x.dtype)
        logits = b @ self.x.T
        ll = (self.y * logits - torch.nn.functional.softplus(logits)).sum(1)
        prior = -0.5 * (b * b).sum(1) / self.prior_std**2 + self.log_prior_norm
        return (ll + prior).to(beta.dtype)


def gaussian8():
    g = torch.Generator().manual_seed(8)
    a = torch.randn(8, 8, generator=g, dtype=torch.float64)
    cov = a @ a.T / 8 + 0.05 * torch.eye(8, dtype=torch.float64)
    mu = torch.randn(8, generator=g, dtype=torch.float64) * 2
    return Gaussian(mu, cov, 3.0), {"dim": 8, "log_z": 3.0, "seed": 8, "cov_eigenvalues": torch.linalg.eigvalsh(cov).tolist()}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "runs/vi/targets"
    os.makedirs(out, exist_ok=True)
    for name, m in [("u1", U1()), ("u2", U2()), ("u3", U3()), ("u4", U4())]:
        torch.jit.save(torch.jit.script(m), os.path.join(out, f"{name}.pt"))
    g, meta = gaussian8()
    torch.jit.save(torch.jit.script(g), os.path.join(out, "gaussian8.pt"))
    with open(os.path.join(out, "gaussian8.json"), "w") as f:
        json.dump(meta, f, indent=1)
    x, y = logreg_reference.load()
    m = LogisticRegression(torch.tensor(x), torch.tensor(y), logreg_reference.PRIOR_STD)
    torch.jit.save(torch.jit.script(m), os.path.join(out, "logreg.pt"))
    print(f"wrote u1..u4, gaussian8 (log Z = {meta['log_z']}), logreg ({x.shape[1]} weights) to {out}")


if __name__ == "__main__":
    main()
