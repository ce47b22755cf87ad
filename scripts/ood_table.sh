#!/usr/bin/env bash
# `make ood-table` (with scripts/ood_tabular.sh): README's "Finding anomalies" image table,
# measured with `flowzoo ood`.
#
# A Fashion-MNIST Glow (default models/glow_fashion_mnist) against a seeded sample of held-out
# Fashion-MNIST test images (the negatives) and out-of-distribution sets made by
# scripts/make_ood_sets.py from data we have (the positives): AUROC, AUPRC and FPR at 95% TPR
# of each score, with each set's mean bits/dim and PNG length. Writes docs/ood/fashion_mnist.md
# (the tables) and docs/ood/fashion_mnist.json (every figure).
#
#   scripts/ood_table.sh                   # measure, write docs/ood/fashion_mnist.{md,json}
#   scripts/ood_table.sh --update-readme   # and put the table into README.md between its markers
#
# Environment: OOD_MODEL=RUN measures another Fashion-MNIST run (the output files are then
# named after it, docs/ood/fashion_mnist.<run name>.*, unless OOD_DOCS names them); N_IN (2000)
# and N_OOD (500) subsample the sets (seeded, OOD_SEED=0) to keep the runtime sane on 2 cores;
# FASHION_MNIST (else /usr/share/datasets/fashion-mnist) has the IDX files; OOD_OUT (runs/ood)
# holds the work files.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${FLOWZOO_BIN:-target/release/flowzoo}
# Spinning OpenMP threads waste a busy machine's CPU (see scripts/build_models.sh); no number changes.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
OUT=${OOD_OUT:-runs/ood}
FASHION=${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
MODEL=${OOD_MODEL:-models/glow_fashion_mnist}
N_IN=${N_IN:-2000}
N_OOD=${N_OOD:-500}
SEED=${OOD_SEED:-0}
if [ -n "${OOD_DOCS:-}" ]; then
  DOCS=$OOD_DOCS
elif [ "$MODEL" = models/glow_fashion_mnist ]; then
  DOCS=docs/ood/fashion_mnist
else
  DOCS=docs/ood/fashion_mnist.$(basename "$MODEL")
fi
update_readme=0
for a in "$@"; do
  case $a in
    --update-readme) update_readme=1 ;;
    *) echo "ood_table.sh: unknown option '$a' (known: --update-readme)" >&2; exit 2 ;;
  esac
done
[ -f "$MODEL/config.toml" ] || { echo "ood_table.sh: no run at $MODEL (make models builds models/glow_fashion_mnist; OOD_MODEL=RUN names another)" >&2; exit 1; }
work=$OUT/images
sets=$work/sets
mkdir -p "$work"

echo "== out-of-distribution image sets in $sets ($N_IN test images in, $N_OOD per set, seed $SEED)" >&2
python3 scripts/make_ood_sets.py images "$FASHION" "$sets" --n-in "$N_IN" --n-ood "$N_OOD" --seed "$SEED"

# Name=description of each set, in table order (make_ood_sets.py's docstring says how each is made).
specs=(
  "train=Fashion-MNIST training images (a control: not out of distribution)"
  "noise=uniform noise"
  "constant=constant images (one grey level each)"
  "digits=bundled 8×8 digits, upscaled to 28×28"
  "shuffled=test images, pixels shuffled"
  "inverted=test images, inverted (255 − k)"
  "flipped=test images, upside down"
)
echo "== $MODEL: bits/dim and PNG length of the in-distribution images" >&2
"$BIN" score --model "$MODEL" --data "$sets/in" --score complexity -o "$work/in.scores.csv"
for spec in "${specs[@]}"; do
  name=${spec%%=*}
  echo "== $MODEL: Fashion-MNIST test vs $name" >&2
  "$BIN" ood --model "$MODEL" --in "$sets/in" --ood "$sets/$name" --json > "$work/$name.ood.json"
  "$BIN" score --model "$MODEL" --data "$sets/$name" --score complexity -o "$work/$name.scores.csv"
done
python3 scripts/ood_tables.py images "$work" "$MODEL" "$SEED" "$DOCS" "${specs[@]}"
cat "$DOCS.md"
if [ "$update_readme" = 1 ]; then
  python3 scripts/ood_tables.py readme README.md ood-table-images "$DOCS.md"
fi
