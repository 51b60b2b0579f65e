#!/usr/bin/env bash
# One-time (idempotent) set-up: .venv with pinned torch/torchaudio, hear_ssam (editable),
# heareval + hearvalidator made to work on Python 3.11, and the test-only mamba-ssm reference.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "need Python >= 3.10" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.hear_ssam_setup
# the start-up hook is copied into the venv, so a change to it must reinstall too
want=$(cat setup.cfg constraints.txt scripts/setup.sh eval_suites/heareval_startup.py | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
pip() { .venv/bin/python -m pip -q --disable-pip-version-check "$@"; }
echo "setup: installing into .venv (first run downloads torch 2.11.0 + tensorflow-cpu, ~3 GB)"
pip install --upgrade "pip>=24" wheel "setuptools<81"
pip install -c constraints.txt torch==2.11.0 torchaudio==2.11.0
pip install -c constraints.txt -e ".[eval,pretrain,dev,fast]"
# heareval/hearvalidator pin numpy==1.19.2 and old Pythons; their real needs are in [eval].
pip install --no-deps heareval==2021.1.3
pip install --no-deps --ignore-requires-python hearvalidator==2021.0.6
# heareval's own runners as typed on torch >= 2.6 / Lightning 1.9: a site-packages hook that
# allowlists exactly its checkpoints' globals (weights-only loading stays on) and gives
# Lightning's FitLoop the current_epoch setter heareval uses for event tasks.
.venv/bin/python -m eval_suites.heareval_compat install-startup
# mamba-ssm as pure Python (no CUDA build): tests load its reference scan and Mamba module.
MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE pip install --no-build-isolation --no-deps mamba-ssm==2.3.2.post1
echo "$want" > "$stamp"
echo "setup: done"
