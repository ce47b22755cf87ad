#!/usr/bin/env bash
# bench/gpu.sh: flowzoo against the PyTorch reference on a GPU (made for one NVIDIA H200),
# in each precision, plus a correctness check of CUDA log_prob against CPU float64.
#
#   bash bench/gpu.sh                      # the paper's CIFAR-10 Glow on cuda (K=32, L=3, width 512, batch 64)
#   bash bench/gpu.sh --device cpu --tiny  # the same script on a tiny model on the CPU (< 60 s; `make test`)
#
# Runs the flowzoo binary built on the development machine (FLOWZOO_BIN, default
# target/release/flowzoo) against the torch of the machine's own python3 (PYTHON): the binary's
# rpath points at the build machine's venv, so LD_LIBRARY_PATH is set to that python's torch/lib
# (the same torch version, 2.11.0, is required). Steps:
#   1. peak matmul rate of the device in fp32, tf32 and bf16 (torch, 8192^3; tiny on the CPU);
#   2. check: flowzoo's log_prob on the device vs float64 on the CPU, same weights (perturbed so
#      every coupling works); must be < 1e-4 relative in fp32 (tf32 and bf16 are reported);
#   3. training-step timing, flowzoo and PyTorch alternately, in fp32, tf32 and bf16:
#      images/s, ratio, achieved TFLOP/s (FLOPs of one step counted by torch's FlopCounterMode on
#      the reference model, convolutions and matmuls, forward + backward) and % of the peak.
# Prints a table; writes bench/results/gpu-<date>.json (and a copy under $OUT when set; the
# --tiny run writes only when BENCH_OUT is set).
# Environment: ROUNDS (3), STEPS (timed steps per run), PRECISIONS ("fp32 tf32 bf16"), THREADS
# (CPU threads, both sides: 2 with --tiny, else nproc), BENCH_OUT, FLOWZOO_BIN, PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
TINY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --tiny) TINY=1; shift ;;
    *) echo "usage: bench/gpu.sh [--device cuda|cpu] [--tiny]" >&2; exit 2 ;;
  esac
done

BIN=${FLOWZOO_BIN:-target/release/flowzoo}
PY=${PYTHON:-python3}
[ -x "$BIN" ] || { echo "bench/gpu.sh: $BIN not found (build it with \`make build\` first)" >&2; exit 1; }
TORCH_LIB=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
PRECISIONS=${PRECISIONS:-"fp32 tf32 bf16"}

if [ "$TINY" = 1 ]; then
  # 8x8x3 images, K=2, L=2, width 16, batch 4: the code paths of the real run, in seconds.
  FZ_MODEL=(--config configs/glow_cifar10.toml --set data.image_size=8 --set model.steps=2 --set model.levels=2
            --set model.width=16 --set train.batch_size=4 --set train.ema=0.0)
  PT_MODEL=(--image-size 8 --channels 3 --K 2 --L 2 --width 16 --batch 4 --n-bits 8)
  ROUNDS=${ROUNDS:-1}; STEPS=${STEPS:-2}; WARMUP=1; PEAK_N=256; THREADS=${THREADS:-2}
else
  # The Glow paper's CIFAR-10 model (Kingma & Dhariwal 2018): K=32, L=3, width 512, affine, LU.
  FZ_MODEL=(--config configs/glow_cifar10.toml --set train.batch_size=64 --set train.ema=0.0)
  PT_MODEL=(--image-size 32 --channels 3 --K 32 --L 3 --width 512 --batch 64 --n-bits 8)
  ROUNDS=${ROUNDS:-3}; STEPS=${STEPS:-10}; WARMUP=3; PEAK_N=8192; THREADS=${THREADS:-$(nproc)}
fi
BATCH=$(printf '%s\n' "${PT_MODEL[@]}" | awk 'p{print; exit} /--batch/{p=1}')

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
run() { # run NAME CMD...: stdout to $WORK/NAME.json, stderr to $WORK/NAME.log; fail loudly
  local name=$1; shift
  if ! "$@" >"$WORK/$name.json" 2>"$WORK/$name.log"; then
    echo "bench/gpu.sh: failed: $*" >&2; tail -30 "$WORK/$name.log" >&2; exit 1
  fi
}

echo "== device: $DEVICE $( [ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true)" >&2
echo "== torch: $("$PY" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())')" >&2

# 1. peak matmul rates
run peak "$PY" - "$DEVICE" "$PEAK_N" <<'PYEOF'
import json, sys, time, torch
device, n = sys.argv[1], int(sys.argv[2])
out = {}
for prec in ("fp32", "tf32", "bf16"):
    torch.backends.cuda.matmul.allow_tf32 = prec == "tf32"
    dt = torch.bfloat16 if prec == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    reps = 10 if device.startswith("cuda") else 3
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    out[prec] = 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e12
torch.backends.cuda.matmul.allow_tf32 = False
print(json.dumps({"peak_tflops": out, "n": n, "device": device,
                  "name": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"}))
PYEOF
echo "== peak matmul TFLOP/s: $(cat "$WORK/peak.json")" >&2

# 2. correctness against CPU float64, each precision
for p in $PRECISIONS; do
  run "check-$p" "$BIN" bench "${FZ_MODEL[@]}" --device "$DEVICE" --precision "$p" --metrics "" --check \
      --repeats 1 --steps 1 --warmup 0 --threads "$THREADS"
  echo "== check $p: $("$PY" -c 'import json,sys; c=json.load(open(sys.argv[1]))["check"]; print("relative error %.2e (max %.2e), bits/dim %.6f vs %.6f (diff %+.2e)" % (c["rel_err_norm"], c["rel_err_max"], c["bpd"], c["bpd_cpu_f64"], c["bpd_diff"]))' "$WORK/check-$p.json")" >&2
done

# FLOPs of one training step (same architecture and batch on both sides)
run flops "$PY" bench/bench_torch.py "${PT_MODEL[@]}" --device "$DEVICE" --metrics "" --count-flops --repeats 1 --steps 1 --threads "$THREADS"

# 3. training steps, alternating
for r in $(seq 1 "$ROUNDS"); do
  for p in $PRECISIONS; do
    echo "== round $r/$ROUNDS: $p" >&2
    run "fz-$p-$r" "$BIN" bench "${FZ_MODEL[@]}" --device "$DEVICE" --precision "$p" --metrics train \
        --repeats 1 --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS"
    run "pt-$p-$r" "$PY" bench/bench_torch.py "${PT_MODEL[@]}" --device "$DEVICE" --precision "$p" --metrics train \
        --repeats 1 --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS"
  done
done

# The tiny run is a smoke test (`make test`): its JSON stays out of the repository unless asked.
if [ "$TINY" = 1 ]; then OUT_DIR=${BENCH_OUT:-$WORK}; else OUT_DIR=${BENCH_OUT:-bench/results}; fi
mkdir -p "$OUT_DIR"
RESULT=$OUT_DIR/gpu-$(date +%Y-%m-%d)$( [ "$TINY" = 1 ] && echo -tiny-$DEVICE).json
"$PY" - "$WORK" "$RESULT" "$BATCH" "$ROUNDS" "$PRECISIONS" "$DEVICE" <<'PYEOF'
import glob, json, os, statistics, sys, time
work, result, batch, rounds, precisions, device = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5].split(), sys.argv[6]
load = lambda name: json.load(open(os.path.join(work, name)))
peak = load("peak.json")
flops = load("flops.json")["train_step_flops"]
rows, ok = [], True
for p in precisions:
    chk = load(f"check-{p}.json")["check"]
    fz = [v for f in sorted(glob.glob(f"{work}/fz-{p}-*.json")) for v in json.load(open(f))["runs"]["train_steps_per_s"]]
    pt = [v for f in sorted(glob.glob(f"{work}/pt-{p}-*.json")) for v in json.load(open(f))["runs"]["train_steps_per_s"]]
    f_sps, p_sps = statistics.median(fz), statistics.median(pt)
    pk = peak["peak_tflops"][p]
    rows.append({"precision": p, "flowzoo_images_per_s": f_sps * batch, "pytorch_images_per_s": p_sps * batch,
                 "ratio": f_sps / p_sps, "flowzoo_tflops": f_sps * flops / 1e12, "pytorch_tflops": p_sps * flops / 1e12,
                 "peak_tflops": pk, "flowzoo_pct_of_peak": 100 * f_sps * flops / 1e12 / pk,
                 "check_rel_err": chk["rel_err_norm"], "check_rel_err_max": chk["rel_err_max"], "bpd_diff_vs_f64": chk["bpd_diff"],
                 "flowzoo_runs": fz, "pytorch_runs": pt})
    if p == "fp32" and not chk["rel_err_max"] < 1e-4:
        ok = False
hdr = f"{'precision':<9} {'flowzoo img/s':>13} {'pytorch img/s':>13} {'ratio':>6} {'fz TFLOP/s':>10} {'pt TFLOP/s':>10} {'peak':>7} {'fz %peak':>8} {'rel.err':>8} {'bpd diff':>9}"
print(hdr)
print("-" * len(hdr))
for r in rows:
    print(f"{r['precision']:<9} {r['flowzoo_images_per_s']:>13.1f} {r['pytorch_images_per_s']:>13.1f} {r['ratio']:>5.2f}x "
          f"{r['flowzoo_tflops']:>10.3g} {r['pytorch_tflops']:>10.3g} {r['peak_tflops']:>7.3g} {r['flowzoo_pct_of_peak']:>7.1f}% "
          f"{r['check_rel_err_max']:>8.1e} {r['bpd_diff_vs_f64']:>+9.1e}")
print(f"\n{peak['name']} ({device}); FLOPs per training step {flops / 1e9:.1f} GFLOP (conv+matmul, fwd+bwd, batch {batch}); "
      f"peak = measured {peak['n']}^3 matmul per precision; medians over {rounds} alternating rounds; "
      f"rel.err = max |lp - lp_f64| / |lp_f64| on the device vs CPU float64 (fp32 must be < 1e-4)")
out = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "device": device, "gpu": peak["name"], "peak": peak,
       "train_step_flops": flops, "batch": batch, "rounds": rounds, "rows": rows, "fp32_check_passed": ok}
for path in [result] + ([os.path.join(os.environ["OUT"], os.path.basename(result))] if os.environ.get("OUT") else []):
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
print(f"wrote {result}", file=sys.stderr)
if not ok:
    print("FAILED: fp32 log_prob differs from CPU float64 by more than 1e-4 (relative)", file=sys.stderr)
    sys.exit(1)
PYEOF
