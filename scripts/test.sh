#!/usr/bin/env bash
# Set up (if needed) and run the tests: first the behaviour tests (slow end-to-end ones
# included), printing the slowest, then the audits of committed results and docs.
# Arguments go to one pytest run instead (e.g. `bash scripts/test.sh tests/test_hear_api.py`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" TF_CPP_MIN_LOG_LEVEL=3 CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES-}"
PY=.venv/bin/python
if [ $# -gt 0 ]; then
  exec $PY -m pytest -q "$@"
fi
echo "== behaviour tests"
$PY -m pytest -q -m "not audit" --durations=15
echo "== audits of committed results and docs"
$PY -m pytest -q -m audit
