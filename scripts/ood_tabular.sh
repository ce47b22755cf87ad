#!/usr/bin/env bash
# `make ood-tabular` (and part of `make ood-table`): README's "Finding anomalies" tabular table.
#
# For each digit class c: a RealNVP (configs/realnvp_digits64.toml, early-stopped on its own
# validation split) trained on data/digits64.csv's rows of data/digits/train without class c,
# then `flowzoo ood` with the held-out rows of the other classes (those of data/digits/test) as
# the negatives and every row of class c as the positives. scripts/make_ood_sets.py digits64
# writes the three CSV files. Writes docs/ood/digits64.md (the table) and
# docs/ood/digits64.json (every figure). About 45 s per class on 2 busy cores.
#
#   scripts/ood_tabular.sh                   # every class 0..9
#   CLASSES="3 8" scripts/ood_tabular.sh     # some classes (then docs/ood/digits64.3-8.*)
#   scripts/ood_tabular.sh --update-readme   # and put the table into README.md between its markers
#
# OOD_OUT (runs/ood) holds the work files; OOD_DOCS names the output files' stem.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${FLOWZOO_BIN:-target/release/flowzoo}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
OUT=${OOD_OUT:-runs/ood}
CLASSES=${CLASSES:-0 1 2 3 4 5 6 7 8 9}
if [ -n "${OOD_DOCS:-}" ]; then
  DOCS=$OOD_DOCS
elif [ "$CLASSES" = "0 1 2 3 4 5 6 7 8 9" ]; then
  DOCS=docs/ood/digits64
else
  DOCS=docs/ood/digits64.$(echo $CLASSES | tr ' ' '-')
fi
update_readme=0
for a in "$@"; do
  case $a in
    --update-readme) update_readme=1 ;;
    *) echo "ood_tabular.sh: unknown option '$a' (known: --update-readme)" >&2; exit 2 ;;
  esac
done
work=$OUT/tabular
mkdir -p "$work"
for c in $CLASSES; do
  dir=$work/no$c
  echo "== digits64 without $c: training a RealNVP (log: $dir/train.log)" >&2
  python3 scripts/make_ood_sets.py digits64 "$c" "$dir"
  rm -rf "$dir/run"
  # No test split: the held-out rows are test.csv; the validation split (10%) early-stops and
  # gives the score statistics.
  "$BIN" train --config configs/realnvp_digits64.toml --out "$dir/run" --data "$dir/train.csv" \
    --set data.test_fraction=0 --set train.device='"cpu"' > "$dir/train.log" 2>&1 ||
    { tail -5 "$dir/train.log" >&2; exit 1; }
  "$BIN" ood --model "$dir/run" --in "$dir/test.csv" --ood "$dir/ood.csv" --json > "$dir/ood.json"
  "$BIN" score --model "$dir/run" --data "$dir/test.csv" --score nll -o "$dir/in.scores.csv"
  "$BIN" score --model "$dir/run" --data "$dir/ood.csv" --score nll -o "$dir/ood.scores.csv"
done
# shellcheck disable=SC2086 # one argument per class
python3 scripts/ood_tables.py tabular "$work" "$DOCS" $CLASSES
cat "$DOCS.md"
if [ "$update_readme" = 1 ]; then
  python3 scripts/ood_tables.py readme README.md ood-table-tabular "$DOCS.md"
fi
