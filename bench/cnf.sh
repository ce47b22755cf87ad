#!/usr/bin/env bash
# flowzoo's FFJORD against zuko's CNF on pinwheel, 8 gaussians (exact trace) and digits64
# (Hutchinson in training): same split, standardisation, field architecture (checked by moving
# flowzoo's trained weights into zuko), tolerances, optimiser and steps. One table on stdout
# (test log-likelihood ± standard error, function evaluations and seconds per step, the speed
# ratio) and JSON in bench/results/cnf-<date>.json. Method and results: bench/NOTES.md,
# section "Continuous flows".
#
# Builds examples/cnf_bench (flowzoo train's step with a sink that counts function evaluations;
# cargo's environment comes from `make bench`). Installs zuko into the venv on first use (here,
# not in `make setup`).
#
# Environment: PYTHON (the flowzoo venv's python), THREADS (2), SEED (0), DATASETS
# (pinwheel,8gaussians,digits64), STEPS_TOYS (1000), STEPS_DIGITS (300), FLOWZOO_LAYER (mlp:
# zuko's architecture; concatsquash: FFJORD's), FLOWZOO_SET (extra flowzoo --set overrides,
# space-separated, e.g. "model.cnf.error_norm=max"), OMP_WAIT_POLICY (PASSIVE for both sides,
# as bench/tabular.sh), BENCH_OUT (bench/results). Extra arguments go to `bench_cnf.py run`.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/flowzoo
PY=${PYTHON:-$CACHE/venv-torch-2.11.0/bin/python}
THREADS=${THREADS:-2}
ZUKO_VERSION=1.6.0

[ -x "$PY" ] || { echo "bench/cnf.sh: $PY not found: run \`make setup\` first (or set PYTHON)" >&2; exit 1; }
if ! "$PY" -c "import zuko" >/dev/null 2>&1; then
  echo "== installing zuko==$ZUKO_VERSION into $("$PY" -c 'import sys; print(sys.prefix)')" >&2
  "$PY" -m pip install --quiet "zuko==$ZUKO_VERSION"
fi
cargo build --release --example cnf_bench
EXAMPLE=${CARGO_TARGET_DIR:-target}/release/examples/cnf_bench
"$PY" -c "import torch, zuko; print(f'== torch {torch.__version__}, zuko {zuko.__version__}, $THREADS threads, load {open(\"/proc/loadavg\").read().split()[0]}')" >&2

export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY-PASSIVE}
[ -n "$OMP_WAIT_POLICY" ] || unset OMP_WAIT_POLICY
exec "$PY" bench/bench_cnf.py run --example "$EXAMPLE" --threads "$THREADS" --seed "${SEED:-0}" \
  --datasets "${DATASETS:-pinwheel,8gaussians,digits64}" \
  --steps-toys "${STEPS_TOYS:-1000}" --steps-digits "${STEPS_DIGITS:-300}" \
  --flowzoo-layer "${FLOWZOO_LAYER:-mlp}" --flowzoo-set "${FLOWZOO_SET-}" \
  --out-dir "${BENCH_OUT:-bench/results}" "$@"
