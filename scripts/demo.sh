#!/usr/bin/env bash
# `make demo`: train the digits Glow on the bundled data, evaluate it, write samples and (when
# the export command is available) a TorchScript export. Prints where the pictures are.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${FLOWZOO_BIN:-target/release/flowzoo}
OUT=${DEMO_OUT:-runs/demo}
start=$(date +%s)
rm -rf "$OUT"
echo "== training Glow on data/digits (configs/glow_digits.toml) -> $OUT"
"$BIN" train --config configs/glow_digits.toml --out "$OUT" "$@"
echo "== evaluating (test split, 4 dequantisation draws)"
"$BIN" eval --model "$OUT" --draws 4
echo "== sampling"
"$BIN" sample --model "$OUT" -n 64 --temperature 0.7 --seed 1 -o "$OUT/samples_t0.7.png"
"$BIN" sample --model "$OUT" -n 64 --temperature 1.0 --seed 1 -o "$OUT/samples_t1.0.png"
if "$BIN" export --help >/dev/null 2>&1; then
  echo "== exporting to TorchScript"
  "$BIN" export --model "$OUT" --torchscript "$OUT/model.pt"
fi
"$BIN" info --model "$OUT"
echo
echo "demo finished in $(( $(date +%s) - start )) s"
echo "pictures: $OUT/samples_t0.7.png (temperature 0.7), $OUT/samples_t1.0.png, $OUT/curves.png, $OUT/samples/"
