#!/usr/bin/env bash
# The README's "Fitting a density" examples, measured: `make vi-examples`.
#
#  1. writes the target modules (scripts/vi_targets.py) into $OUT/targets;
#  2. fits the four Rezende & Mohamed energies U1-U4 (configs/fit_default.toml) and copies each
#     run's picture (target | samples | flow density) to docs/vi/u*.png;
#  3. fits the 8-D Gaussian with a known normaliser and compares the importance-sampling log Z
#     with the true one (error and error / standard error);
#  4. fits the Bayesian logistic regression on data/breast_cancer.csv and compares 100,000 flow
#     samples with the MCMC reference data/breast_cancer_posterior.json (scripts/vi_compare.py);
#  5. writes every figure to docs/vi/results.json and prints a summary;
#  6. adds U1-U4's log Z by quadrature, and the estimates' errors (scripts/vi_quadrature.py).
#
# Environment: FLOWZOO_BIN (target/release/flowzoo), PYTHON (the venv's python, with torch),
# OUT (runs/vi), STEPS_2D (3000), STEPS_GAUSS (3000), STEPS_LOGREG (4000), N_EVAL (100000),
# THREADS (1), DEVICE (cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${FLOWZOO_BIN:-target/release/flowzoo}
PY=${PYTHON:-python3}
OUT=${OUT:-runs/vi}
STEPS_2D=${STEPS_2D:-3000}
STEPS_GAUSS=${STEPS_GAUSS:-3000}
STEPS_LOGREG=${STEPS_LOGREG:-4000}
N_EVAL=${N_EVAL:-100000}
THREADS=${THREADS:-1}
DEVICE=${DEVICE:-cpu}
DOCS=${DOCS:-docs/vi}
mkdir -p "$OUT" "$DOCS"
"$PY" scripts/vi_targets.py "$OUT/targets"

fit() { # name dim steps [--set ...]
  local name=$1 dim=$2 steps=$3
  shift 3
  local t0=$SECONDS
  "$BIN" fit --target "$OUT/targets/$name.pt" --dim "$dim" --out "$OUT/$name" --device "$DEVICE" \
    --set train.max_steps="$steps" --set train.threads="$THREADS" -q "$@" >&2
  echo "== $name: $steps steps in $((SECONDS - t0)) s" >&2
}
evaluate() { # name -> the eval JSON line
  "$BIN" eval --model "$OUT/$1" --target "$OUT/targets/$1.pt" --n "$N_EVAL" --json --device "$DEVICE"
}

results="{}"
add() { # key json
  results=$("$PY" -c 'import json,sys; r=json.loads(sys.argv[1]); r[sys.argv[2]]=json.loads(sys.argv[3]); print(json.dumps(r))' "$results" "$1" "$2")
}

for u in u1 u2 u3 u4; do
  fit "$u" 2 "$STEPS_2D"
  cp "$OUT/$u/samples/final.png" "$DOCS/$u.png"
  add "$u" "$(evaluate "$u")"
done

fit gaussian8 8 "$STEPS_GAUSS"
g=$(evaluate gaussian8)
true_log_z=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["log_z"])' "$OUT/targets/gaussian8.json")
add gaussian8 "$("$PY" -c 'import json,sys; e=json.loads(sys.argv[1]); t=float(sys.argv[2]); e["true_log_z"]=t; e["error"]=e["log_z"]-t; e["error_over_stderr"]=e["error"]/e["log_z_stderr"]; print(json.dumps(e))' "$g" "$true_log_z")"

fit logreg 31 "$STEPS_LOGREG"
lr=$(evaluate logreg)
"$BIN" sample --model "$OUT/logreg" -n "$N_EVAL" --temperature 1 --seed 1 -o "$OUT/logreg_samples.csv" --device "$DEVICE" >&2
cmp=$("$PY" scripts/vi_compare.py "$OUT/logreg_samples.csv")
add logreg "$("$PY" -c 'import json,sys; e=json.loads(sys.argv[1]); e.update(json.loads(sys.argv[2])); print(json.dumps(e))' "$lr" "$cmp")"

settings=$("$PY" -c 'import json,sys; print(json.dumps({"steps_2d": int(sys.argv[1]), "steps_gaussian8": int(sys.argv[2]), "steps_logreg": int(sys.argv[3]), "n_eval": int(sys.argv[4]), "config": "configs/fit_default.toml"}))' "$STEPS_2D" "$STEPS_GAUSS" "$STEPS_LOGREG" "$N_EVAL")
add settings "$settings"
"$PY" -c 'import json,sys; json.dump(json.loads(sys.argv[1]), open(sys.argv[2], "w"), indent=1)' "$results" "$DOCS/results.json"
"$PY" - "$DOCS/results.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{'target':<10} {'ELBO':>10} {'log Z':>10} {'stderr':>8} {'ESS':>7}")
for k in ["u1", "u2", "u3", "u4", "gaussian8", "logreg"]:
    e = r[k]
    print(f"{k:<10} {e['elbo']:>10.4f} {e['log_z']:>10.4f} {e['log_z_stderr']:>8.4f} {e['ess_fraction']:>7.3f}")
g = r["gaussian8"]
print(f"gaussian8: true log Z {g['true_log_z']}, error {g['error']:+.4f} = {g['error_over_stderr']:+.2f} standard errors")
l = r["logreg"]
print(f"logreg vs MCMC: max |mean diff| / std {l['max_abs_mean_diff_over_std']:.3f} (weight {l['worst_weight']}), std ratio {l['std_ratio_min']:.3f}..{l['std_ratio_max']:.3f} (median {l['std_ratio_median']:.3f})")
EOF
"$PY" scripts/vi_quadrature.py "$DOCS/results.json"
echo "wrote $DOCS/results.json and $DOCS/u1.png .. u4.png"
