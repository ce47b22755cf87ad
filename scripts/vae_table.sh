#!/usr/bin/env bash
# README's VAE table, measured: `make vae-table`.
#
# Trains the digits VAE (8x8, 4 bits) once per posterior, with the same encoder, decoder, data,
# seed and number of steps: "diagonal" (configs/vae_digits_diag.toml), "realnvp"
# (configs/vae_digits_realnvp.toml), "iaf" (configs/vae_digits_iaf.toml) and "maf" (the IAF
# config with model.posterior = "maf"); then `flowzoo eval --k K --json` on the test split gives
# the test ELBO and the importance-weighted bound (the same K draws per image) in nats and
# bits/dim, of the last weights (`--checkpoint last`: the best checkpoint is chosen on the test
# split, and the table should not select on the numbers it reports). Writes docs/vi/vae_table.json and docs/vi/vae_table.md (the README's table).
#
#   scripts/vae_table.sh                  # writes docs/vi/$NAME.{json,md}
#   scripts/vae_table.sh --update-readme  # and puts the table into README.md between its markers
#
# Environment: FLOWZOO_BIN (target/release/flowzoo), PYTHON (python3), OUT (runs/vae_table),
# STEPS (the configs' 4000), K (1000), POSTERIORS ("diagonal realnvp iaf maf"), SEED (the
# configs' train.seed, 0), NAME (vae_table: the files' name), THREADS (the configs' 2), DEVICE
# (cpu), NICE (5: the niceness of the runs on a shared machine). Another seed, e.g.
# `SEED=1 NAME=vae_table_seed1 POSTERIORS="diagonal iaf"`, measures how much the table moves
# between trainings.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${FLOWZOO_BIN:-target/release/flowzoo}
PY=${PYTHON:-python3}
OUT=${OUT:-runs/vae_table}
STEPS=${STEPS:-4000}
K=${K:-1000}
POSTERIORS=${POSTERIORS:-diagonal realnvp iaf maf}
THREADS=${THREADS:-2}
DEVICE=${DEVICE:-cpu}
NICE=${NICE:-5}
SEED=${SEED:-0}
NAME=${NAME:-vae_table}
DOCS=${DOCS:-docs/vi}
# OpenMP threads that spin while waiting starve each other on a busy machine (scripts/build_models.sh).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
update_readme=0
for a in "$@"; do
  case $a in
    --update-readme) update_readme=1 ;;
    *) echo "vae_table.sh: unknown option '$a' (known: --update-readme)" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT" "$DOCS"

config_of() {
  case $1 in
    diagonal) echo "configs/vae_digits_diag.toml" ;;
    realnvp) echo "configs/vae_digits_realnvp.toml" ;;
    iaf | maf) echo "configs/vae_digits_iaf.toml" ;;
    *) echo "unknown posterior $1 (diagonal, realnvp, iaf, maf)" >&2; exit 2 ;;
  esac
}

rows=()
for p in $POSTERIORS; do
  cfg=$(config_of "$p")
  run="$OUT/$p-seed$SEED"
  rm -rf "$run"
  t0=$SECONDS
  nice -n "$NICE" "$BIN" train --config "$cfg" --out "$run" --device "$DEVICE" -q \
    --set model.posterior="\"$p\"" --set train.max_steps="$STEPS" --set train.seed="$SEED" --set train.threads="$THREADS" >&2
  train_s=$((SECONDS - t0))
  t0=$SECONDS
  ev=$(nice -n "$NICE" "$BIN" eval --model "$run" --checkpoint last --k "$K" --json --device "$DEVICE")
  eval_s=$((SECONDS - t0))
  params=$("$BIN" info --model "$run" --device "$DEVICE" | sed -n 's/^parameters: *\([0-9][0-9]*\).*/\1/p')
  echo "== $p: $STEPS steps in $train_s s, eval (k = $K) in $eval_s s: $ev" >&2
  rows+=("$("$PY" -c 'import json,sys; e=json.loads(sys.argv[1]); e.update(posterior=sys.argv[2], config=sys.argv[3], seed=int(sys.argv[7]), train_seconds=int(sys.argv[4]), eval_seconds=int(sys.argv[5]), parameters=int(sys.argv[6]) if sys.argv[6] else None); print(json.dumps(e))' "$ev" "$p" "$cfg" "$train_s" "$eval_s" "$params" "$SEED")")
done

"$PY" - "$DOCS/$NAME" "$STEPS" "$K" "${rows[@]}" <<'EOF'
import json, sys
base, steps, k, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), [json.loads(r) for r in sys.argv[4:]]
out = {"settings": {"data": "data/digits (8x8, 4 bits), the test split", "steps": steps, "k": k, "seed": rows[0]["seed"] if rows else None,
                    "note": "same encoder, decoder, data, seed and steps for every posterior; the last weights; eval's ELBO and bound from the same k draws per image"},
       "rows": rows}
json.dump(out, open(f"{base}.json", "w"), indent=1)
lines = [
    f"| posterior | parameters | test ELBO (nats) | IW bound, k = {k} (nats) | gap (nats) | ELBO (bits/dim) | IW bound (bits/dim) | train (s) |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
]
for r in rows:
    lines.append(
        f"| {r['posterior']} | {r['parameters'] if r['parameters'] is not None else '?'} | {r['elbo_nats']:.2f} ± {r['elbo_stderr']:.2f} | "
        f"{r['iw_bound_nats']:.2f} ± {r['iw_bound_stderr']:.2f} | {r['gap_nats']:.2f} | {r['elbo_bpd']:.4f} | {r['iw_bound_bpd']:.4f} | {r['train_seconds']} |"
    )
open(f"{base}.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
echo "wrote $DOCS/$NAME.json and $DOCS/$NAME.md" >&2
if [ "$update_readme" = 1 ]; then
  "$PY" - "$DOCS/$NAME.md" README.md <<'EOF'
import sys
table, readme = open(sys.argv[1]).read(), sys.argv[2]
text = open(readme).read()
start, end = "<!-- vae-table: written by make vae-table -->\n", "<!-- /vae-table -->"
a, b = text.index(start) + len(start), text.index(end)
open(readme, "w").write(text[:a] + table + text[b:])
EOF
  echo "updated README.md's VAE table" >&2
fi
