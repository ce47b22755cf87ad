#!/usr/bin/env bash
# `make ood-table`: the "Finding anomalies" tables of README.md, measured with `flowzoo ood`.
#
# 1. models/glow_fashion_mnist against Fashion-MNIST's held-out test set (10,000 images, the
#    negatives) and out-of-distribution sets made by scripts/make_ood_sets.py (the positives):
#    AUROC, and FPR at 95% TPR, of each score.
# 2. Tabular: a RealNVP (configs/realnvp_digits64.toml) trained on data/digits64.csv without
#    one digit class, then asked to find that class among held-out digits of the other classes.
#
#   scripts/ood_table.sh                  # prints both tables (markdown)
#   scripts/ood_table.sh --update-readme  # and puts them into README.md between the markers
#
# Needs Fashion-MNIST's IDX files ($FASHION_MNIST, else /usr/share/datasets/fashion-mnist).
# Work files go to $OOD_OUT (default runs/ood). CLASSES="3 5" limits the tabular part;
# OOD_MODEL=RUN measures another Fashion-MNIST run than models/glow_fashion_mnist.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${FLOWZOO_BIN:-target/release/flowzoo}
# Spinning OpenMP threads waste a busy machine's CPU (see scripts/build_models.sh); no number changes.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
OUT=${OOD_OUT:-runs/ood}
FASHION=${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
MODEL=${OOD_MODEL:-models/glow_fashion_mnist}
CLASSES=${CLASSES:-0 1 2 3 4 5 6 7 8 9}
update_readme=0
for a in "$@"; do
  case $a in
    --update-readme) update_readme=1 ;;
    *) echo "ood_table.sh: unknown option '$a' (known: --update-readme)" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"

# One row of the table from `flowzoo ood --json` on stdin: n, then AUROC (FPR95) per score.
row() {
  python3 -c '
import json, sys
name, d = sys.argv[1], json.load(sys.stdin)
cells = ["%.3f (%.2f)" % (d["scores"][k]["auroc"], d["scores"][k]["fpr95"]) for k in sys.argv[2:]]
print("| %s | %d | %s |" % (name, d["n_ood"], " | ".join(cells)))
' "$@"
}

echo "== making the out-of-distribution image sets in $OUT/sets" >&2
python3 scripts/make_ood_sets.py images "$FASHION" "$OUT/sets"
images_table=$OUT/images.md
{
  echo "| out-of-distribution set | images | nll | typicality | complexity |"
  echo "|---|---:|---:|---:|---:|"
  for set in noise constant digits shuffled inverted flipped; do
    echo "== $MODEL: Fashion-MNIST test vs $set" >&2
    case $set in
      noise) what="uniform noise" ;;
      constant) what="constant images" ;;
      digits) what="bundled 8×8 digits, upscaled to 28×28" ;;
      shuffled) what="test images, pixels shuffled" ;;
      inverted) what="test images, inverted (255 − k)" ;;
      flipped) what="test images, upside down" ;;
    esac
    "$BIN" ood --model "$MODEL" --in "$FASHION" --ood "$OUT/sets/$set" --json |
      row "$what" nll typicality complexity
  done
} > "$images_table"

tabular_table=$OUT/tabular.md
{
  echo "| digit left out | held-out digits (others) | left-out digits | nll | typicality |"
  echo "|---|---:|---:|---:|---:|"
  for c in $CLASSES; do
    echo "== digits64 without $c: training a RealNVP" >&2
    dir=$OUT/digits64_no$c
    python3 scripts/make_ood_sets.py digits64 "$c" "$dir"
    rm -rf "$dir/run"
    # The training split of data/digits minus the class; its own validation split (10%) for
    # early stopping and the score statistics; no test split (the held-out rows are test.csv).
    "$BIN" train --config configs/realnvp_digits64.toml --out "$dir/run" --data "$dir/train.csv" \
      --set data.test_fraction=0 --set train.device='"cpu"' > "$dir/train.log" 2>&1
    "$BIN" ood --model "$dir/run" --in "$dir/test.csv" --ood "$dir/ood.csv" --json |
      python3 -c '
import json, sys
c, d = sys.argv[1], json.load(sys.stdin)
s = d["scores"]
print("| %s | %d | %d | %.3f (%.2f) | %.3f (%.2f) |" % (c, d["n_in"], d["n_ood"], s["nll"]["auroc"], s["nll"]["fpr95"], s["typicality"]["auroc"], s["typicality"]["fpr95"]))
' "$c"
  done
} > "$tabular_table"

cat "$images_table"
echo
cat "$tabular_table"

if [ "$update_readme" = 1 ]; then
  python3 - "$images_table" "$tabular_table" <<'PY'
import sys
readme = open("README.md").read()
for path, tag in zip(sys.argv[1:], ("ood-table-images", "ood-table-tabular")):
    start, end = f"<!-- {tag}: written by make ood-table -->\n", f"<!-- /{tag} -->"
    if start not in readme or end not in readme:
        sys.exit(f"README.md has no {start.strip()} ... {end} block")
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    readme = head + start + open(path).read() + end + tail
open("README.md", "w").write(readme)
print("README.md: tables updated", file=sys.stderr)
PY
fi
