#!/usr/bin/env bash
# flowzoo's tabular RealNVP against the same architecture in nflows: same split, batch size,
# epochs, learning-rate schedule, seed budget and threads; one table (test log-likelihood in
# nats and training seconds per epoch for each, and the speed ratio) on stdout and JSON in
# bench/results/tabular-<date>.json. Method and results: bench/TABULAR.md.
#
# Builds nothing: expects target/release/flowzoo (`make build`). Installs nflows into the venv
# on first use (here, not in `make setup`).
#
# Environment: FLOWZOO_BIN (target/release/flowzoo), PYTHON (the flowzoo venv's python),
# THREADS (2), SEED (first training seed, 0), SEEDS (number of seeds, 3), DATASETS
# (digits64,moons,8gaussians), EPOCHS_DIGITS (25), EPOCHS_TOYS (30), TOY_SET (flowzoo --set
# overrides for the 2-D toys, space-separated; default "model.permutation=invconv", which for
# alternating masks means no permutation layer, see bench/TABULAR.md), OMP_WAIT_POLICY (PASSIVE
# for both sides, see bench/TABULAR.md; set it empty for libgomp's default), BENCH_OUT
# (bench/results). Extra arguments go to `bench_tabular.py run` (--help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/flowzoo
PY=${PYTHON:-$CACHE/venv-torch-2.11.0/bin/python}
BIN=${FLOWZOO_BIN:-target/release/flowzoo}
THREADS=${THREADS:-2}
NFLOWS_VERSION=0.14

[ -x "$BIN" ] || { echo "bench/tabular.sh: $BIN not found: run \`make build\` first" >&2; exit 1; }
[ -x "$PY" ] || { echo "bench/tabular.sh: $PY not found: run \`make setup\` first (or set PYTHON)" >&2; exit 1; }
if ! "$PY" -c "import nflows" >/dev/null 2>&1; then
  echo "== installing nflows==$NFLOWS_VERSION into $("$PY" -c 'import sys; print(sys.prefix)')" >&2
  "$PY" -m pip install --quiet "nflows==$NFLOWS_VERSION"
fi
"$PY" -c "import torch, nflows; print(f'== torch {torch.__version__}, nflows $NFLOWS_VERSION, $THREADS threads, load {open(\"/proc/loadavg\").read().split()[0]}')" >&2

export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY-PASSIVE}
[ -n "$OMP_WAIT_POLICY" ] || unset OMP_WAIT_POLICY
exec "$PY" bench/bench_tabular.py run --bin "$BIN" --threads "$THREADS" --seed "${SEED:-0}" --seeds "${SEEDS:-3}" \
  --datasets "${DATASETS:-digits64,moons,8gaussians}" \
  --epochs-digits "${EPOCHS_DIGITS:-25}" --epochs-toys "${EPOCHS_TOYS:-30}" \
  --toy-set "${TOY_SET-}" \
  --out-dir "${BENCH_OUT:-bench/results}" "$@"
