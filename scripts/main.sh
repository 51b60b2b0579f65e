#!/usr/bin/env bash
# The main job on the embedded default: set up, then validate the bundled model with the
# real HEAR validator. (Grows into the full offline mini-suite leaderboard run.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" TF_CPP_MIN_LOG_LEVEL=3
.venv/bin/hear-validator hear_ssam
