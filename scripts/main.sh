#!/usr/bin/env bash
# The main job, offline on the embedded default (about 30 minutes on 2 CPU cores):
#   1. build the mini suite (4 HEAR bundles of real audio from Debian packages)
#   2. validate the bundled default model with hear-validator
#   3. heareval embeddings + probes for the bundled ssam-tiny and its comparison models
#      (ssast-tiny and axlstm-tiny pretrained with the same data and budget; those three and
#      ssamba-tiny at random init)
#   4. leaderboard CSVs + chart in results/mini/
# Everything is resumable: finished tasks, embeddings and probes are skipped on rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# System tools for building the suite: apt-get download + dpkg-deb (Debian), fluidsynth.
if ! command -v fluidsynth > /dev/null || ! ls /var/lib/apt/lists/*Packages* > /dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fluidsynth > /dev/null
  else
    echo "main: needs fluidsynth and apt package lists: sudo apt-get update && sudo apt-get install fluidsynth" >&2
    exit 1
  fi
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}" TF_CPP_MIN_LOG_LEVEL=3
PY=.venv/bin/python
OUT=runs/main
mkdir -p "$OUT" data/ckpt

echo "== 1/4 building the mini suite in data/tasks"
$PY -m eval_suites build mini --tasks-dir data/tasks --work data/mini_build

echo "== 2/4 hear-validator hear_ssam (bundled default model)"
.venv/bin/hear-validator hear_ssam > "$OUT/validator.log" 2>&1 || { tail -20 "$OUT/validator.log"; exit 1; }
grep "Looks good!" "$OUT/validator.log"

echo "== 3/4 embeddings + probes (heareval) for 7 models x 4 tasks x 3 seeds"
for preset in ssam-tiny ssast-tiny axlstm-tiny ssamba-tiny; do
  ckpt="data/ckpt/${preset}-random.safetensors"
  [ -f "$ckpt" ] || $PY -m hear_ssam init "$preset" "$ckpt" --seed 0
done
models=(--model ssam-tiny=default)
for preset in ssast-tiny axlstm-tiny; do  # pretrained with the same data and budget
  ckpt="results/checkpoints/${preset//-/_}_cpu.safetensors"
  [ -f "$ckpt" ] && models+=(--model "$preset=$ckpt")
done
for preset in ssam-tiny ssast-tiny axlstm-tiny ssamba-tiny; do
  models+=(--model "$preset-random=data/ckpt/$preset-random.safetensors")
done
$PY -m eval_suites run mini --tasks-dir data/tasks --out "$OUT" "${models[@]}"

echo "== 4/4 leaderboard"
$PY -m results aggregate "$OUT" --out results/mini
