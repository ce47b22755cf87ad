#!/usr/bin/env bash
# Flow matching vs maximum likelihood on pinwheel (and, with VARIANTS, any FFJORD variants): the
# training CPU and wall seconds each needs to reach given test log-likelihoods. Same model
# (configs/ffjord_pinwheel.toml: FFJORD's 64-64-64 concat-squash field), split, batch and
# learning rate; the test set scored exactly (Dormand-Prince at 1e-5, exact trace) every EVERY
# steps, outside the timing. One table on stdout, the curves as JSON in bench/results/.
# Method and results: bench/NOTES.md, "Flow matching vs maximum likelihood".
#
# Environment: PYTHON (the flowzoo venv's python), THREADS (1), SEED (0), CONFIG
# (configs/ffjord_pinwheel.toml), MLE_STEPS (1500), MLE_EVERY (100), FM_STEPS (40000),
# FM_EVERY (2000), TARGETS (-2.0,-1.9,-1.8,-1.75,-1.72), VARIANTS (overrides the two defaults, see
# bench/cnf_objectives.py), BENCH_OUT (bench/results). cargo's environment comes from `make`
# (or set CARGO_TARGET_DIR, LIBTORCH_USE_PYTORCH=1 and the venv's bin on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/flowzoo
PY=${PYTHON:-$CACHE/venv-torch-2.11.0/bin/python}
THREADS=${THREADS:-1}
[ -x "$PY" ] || { echo "bench/cnf_objectives.sh: $PY not found: run \`make setup\` first (or set PYTHON)" >&2; exit 1; }
cargo build --release --example cnf_bench
EXAMPLE=${CARGO_TARGET_DIR:-target}/release/examples/cnf_bench
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY-PASSIVE}
[ -n "$OMP_WAIT_POLICY" ] || unset OMP_WAIT_POLICY
if [ -z "${VARIANTS:-}" ]; then
  VARIANTS="mle@${MLE_STEPS:-1500}/${MLE_EVERY:-100} flow_matching:train.objective=flow_matching@${FM_STEPS:-40000}/${FM_EVERY:-2000}"
fi
echo "== $THREADS thread(s), load $(cut -d' ' -f1-3 /proc/loadavg), $(getconf _NPROCESSORS_ONLN) cores" >&2
# shellcheck disable=SC2086 # one variant per word
exec "$PY" bench/cnf_objectives.py --example "$EXAMPLE" --config "${CONFIG:-configs/ffjord_pinwheel.toml}" \
  --threads "$THREADS" --seed "${SEED:-0}" --targets="${TARGETS:--2.0,-1.9,-1.8,-1.75,-1.72}" \
  --out-dir "${BENCH_OUT:-bench/results}" --variants $VARIANTS "$@"
