#!/usr/bin/env bash
# The robot-side test leg: what a JetPack 6 / ROS Humble image runs (Python 3.10, numpy 1.26, the
# JetPack 6 constraints, no torch): calib, the onnxruntime runtime, FP16 decisions and TensorRT
# logic, bag tools, the node's units and DDS tests. Tests that need torch skip. Extra arguments go
# to pytest. Skipped (exit 0, with the reason) where no Python 3.10 exists.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
is310() { [ -n "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null; }
py=""
for candidate in "${PYTHON310:-}" $(ls -d "$HOME"/.pyenv/versions/3.10*/bin/python 2>/dev/null) \
                 "$(command -v python3.10 || true)" /usr/bin/python3.10; do
  if is310 "$candidate"; then py="$candidate"; break; fi
done
if [ -z "$py" ]; then
  echo "[m2s] robot-side leg skipped: no Python 3.10 here (set PYTHON310=/path/to/python3.10)" >&2
  exit 0
fi
export PYTHON="$py" M2S_VENV="${M2S_ROBOT_VENV:-$root/.venv-robot}" M2S_EXTRAS="export,ros,dev"
export M2S_CONSTRAINTS="constraints/jetpack6.txt" M2S_PINS="numpy==1.26.*"
source "$root/scripts/env.sh"
cd "$M2S_ROOT"
"$M2S_VENV/bin/python" -c 'import numpy, sys; print(f"[m2s] robot-side leg: Python {sys.version.split()[0]}, numpy {numpy.__version__}", file=sys.stderr)'
exec "$M2S_VENV/bin/python" -m pytest -p no:cacheprovider "$@"
