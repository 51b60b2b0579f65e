# Sourced by the jobs (main.sh, families.sh) from the repository root: set-up, the system tools
# the mini suite's build needs, and the fixed threads and CPU scan backend every run uses.
bash scripts/setup.sh
# System tools for building the suite: apt-get download + dpkg-deb (Debian), fluidsynth.
if ! command -v fluidsynth > /dev/null || ! ls /var/lib/apt/lists/*Packages* > /dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fluidsynth > /dev/null
  else
    echo "$(basename "$0"): needs fluidsynth and apt package lists: sudo apt-get update && sudo apt-get install fluidsynth" >&2
    exit 1
  fi
fi
# Fixed thread counts and scan backend: float sums depend on both, and a probe trained on
# embeddings that differ in the last bit can stop at another epoch.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" MKL_NUM_THREADS="${OMP_NUM_THREADS:-2}" TF_CPP_MIN_LOG_LEVEL=3
PY=.venv/bin/python
# The CPU scan every run uses: the compiled one, built once here (about 30 s, then cached),
# or the pure-PyTorch one when no compiler is available. Pinned so that no run differs.
scan=$($PY -c "
from hear_ssam.ops.selective_scan_cpu import load_compiled
try:
    load_compiled(); print('compiled')
except Exception:
    print('chunked')" | tail -1)
export HEAR_SSAM_SCAN="$scan"
echo "CPU selective scan: $scan"
