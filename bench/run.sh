#!/usr/bin/env bash
# `make bench`: flowzoo against the PyTorch reference on the same work, one table.
#
# Builds nothing (`make bench` builds first). For every case below it runs flowzoo's
# `flowzoo bench` and the reference's Python benchmark ALTERNATELY, ROUNDS times each, both
# pinned to the same number of libtorch threads, and reports the median over all timed repeats
# of every metric both sides print: a table on stdout (metric, flowzoo, pytorch, ratio) and
# JSON in bench/results/<date>.json with the machine, torch version and threads.
#
# Environment: FLOWZOO_BIN (default target/release/flowzoo), PYTHON (default python3),
# THREADS (2), ROUNDS (5), REPEATS (1 timed repeat per run), CASES (space-separated case names
# to run, default all), BENCH_OUT (bench/results), COMPILE_ROUNDS (1: rounds that also time the
# reference under torch.compile, a third column; each such run spends minutes compiling on 2
# cores, reported apart; 0 = none).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${FLOWZOO_BIN:-target/release/flowzoo}
PY=${PYTHON:-python3}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-5}
REPEATS=${REPEATS:-1}
COMPILE_ROUNDS=${COMPILE_ROUNDS:-1}
OUT_DIR=${BENCH_OUT:-bench/results}

# One case per line: name | flowzoo bench arguments | Python reference (script and arguments).
# Both sides get `--threads $THREADS --repeats $REPEATS` appended and must print one JSON
# object with any of train_steps_per_s, log_prob_images_per_s, sample_images_per_s (more
# metrics are fine: every numeric top-level field both sides print becomes a row).
# New models (the tabular flows, ...) add a line here.
CASE_LINES=(
  "glow-digits | --config configs/glow_digits.toml --set model.width=128 --set train.batch_size=64 --set train.ema=0.0 --steps 10 --warmup 2 | bench/bench_torch.py --image-size 8 --channels 1 --K 8 --L 2 --width 128 --batch 64 --n-bits 4 --steps 10 --warmup 2"
  "glow-cifar-shaped | --config configs/glow_cifar10.toml --set model.steps=8 --set model.width=128 --set train.batch_size=16 --set train.ema=0.0 --steps 4 --warmup 1 | bench/bench_torch.py --image-size 32 --channels 3 --K 8 --L 3 --width 128 --batch 16 --n-bits 8 --steps 4 --warmup 1"
)

[ -x "$BIN" ] || { echo "bench/run.sh: $BIN not found: run \`make bench\` (it builds first)" >&2; exit 1; }
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
mkdir -p "$OUT_DIR"
RAW=$(mktemp)
LOG=$(mktemp)
trap 'rm -f "$RAW" "$LOG"' EXIT
trim() { local s=$1; s=${s#"${s%%[![:space:]]*}"}; s=${s%"${s##*[![:space:]]}"}; printf '%s' "$s"; }

for round in $(seq 1 "$ROUNDS"); do
  for line in "${CASE_LINES[@]}"; do
    IFS='|' read -r name fz ref <<<"$line"
    name=$(trim "$name"); fz=$(trim "$fz"); ref=$(trim "$ref")
    if [ -n "${CASES:-}" ] && [[ " $CASES " != *" $name "* ]]; then continue; fi
    # Alternate which side goes first, so neither always runs on a warmer/cooler machine.
    if (( round % 2 )); then order="flowzoo pytorch"; else order="pytorch flowzoo"; fi
    if (( round <= COMPILE_ROUNDS )); then order="$order pytorch_compile"; fi
    for impl in $order; do
      echo "== round $round/$ROUNDS: $name ($impl), load $(cut -d' ' -f1 /proc/loadavg)" >&2
      if [ "$impl" = flowzoo ]; then
        # shellcheck disable=SC2086
        cmd=("$BIN" bench $fz --threads "$THREADS" --repeats "$REPEATS" --device cpu)
      elif [ "$impl" = pytorch ]; then
        # shellcheck disable=SC2086
        cmd=("$PY" $ref --threads "$THREADS" --repeats "$REPEATS" --device cpu)
      else
        # shellcheck disable=SC2086
        cmd=("$PY" $ref --threads "$THREADS" --repeats "$REPEATS" --device cpu --compile)
      fi
      if ! json=$("${cmd[@]}" 2>"$LOG"); then
        echo "bench/run.sh: failed: ${cmd[*]}" >&2
        tail -20 "$LOG" >&2
        exit 1
      fi
      printf '{"case": "%s", "impl": "%s", "round": %d, "result": %s}\n' "$name" "$impl" "$round" "$json" >>"$RAW"
    done
  done
done

"$PY" bench/report.py --raw "$RAW" --out "$OUT_DIR/$(date +%Y-%m-%d).json" --threads "$THREADS" --rounds "$ROUNDS"
