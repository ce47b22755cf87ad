"""log Z of the 2-D targets U1-U4 (scripts/vi_targets.py) by quadrature, to check the
importance-sampling estimates of `flowzoo eval --target` against them:

    python scripts/vi_quadrature.py docs/vi/results.json

adds to each of results.json's "u1".."u4" entries `quadrature_log_z`, `error` (the estimate
minus it) and `error_over_stderr`, in place (scripts/vi_examples.sh runs it last).

The rule: the midpoint sum over a 4001 x 4001 grid on [-L, L]^2 in float64, for L = 8 and 10;
the densities are smooth and negligible beyond |z| = 8 (U1's ring has radius 2, U2-U4 live in
|z2| < 5 and have walls at |z1| = 4), and the two boxes must agree to 1e-9 or the script fails.
"""
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vi_targets  # noqa: E402

N = 4001


def log_z(module, half_width):
    g = torch.linspace(-half_width, half_width, N, dtype=torch.float64)
    h = (g[1] - g[0]).item()
    x, y = torch.meshgrid(g, g, indexing="ij")
    lp = module.log_prob(torch.stack([x.reshape(-1), y.reshape(-1)], 1))
    return (torch.logsumexp(lp, 0) + 2 * math.log(h)).item()


def main():
    path = sys.argv[1]
    results = json.load(open(path))
    for name, module in [("u1", vi_targets.U1()), ("u2", vi_targets.U2()), ("u3", vi_targets.U3()), ("u4", vi_targets.U4())]:
        a, b = log_z(module, 8.0), log_z(module, 10.0)
        if abs(a - b) > 1e-9:
            sys.exit(f"{name}: quadrature on [-8, 8]^2 ({a}) and [-10, 10]^2 ({b}) disagree")
        e = results[name]
        e["quadrature_log_z"] = b
        e["error"] = e["log_z"] - b
        e["error_over_stderr"] = e["error"] / e["log_z_stderr"]
        print(f"{name}: log Z {e['log_z']:.4f} ± {e['log_z_stderr']:.4f}, quadrature {b:.4f}: error {e['error']:+.4f} = {e['error_over_stderr']:+.2f} standard errors")
    json.dump(results, open(path, "w"), indent=1)


if __name__ == "__main__":
    main()
