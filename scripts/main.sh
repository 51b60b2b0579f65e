#!/usr/bin/env bash
# The main job, offline on the bundled default (about 20 minutes on 2 CPU cores after set-up):
#   1. build the mini suite (5 HEAR bundles of real audio from Debian packages, one an event task)
#   2. validate the bundled default model with hear-validator
#   3. heareval embeddings + probes (5 seeds) for the log-mel baseline, the bundled ssam-tiny,
#      its random initialisation and ssast-tiny pretrained with the same 256,000-crop budget
#   4. leaderboard (CSV in the HEAR format, Markdown, chart, the weights of each row) in results/mini/
# Everything is resumable: finished tasks, embeddings and probes are skipped on rerun.
# Reproducible: the same machine gives the same results/mini/*.csv to the last digit
# (fixed threads and scan backend, seeded deterministic probes; docs/evaluation.md).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/job_env.sh  # set-up, system tools, fixed threads and scan backend
OUT=runs/main
mkdir -p "$OUT"
start=$SECONDS

echo "== 1/4 building the mini suite in data/tasks"
$PY -m eval_suites build mini --tasks-dir data/tasks --work data/mini_build

echo "== 2/4 hear-validator hear_ssam (bundled default model)"
.venv/bin/hear-validator hear_ssam > "$OUT/validator.log" 2>&1 || { tail -20 "$OUT/validator.log"; exit 1; }
grep "Looks good!" "$OUT/validator.log"

echo "== 3/4 embeddings + probes (heareval): 4 models x 5 tasks x 5 seeds"
# ssam-tiny-random: the bundled model's architecture at its seeded random initialisation, so
# the leaderboard shows what pretraining added. ssast-tiny: the Transformer baseline trained
# with the bundled model's data, budget and recipe (ssast_tiny_cpu.yaml, then
# ssast_tiny_cpu_stage{2,3,4}.yaml as the default's four stages),
# so the rows compare encoders, not budgets.
random_init=data/ckpt/ssam_tiny_random_init.safetensors
[ -f "$random_init" ] || $PY -m hear_ssam init ssam-tiny "$random_init" --seed 0
models=(logmel ssam-tiny=default ssam-tiny-random="$random_init"
        ssast-tiny=results/checkpoints/ssast_tiny_cpu_stage4.safetensors)
$PY -m eval_suites run mini --tasks-dir data/tasks --out "$OUT" "${models[@]/#/--model=}"

echo "== 4/4 leaderboard"
# Submission Date: the code's commit date, not today's, so a rerun on another day writes the same CSV.
# Only this job's models: $OUT keeps the folders of models an earlier version of the job ran.
names=("${models[@]%%=*}")
$PY -m results aggregate "$OUT" --out results/mini "${names[@]/#/--model=}" \
  --date "$(git log -1 --format=%cs 2>/dev/null || date +%F)"
echo "main: done in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"
