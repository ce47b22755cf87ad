#!/usr/bin/env bash
# `make models`: rebuilds the pretrained models shipped under models/ and their README.
# Each model is an ordinary run directory (minus the optimizer state), so `flowzoo sample
# --model models/glow_digits` works before any training; training saves its score statistics
# (score_stats.json), so `flowzoo score` / `flowzoo ood` need no pass over the data either.
#
#   scripts/build_models.sh                       # every model, then models/README.md
#   scripts/build_models.sh glow_fashion_mnist    # only the models named, then the README
#   scripts/build_models.sh --readme              # only models/README.md, from the models there
#
# glow_fashion_mnist needs Fashion-MNIST's IDX files: $FASHION_MNIST, else Debian's
# /usr/share/datasets/fashion-mnist (see data/README.md). All training runs on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${FLOWZOO_BIN:-target/release/flowzoo}
# On a busy machine libtorch's OpenMP threads, spinning while they wait for each other, waste
# their share of the CPU: measured on a loaded 2-core machine, passive waiting trained
# glow_fashion_mnist 9× faster (0.39 against 0.045 steps/s). How threads wait changes no number.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

# Whether two safetensors files hold the same tensors (names, dtypes, shapes and bytes).
same_tensors() {
  python3 - "$1" "$2" <<'PY'
import json, struct, sys
def tensors(path):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    return header, data[8 + n:]
sys.exit(0 if tensors(sys.argv[1]) == tensors(sys.argv[2]) else 1)
PY
}

build() {
  local name=$1 config=$2; shift 2
  local out=models/$name tmp=models/.$name.tmp
  rm -rf "$tmp"
  echo "== training $name ($config) on the CPU"
  "$BIN" train --config "$config" --out "$tmp" --set train.device='"cpu"' "$@"
  rm -f "$tmp/optimizer.safetensors"
  # One copy of identical weights: when the best checkpoint holds the last weights, the last
  # weights are a link to it (the repository holds each model once). Compared tensor by
  # tensor: the files' metadata may be written in another order.
  if same_tensors "$tmp/best.safetensors" "$tmp/weights.safetensors"; then
    ln -sf best.safetensors "$tmp/weights.safetensors"
  fi
  # The run records where its data was found; a shipped run names it as its config does (an
  # environment variable with a default), so it finds the data on another machine too.
  local data_path
  data_path=$(grep -m1 '^path *=' "$config")
  sed -i "0,/^path *=.*/s||$(printf '%s' "$data_path" | sed 's/[&|\\]/\\&/g')|" "$tmp/config.toml"
  "$BIN" export --model "$tmp" --torchscript "$tmp/model.pt"
  "$BIN" sample --model "$tmp" -n 64 --temperature 0.7 --seed 1 -o "$tmp/samples_t0.7.png"
  rm -rf "$out" && mv "$tmp" "$out"
}

# "<mean> bits/dim over <n> test images" of a model's test split, 8 dequantisation draws.
test_score() {
  "$BIN" eval --model "models/$1" --draws 8 --json |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.4f bits/dim over %d test images" % (d["mean_bpd"], d["n"]))'
}

readme_only=0
names=()
for a in "$@"; do
  case $a in
    --readme) readme_only=1 ;;
    glow_digits | glow_fashion_mnist) names+=("$a") ;;
    *) echo "build_models.sh: unknown model or option '$a' (models: glow_digits glow_fashion_mnist; option: --readme)" >&2; exit 2 ;;
  esac
done
if [ "$readme_only" = 0 ]; then
  [ ${#names[@]} -gt 0 ] || names=(glow_digits glow_fashion_mnist)
  for n in "${names[@]}"; do
    case $n in
      glow_digits) build glow_digits configs/glow_digits.toml ;;
      glow_fashion_mnist) build glow_fashion_mnist configs/glow_fashion_mnist.toml ;;
    esac
  done
fi

{
  cat <<'MD'
# Pretrained models

Rebuilt by `make models` (scripts/build_models.sh); each folder is a flowzoo run directory
without its optimizer state: `flowzoo sample|eval|export|info|score|ood --model models/NAME`.
Each holds its weights (`best.safetensors`, the best test checkpoint; `weights.safetensors`,
the last, a link to the best when they are the same), `config.toml`, `state.json`,
`metrics.csv`, `curves.png` (train/test bits/dim), `samples/` (grids written during training),
`samples_t0.7.png` (64 samples at temperature 0.7), `model.pt` (the TorchScript export,
`torch.jit.load`) and `score_stats.json` (the anomaly-score statistics training saved, which
`flowzoo score --threshold-fpr` and `flowzoo ood` use).
MD
  if [ -d models/glow_digits ]; then
    cat <<MD

## glow_digits

Glow on the bundled 8×8 digits (\`data/digits\`, 1,437 train / 360 test), trained on CPU with
\`flowzoo train --config configs/glow_digits.toml\` (n_bits = 4, L=2, K=8, width 64, affine
coupling, LU 1×1 convs, learned top prior, Adam lr 1e-3, batch 64, 1,500 steps).

- Test score: $(test_score glow_digits) (\`flowzoo eval --model models/glow_digits --draws 8\`).

\`\`\`
$("$BIN" info --model models/glow_digits)
\`\`\`
MD
  fi
  if [ -d models/glow_fashion_mnist ]; then
    fm_score=$(test_score glow_fashion_mnist)
    cat <<MD

## glow_fashion_mnist

Glow on Fashion-MNIST (60,000 train / 10,000 test 28×28 grey images, read from the data set's
IDX files), trained on CPU with \`flowzoo train --config configs/glow_fashion_mnist.toml\`
(8 bits, L=2, K=16, width 48, affine coupling, LU 1×1 convs, learned top prior, Adam lr 1e-3,
batch 64, 4,000 steps ≈ 4.3 epochs). Only \`eval\` without \`--data\` and score statistics
for another \`--draws\` read the data set itself; its \`config.toml\` finds it through
\`\$FASHION_MNIST\`, else \`/usr/share/datasets/fashion-mnist\`.

- Test score: ${fm_score} (\`flowzoo eval --model models/glow_fashion_mnist --draws 8\`;
  uniform dequantisation, 8-bit pixels, the convention of the papers below).
- Time: about 23 minutes on an idle 2-core CPU (measured 2026-12-07: 400 steps with one
  evaluation in 2 min 45 s, ~3.0 steps/s; see the config's comment). The shipped weights took
  4,375 s because they were trained on a machine shared with other jobs (\`info\` below).

\`\`\`
$("$BIN" info --model models/glow_fashion_mnist)
\`\`\`
MD
    printf '\n%s\n\n%s\n%s\n%s\n' \
      "Published reference points for flows on Fashion-MNIST (test bits/dim, lower is better):" \
      "| model | test bits/dim | comparable? |" "|---|---:|---|" \
      "| \`glow_fashion_mnist\` (this one: 210k parameters, 4,000 steps on a CPU; 8 draws) | ${fm_score%% *} | — |"
    cat <<'MD'
| Glow, 69.4M parameters (2 scales × 16 steps, highway coupling networks of width 200, 80 epochs), from the code of Kirichenko, Izmailov & Wilson 2020, "Why normalizing flows fail to detect out-of-distribution data" ([flows_ood](https://github.com/PolinaKirichenko/flows_ood), `experiments/notebooks/GLOW_fashion.ipynb`: train 3.103, test 3.141; MNIST test images 2.081) | 3.141 | yes: 8-bit pixels, uniform dequantisation `(k + u)/256` (then a logit transform inside the flow, counted in its log-determinant), one draw per image; 330× the parameters |
| Glow, L=3, K=32, width 512, on Fashion-MNIST (chrischute/glow, reported in [its issue #10](https://github.com/chrischute/glow/issues/10): training 2.83 bits/dim at epoch 29, validation "about the same") | ≈ 2.83 | no: an informal training-set figure from an issue thread; three levels imply the images were padded or resized to 32×32, which changes D and adds easy border pixels |

Bits/dim here are `-(log p(x) - D·ln 256)/(D·ln 2)` of the uniformly dequantised 8-bit image
(`flowzoo eval`), the convention of OpenAI's Glow and of the Glow in the first row. Numbers from
variational dequantisation (Flow++) or from models on rescaled images are not comparable.
MD
  fi
} > models/README.md.tmp
mv models/README.md.tmp models/README.md
echo "models: $(ls -d models/*/ | tr '\n' ' ')"
