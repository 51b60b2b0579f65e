#!/usr/bin/env bash
# The families comparison, offline from committed checkpoints (about an hour on 2 CPU cores after set-up):
#   1. build the mini suite (as the main job)
#   2. embeddings + probes (python -m eval_suites families; rows in eval_suites/families.py):
#      ssam/ssast/axlstm/ssamba-tiny pretrained at one budget, each family's seeded random
#      initialisation (made when missing), logmel, and ssast-tiny-posmask when its checkpoint
#      exists; heareval's MLP probe with seeds added 5 at a time (up to 20) where a 95 %
#      half-width is above 0.03; the linear probe on the same embeddings
#   3. efficiency (tests/benchmarks/bench_families.py) of the same rows, logmel excluded
#   4. tables and figures in results/families/ (python -m results families)
# Resumable: finished embeddings, seeds and linear probes are skipped on rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/job_env.sh  # set-up, system tools, fixed threads and scan backend (as main.sh)
OUT=runs/families
mkdir -p "$OUT"
start=$SECONDS

echo "== 1/4 building the mini suite in data/tasks"
$PY -m eval_suites build mini --tasks-dir data/tasks --work data/mini_build

echo "== 2/4 embeddings + MLP probe (adaptive seeds) + linear probe"
$PY -m eval_suites families --tasks-dir data/tasks --out "$OUT"

echo "== 3/4 efficiency"
# The rows with weights, as NAME=CKPT (optional rows only when their checkpoint exists).
listing=$($PY -m eval_suites families --list-checkpoints 2> /dev/null)
bench_models=()
while read -r row; do bench_models+=(--model "$row"); done <<< "$listing"
if [ -f tests/benchmarks/bench_families.py ]; then
  $PY tests/benchmarks/bench_families.py --out "$OUT/efficiency" "${bench_models[@]}"
else
  echo "families: tests/benchmarks/bench_families.py not found: no efficiency tables" >&2
fi

echo "== 4/4 tables and figures"
$PY -m results families "$OUT" --out results/families
echo "families: done in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"
