#!/usr/bin/env bash
# Data-parallel scaling on one machine: `flowzoo train` of a config as 1 process with 1 and 2
# libtorch threads, and as 2 processes (torchrun) with 1 thread each, in alternating rounds so
# that the machine's load hits every variant alike; prints the medians (steps/s, images/s,
# all-reduce ms per step) and the load average seen during each variant.
#
#   bash bench/dist_scaling.sh [CONFIG] [STEPS] [ROUNDS]      (defaults: the digits Glow, 200, 4)
#   ONLY='1thread' bash bench/dist_scaling.sh ...             (the variants whose name matches)
#
# steps/s is the median over the metrics windows of a run (train.log_every = STEPS/5; the first
# window, which holds the start-up, and the last, which holds the final evaluation, left out),
# then the median over rounds. images/s = steps/s × batch per process × processes.
set -euo pipefail
CONFIG=${1:-configs/glow_digits.toml}
STEPS=${2:-200}
ROUNDS=${3:-4}
BIN=${FLOWZOO_BIN:-target/release/flowzoo}
TORCHRUN=${TORCHRUN:-$(command -v torchrun || true)}
[ -n "$TORCHRUN" ] || { echo "torchrun not found (it comes with the venv's torch: put the venv's bin on PATH)"; exit 1; }
PYTHON=${PYTHON:-python3}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
LOG_EVERY=$((STEPS / 5))

# name | processes | threads | batch per process | extra --set | environment
# (OMP_WAIT_POLICY=passive: libgomp's threads sleep at once at a barrier instead of spinning
# first, which matters when other processes compete for the cores.)
VARIANTS=(
  "1proc_1thread_b64|1|1|64||"
  "1proc_2threads_b64|1|2|64||"
  "1proc_2threads_b128|1|2|128||"
  "1proc_2threads_b128_passive|1|2|128||OMP_WAIT_POLICY=passive"
  "2procs_1thread_b64_overlap|2|1|64|train.grad_sync=overlap|"
  "2procs_1thread_b64_after_backward|2|1|64|train.grad_sync=after_backward|"
)
[ -n "${ONLY:-}" ] && VARIANTS=($(printf '%s\n' "${VARIANTS[@]}" | grep -E "$ONLY"))

run_variant() {
  local name=$1 procs=$2 threads=$3 batch=$4 extra=$5 envs=$6 round=$7
  local dir="$OUT/$name-$round"
  local sets=(--set train.max_steps="$STEPS" --set train.eval_every=0 --set train.sample_every=0 --set train.checkpoint_every=0
              --set train.log_every="$LOG_EVERY" --set train.threads="$threads" --set train.batch_size="$batch" --set train.device=cpu)
  [ -n "$extra" ] && sets+=(--set "$extra")
  local load_before; load_before=$(cut -d' ' -f1 /proc/loadavg)
  if [ "$procs" = 1 ]; then
    env $envs "$BIN" train --config "$CONFIG" --out "$dir" -q "${sets[@]}" >/dev/null
  else
    env $envs "$TORCHRUN" --nproc-per-node "$procs" --master-port $((29700 + round)) --no-python "$BIN" train --config "$CONFIG" --out "$dir" -q "${sets[@]}" >/dev/null 2>"$dir.err" \
      || { cat "$dir.err"; exit 1; }
  fi
  local load_after; load_after=$(cut -d' ' -f1 /proc/loadavg)
  echo "$name $procs $batch $dir/metrics.csv $load_before $load_after" >> "$OUT/runs.txt"
}

for round in $(seq 1 "$ROUNDS"); do
  for v in "${VARIANTS[@]}"; do
    IFS='|' read -r name procs threads batch extra envs <<< "$v"
    run_variant "$name" "$procs" "$threads" "$batch" "$extra" "$envs" "$round"
  done
  echo "round $round of $ROUNDS done (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
done

"$PYTHON" - "$OUT/runs.txt" "$CONFIG" "$STEPS" "$ROUNDS" <<'EOF'
import csv, statistics, sys
runs, config, steps, rounds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
by = {}
order = []
for line in open(runs):
    name, procs, batch, path, lb, la = line.split()
    rows = list(csv.DictReader(open(path)))[1:-1]
    sps = statistics.median(float(r["steps_per_s"]) for r in rows)
    ar = [float(r["allreduce_ms"]) for r in rows if r["allreduce_ms"]]
    wait = [float(r["comm_wait_ms"]) for r in rows if r["comm_wait_ms"]]
    if name not in by:
        by[name] = []
        order.append(name)
    by[name].append((sps, int(procs) * int(batch), statistics.median(ar) if ar else None, statistics.median(wait) if wait else None, float(lb), float(la)))
print(f"{config}, {steps} steps a run, {rounds} alternating rounds (medians; load = 1-min load average before/after each run)")
print(f"{'variant':36} {'steps/s':>8} {'images/s':>9} {'allreduce ms':>13} {'waited ms':>10} {'load':>10}")
base = None
for name in order:
    v = by[name]
    sps = statistics.median(x[0] for x in v)
    ips = sps * v[0][1]
    ar = [x[2] for x in v if x[2] is not None]
    wt = [x[3] for x in v if x[3] is not None]
    loads = [x[4] for x in v] + [x[5] for x in v]
    if base is None:
        base = ips
    print(f"{name:36} {sps:8.2f} {ips:9.1f} {(f'{statistics.median(ar):.2f}' if ar else '-'):>13} {(f'{statistics.median(wt):.2f}' if wt else '-'):>10} {min(loads):4.1f}-{max(loads):<4.1f}  x{ips / base:.2f} images/s")
EOF
