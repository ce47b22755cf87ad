#!/usr/bin/env bash
# flowzoo's MAF, NSF-AR and NSF-C against the same architectures in zuko (the latest release)
# and nflows 0.14: same split, batch, epochs, learning-rate schedule, seeds and threads; test
# log-likelihoods, seconds per epoch and the ratio, and MAF (sequential and Jacobi) / IAF
# sampling throughput. Tables on stdout, JSON in bench/results/ar-<date>.json; method and
# results in bench/TABULAR.md ("Autoregressive and spline flows").
#
# Expects target/release/flowzoo (`make build`); builds examples/ar_sampling (flowzoo's
# in-process sampling timer) beside it when missing or older. Installs zuko and nflows into the
# venv on first use (here, not in `make setup`).
#
# Environment: FLOWZOO_BIN, PYTHON, THREADS (2), SEED (0), SEEDS (3), DATASETS
# (digits64,moons,8gaussians), MODELS (maf,nsf_ar,nsf_c), EPOCHS_DIGITS (25), EPOCHS_TOYS (20),
# OMP_WAIT_POLICY (PASSIVE, as bench/tabular.sh), BENCH_OUT (bench/results). Extra arguments go
# to `bench_ar.py run` (--help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/flowzoo
PY=${PYTHON:-$CACHE/venv-torch-2.11.0/bin/python}
BIN=${FLOWZOO_BIN:-target/release/flowzoo}
THREADS=${THREADS:-2}
NFLOWS_VERSION=0.14

[ -x "$BIN" ] || { echo "bench/ar.sh: $BIN not found: run \`make build\` first" >&2; exit 1; }
[ -x "$PY" ] || { echo "bench/ar.sh: $PY not found: run \`make setup\` first (or set PYTHON)" >&2; exit 1; }
if ! "$PY" -c "import nflows" >/dev/null 2>&1; then
  echo "== installing nflows==$NFLOWS_VERSION into $("$PY" -c 'import sys; print(sys.prefix)')" >&2
  "$PY" -m pip install --quiet "nflows==$NFLOWS_VERSION"
fi
if ! "$PY" -c "import zuko" >/dev/null 2>&1; then
  echo "== installing zuko (latest) into $("$PY" -c 'import sys; print(sys.prefix)')" >&2
  "$PY" -m pip install --quiet zuko
fi
# flowzoo's in-process sampling timer (examples/ar_sampling.rs), next to the binary.
SAMPLER=$(dirname "$BIN")/examples/ar_sampling
if [ ! -x "$SAMPLER" ] || [ "$SAMPLER" -ot "$BIN" ]; then
  echo "== building examples/ar_sampling" >&2
  PATH="$(dirname "$PY"):$PATH" LIBTORCH_USE_PYTORCH=1 cargo build --release --quiet --example ar_sampling
fi
"$PY" -c "import torch, zuko, importlib.metadata as m; print(f'== torch {torch.__version__}, zuko {m.version(\"zuko\")}, nflows {m.version(\"nflows\")}, $THREADS threads, load {open(\"/proc/loadavg\").read().split()[0]}')" >&2

export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY-PASSIVE}
[ -n "$OMP_WAIT_POLICY" ] || unset OMP_WAIT_POLICY
exec "$PY" bench/bench_ar.py run --bin "$BIN" --sampler "$SAMPLER" --threads "$THREADS" --seed "${SEED:-0}" --seeds "${SEEDS:-3}" \
  --datasets "${DATASETS:-digits64,moons,8gaussians}" --models "${MODELS:-maf,nsf_ar,nsf_c}" \
  --epochs-digits "${EPOCHS_DIGITS:-25}" --epochs-toys "${EPOCHS_TOYS:-20}" \
  --out-dir "${BENCH_OUT:-bench/results}" "$@"
