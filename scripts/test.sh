#!/usr/bin/env bash
# The test suite: creates/reuses .venv, installs the repo with its test extras, fetches the
# example data, runs pytest. Extra arguments go to pytest (e.g. -k calib -x).
set -euo pipefail
M2S_EXTRAS="${M2S_EXTRAS:-dev,training,export,ros,docs}"
source "$(dirname "$0")/env.sh"
cd "$M2S_ROOT"
# The authors' model code in ../shared/reference is the oracle of the checkpoint import
# (tests/m2s_train/test_published.py). It needs timm 0.5.4, installed without its dependencies (they
# would pull torchvision and with it a CUDA build of torch; the oracle stubs the torchvision imports),
# opt_einsum and scipy. Where ../shared is absent those tests skip with that reason.
if ! "$M2S_VENV/bin/python" -c 'import importlib.metadata as m, importlib.util as u, sys
sys.exit(not (m.version("timm") == "0.5.4" and u.find_spec("opt_einsum") and u.find_spec("scipy")))' 2>/dev/null; then
  echo "[m2s] installing the reference oracle's packages (timm 0.5.4 --no-deps, opt_einsum, scipy)" >&2
  "$M2S_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps timm==0.5.4
  "$M2S_VENV/bin/python" -m pip install --quiet --disable-pip-version-check opt_einsum scipy
fi
# The real ROS 2 launch tooling and message_filters (no wheels): from ../shared/ros where it is beside the
# checkout (tests/ros/test_launch.py runs the literal `ros2 launch`; without them those tests skip).
ros_sources="$M2S_ROOT/../shared/ros"
if [ -x "$ros_sources/install.sh" ] && ! "$M2S_VENV/bin/python" -c 'import launch, launch_ros, ros2launch, message_filters' 2>/dev/null; then
  echo "[m2s] installing the ROS 2 launch tooling and message_filters (rolling, for the Kilted wheels) from $ros_sources" >&2
  "$ros_sources/install.sh" "$M2S_VENV" rolling >/dev/null
fi
exec "$M2S_VENV/bin/python" -m pytest "$@"
