"""The ROS package builds with colcon (ament_python) and its installed tree is what the launch file
and ``ros2 run`` look up: executable, params file, launch file, ament index entry.

Uses colcon and ament_package from PyPI (the ``ros`` extra); a Humble/Jazzy install runs the same
``colcon build``. ``ros2 launch`` itself needs ``launch``/``launch_ros``, which PyPI does not have.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "ros2_ws" / "src" / "m2s_stereo"

pytest.importorskip("ament_package", reason="ament_package not installed: pip install 'mono2stereo[ros]'")
COLCON = shutil.which("colcon") or (shutil.which("colcon", path=str(Path(sys.executable).parent)))
pytestmark = pytest.mark.skipif(COLCON is None, reason="colcon not installed: pip install 'mono2stereo[ros]'")


def test_colcon_build_installs_a_runnable_package(tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(PKG, ws / "src" / "m2s_stereo", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    env = {**os.environ, "COLCON_HOME": str(tmp_path / "colcon_home"), "COLCON_LOG_PATH": str(tmp_path / "log")}
    build = subprocess.run([COLCON, "build", "--packages-select", "m2s_stereo"], cwd=ws, env=env,
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    prefix = ws / "install" / "m2s_stereo"
    share = prefix / "share" / "m2s_stereo"
    executable = prefix / "lib" / "m2s_stereo" / "stereo_node"  # what ros2 run / the launch file start
    assert os.access(executable, os.X_OK)
    for rel in ("package.xml", "launch/stereo.launch.py", "config/stereo.yaml", "config/fastdds_large_images.xml"):
        assert (share / rel).is_file(), rel
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "m2s_stereo").is_file()

    # the installed tree as an overlay: the ament index finds it, and the node starts from it
    site = next((prefix / "lib").glob("python3*/site-packages"))
    overlay = {**env, "AMENT_PREFIX_PATH": os.pathsep.join([str(prefix), env.get("AMENT_PREFIX_PATH", "")]).rstrip(os.pathsep),
               "PYTHONPATH": os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    lookup = subprocess.run([sys.executable, "-c", "from ament_index_python.packages import get_package_share_directory as g;"
                             "import m2s_stereo, sys; print(g('m2s_stereo')); print(m2s_stereo.__file__)"],
                            env=overlay, capture_output=True, text=True, timeout=120)
    assert lookup.returncode == 0, lookup.stderr
    found_share, module = lookup.stdout.split()
    assert Path(found_share) == share and Path(module).is_relative_to(site)
    run = subprocess.run([str(executable), "--ros-args", "-p", "model_path:=/nonexistent/model.onnx"],
                         env=overlay, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "model_path '/nonexistent/model.onnx' does not exist" in run.stderr + run.stdout
