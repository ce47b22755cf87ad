#!/usr/bin/env bash
# `make models`: rebuilds the pretrained models shipped under models/ and their README table.
# Each model is an ordinary run directory (minus the optimizer state), so `flowzoo sample
# --model models/glow_digits` works before any training.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${FLOWZOO_BIN:-target/release/flowzoo}
build() {
  local name=$1 config=$2; shift 2
  local out=models/$name tmp=models/.$name.tmp
  rm -rf "$tmp"
  "$BIN" train --config "$config" --out "$tmp" --set train.device='"cpu"' "$@"
  rm -f "$tmp/optimizer.safetensors"
  if "$BIN" export --help >/dev/null 2>&1; then
    "$BIN" export --model "$tmp" --torchscript "$tmp/model.pt"
  fi
  "$BIN" sample --model "$tmp" -n 64 --temperature 0.7 --seed 1 -o "$tmp/samples_t0.7.png"
  rm -rf "$out" && mv "$tmp" "$out"
}
build glow_digits configs/glow_digits.toml
score=$("$BIN" eval --model models/glow_digits --draws 8 --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.4f bits/dim over %d test images" % (d["mean_bpd"], d["n"]))')
info=$("$BIN" info --model models/glow_digits)
cat > models/README.md <<MD
# Pretrained models

Rebuilt by \`make models\` (scripts/build_models.sh); each folder is a flowzoo run directory
without its optimizer state: \`flowzoo sample|eval|export|info --model models/NAME\`.

## glow_digits

Glow on the bundled 8×8 digits (\`data/digits\`, 1,437 train / 360 test), trained on CPU with
\`flowzoo train --config configs/glow_digits.toml\` (n_bits = 4, L=2, K=8, width 64, affine
coupling, LU 1×1 convs, learned top prior, Adam lr 1e-3, batch 64, 1,500 steps; the best test
checkpoint is \`best.safetensors\`).

- Test score: ${score} (\`flowzoo eval --model models/glow_digits --draws 8\`).
- \`samples_t0.7.png\`: 64 samples at temperature 0.7; \`curves.png\`: train/test bits/dim.
- \`model.pt\`: the TorchScript export (\`torch.jit.load\`), when built with the export command.

\`\`\`
${info}
\`\`\`
MD
echo "models rebuilt: $(ls models)"
