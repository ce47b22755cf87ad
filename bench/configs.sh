#!/usr/bin/env bash
# How long each shipped config takes to train from the command line, and what it reaches: for
# every config named (default: the autoregressive, spline and conditional tabular ones), a fresh
# `flowzoo train` into a temporary run, its wall time, steps run, and the test score
# (`flowzoo eval --json`: mean log-likelihood per row, or bits/dim for images).
#
#   bash bench/configs.sh [CONFIG ...]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${FLOWZOO_BIN:-target/release/flowzoo}
PY=${PYTHON:-python3}
[ $# -gt 0 ] || set -- configs/maf_moons.toml configs/iaf_moons.toml configs/nsf_moons.toml \
  configs/nsf_moons_conditional.toml configs/maf_digits64.toml configs/nsf_digits64.toml
OUT=$(mktemp -d)
SCORE_PY=$(cat <<'PY'
import json, sys
d = json.loads(sys.stdin.read())
if "mean_log_prob" in d:
    print("%.3f ± %.3f LL" % (d["mean_log_prob"], d["stderr"]))
else:
    print("%.4f bpd" % d["mean_bpd"])
PY
)
trap 'rm -rf "$OUT"' EXIT
echo "# bash bench/configs.sh, $(date -u +%Y-%m-%d), $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-40s %8s %7s %20s\n' config seconds steps "test score"
for c in "$@"; do
  run="$OUT/$(basename "$c" .toml)"
  t0=$(date +%s.%N)
  "$BIN" train --config "$c" --out "$run" -q >"$run.log" 2>&1 || { echo "$c: training failed:"; tail -5 "$run.log"; exit 1; }
  t1=$(date +%s.%N)
  score=$("$BIN" eval --model "$run" --json | "$PY" -c "$SCORE_PY")
  steps=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["step"])' "$run/state.json")
  printf '%-40s %8.1f %7s %20s\n' "$c" "$(echo "$t1 - $t0" | bc -l)" "$steps" "$score"
done
