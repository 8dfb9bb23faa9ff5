"""The literal ``ros2 launch m2s_stereo stereo.launch.py ...`` against the colcon-built package, as a user with a
ROS install runs it: a subprocess in its own process group, fed by this process, stopped as a terminal stops
it. The real launch tooling (launch, launch_ros, ros2launch, ros2cli) has no wheels: the test scripts install
it from ../shared/ros (``install.sh VENV rolling|jazzy``); without it these tests skip with that reason.

Checked: parameters from the params file and from launch arguments (and that an argument left empty does not
override the params file), a model path with a quote in it, remappings, the namespace, the DDS profile
(default, a given file, ``none``) in the node's environment and in an included camera launch, the node's
outputs, and the stops: SIGINT once and twice, SIGINT then SIGTERM, SIGINT while the node starts; exit
statuses, no traceback, no node left running; a node that cannot start fails the launch with its reason.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 Python (rclpy) is not installed: pip install 'mono2stereo[ros]'")
pytest.importorskip("onnxruntime")
for _module in ("launch", "launch_ros", "ros2launch", "ros2cli"):
    pytest.importorskip(_module, reason="the real ROS 2 launch tooling is not installed: ../shared/ros/install.sh VENV "
                                        "[rolling|jazzy] (CI's test scripts do it)")
pytest.importorskip("ament_package", reason="ament_package not installed: pip install 'mono2stereo[ros]'")

from calib import StereoCamera  # noqa: E402
from m2s_stereo.dds import profile_variables  # noqa: E402
from rosgraph import Listener  # noqa: E402

PKG = Path(__file__).resolve().parents[2] / "ros2_ws" / "src" / "m2s_stereo"
BIN = Path(sys.executable).parent
COLCON = shutil.which("colcon") or shutil.which("colcon", path=str(BIN))
ROS2 = shutil.which("ros2", path=str(BIN)) or shutil.which("ros2")
pytestmark = pytest.mark.skipif(COLCON is None or ROS2 is None, reason="colcon / ros2 not installed")
PROFILE_VARS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE", "M2S_DDS_PROFILE")
# the variable this Fast DDS reads: FASTRTPS_ on the Jazzy wheels (Fast DDS 2.14), FASTDDS_ on Kilted's (3.x)
PROFILE_VAR = profile_variables()[0]


@pytest.fixture(scope="module")
def overlay(tmp_path_factory):
    """The package built by colcon, and the environment of a shell that sourced its install (plus the venv,
    where the PyPI wheels keep their ament index)."""
    ws = tmp_path_factory.mktemp("ws")
    shutil.copytree(PKG, ws / "src" / "m2s_stereo", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    env = {k: v for k, v in os.environ.items() if k not in PROFILE_VARS}
    env.update(COLCON_HOME=str(ws / "colcon_home"), COLCON_LOG_PATH=str(ws / "log"), PATH=f"{BIN}{os.pathsep}{env['PATH']}")
    build = subprocess.run([COLCON, "build", "--packages-select", "m2s_stereo"], cwd=ws, env=env, capture_output=True,
                           text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    prefix = ws / "install" / "m2s_stereo"
    site = next((prefix / "lib").glob("python3*/site-packages"))
    env["AMENT_PREFIX_PATH"] = os.pathsep.join([str(prefix), sys.prefix])
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {"env": env, "share": prefix / "share" / "m2s_stereo", "root": ws}


class Launch:
    """``ros2 launch m2s_stereo stereo.launch.py ARGS`` in its own process group; its output collected."""

    def __init__(self, overlay, *args):
        self.proc = subprocess.Popen([ROS2, "launch", "m2s_stereo", "stereo.launch.py", *map(str, args)],
                                     env=overlay["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match | None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            found = re.search(pattern, self.text)
            if found or self.proc.poll() is not None:
                return found or re.search(pattern, self.text)
            time.sleep(0.05)
        return None

    def node_pid(self) -> int:
        found = self.wait_for(r"\[stereo_node-\d+\]: process started with pid \[(\d+)\]")
        assert found, self.text
        return int(found.group(1))

    def signal_group(self, sig) -> None:
        os.killpg(self.proc.pid, sig)  # what a terminal's Ctrl-C does: the whole foreground group

    def finish(self, timeout: float = 40) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            rc = self.proc.wait()
        self.reader.join(timeout=5)
        return rc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


@pytest.fixture(scope="module")
def quoted_model(stereo_onnx, tmp_path_factory):
    """The test model at a path with a quote and a space in it (PythonExpression once made code of it)."""
    folder = tmp_path_factory.mktemp("models") / "robot's models"
    folder.mkdir()
    shutil.copy(stereo_onnx, folder / stereo_onnx.name)
    return folder / stereo_onnx.name


def _parameters(node_name: str, names: list[str]) -> dict:
    from rclpy.parameter import parameter_value_to_python
    from rclpy.parameter_client import AsyncParameterClient

    listener = Listener(outputs=False, inputs=False)
    try:
        client = AsyncParameterClient(listener.node, node_name)
        assert client.wait_for_services(timeout_sec=20), f"no parameter services of {node_name}"
        future = client.get_parameters(names)
        assert listener.wait(future.done, 20)
        return {n: parameter_value_to_python(v) for n, v in zip(names, future.result().values)}
    finally:
        listener.close()


def _stopped_cleanly(launch: Launch, pid: int, rc: int) -> None:
    assert "Traceback" not in launch.text and "KeyboardInterrupt" not in launch.text, launch.text
    assert "process has died" not in launch.text, launch.text
    assert not _alive(pid), "the node outlived its launch"
    assert rc == 0, (rc, launch.text[-3000:])


def test_params_file_and_launch_arguments(overlay, quoted_model, tmp_path):
    params = tmp_path / "robot.yaml"
    params.write_text("/**:\n  ros__parameters:\n    backend: onnxruntime\n    use_sim_time: true\n    min_depth: 0.25\n")
    launch = Launch(overlay, f"engine_file_path:={quoted_model}", f"params_file:={params}", "namespace:=robot1")
    try:
        pid = launch.node_pid()
        assert launch.wait_for(r"m2s_stereo: onnxruntime runtime"), launch.text
        values = _parameters("/robot1/m2s_stereo", ["backend", "use_sim_time", "min_depth", "model_path"])
        # the params file's backend and use_sim_time are not overridden by launch defaults any more
        assert values == {"backend": "onnxruntime", "use_sim_time": True, "min_depth": 0.25,
                          "model_path": str(quoted_model)}, values
        launch.signal_group(signal.SIGINT)
        _stopped_cleanly(launch, pid, launch.finish())
    finally:
        if launch.proc.poll() is None:
            os.killpg(launch.proc.pid, signal.SIGKILL)
    # given as launch arguments, they win over the params file
    launch = Launch(overlay, f"engine_file_path:={quoted_model}", f"params_file:={params}", "namespace:=robot1",
                    "backend:=auto", "use_sim_time:=false")
    try:
        pid = launch.node_pid()
        values = _parameters("/robot1/m2s_stereo", ["backend", "use_sim_time", "min_depth"])
        assert values == {"backend": "auto", "use_sim_time": False, "min_depth": 0.25}, values
        launch.signal_group(signal.SIGINT)
        _stopped_cleanly(launch, pid, launch.finish())
    finally:
        if launch.proc.poll() is None:
            os.killpg(launch.proc.pid, signal.SIGKILL)


def test_remappings_namespace_outputs_and_the_default_dds_profile(overlay, stereo_onnx):
    from sensor_msgs.msg import CameraInfo, Image
    from stereo_msgs.msg import DisparityImage

    from m2s_stereo.image_codec import array_to_image

    launch = Launch(overlay, f"engine_file_path:={stereo_onnx}", "namespace:=robot2", "left_image_topic:=/cam/left",
                    "right_image_topic:=/cam/right", "left_info_topic:=/cam/left_info", "right_info_topic:=/cam/right_info")
    listener = Listener(outputs=False, inputs=False)
    try:
        pid = launch.node_pid()
        env = _environ(pid)
        assert env.get(PROFILE_VAR) == str(overlay["share"] / "config" / "fastdds_large_images.xml")
        assert launch.wait_for(r"inputs /cam/left / /cam/right"), launch.text  # the node says what it listens to
        got = []
        listener.node.create_subscription(DisparityImage, "/robot2/disparity", got.append, 10)
        from rclpy.qos import qos_profile_sensor_data

        pubs = {t: listener.node.create_publisher(m, t, qos_profile_sensor_data) for t, m in (
            ("/cam/left", Image), ("/cam/right", Image), ("/cam/left_info", CameraInfo), ("/cam/right_info", CameraInfo))}
        assert listener.wait(lambda: all(p.get_subscription_count() for p in pubs.values()), 30)
        time.sleep(1.0)
        camera = StereoCamera.ideal(128, 96, focal_px=128.0, baseline_m=0.1)
        left = np.random.default_rng(3).integers(0, 255, (96, 128, 3), np.uint8)
        for i in range(5):
            t = time.time_ns()
            header = Image().header
            header.stamp.sec, header.stamp.nanosec = t // 10**9, t % 10**9
            for side, image in (("left", left), ("right", np.roll(left, -4, axis=1))):
                pubs[f"/cam/{side}_info"].publish(CameraInfo(header=header, **getattr(camera, side).msg_fields()))
                pubs[f"/cam/{side}"].publish(array_to_image(Image, image, "rgb8", header))
            time.sleep(0.3)
        assert listener.wait(lambda: got, 20), launch.text[-2000:]
        launch.signal_group(signal.SIGINT)
        _stopped_cleanly(launch, pid, launch.finish())
    finally:
        listener.close()
        if launch.proc.poll() is None:
            os.killpg(launch.proc.pid, signal.SIGKILL)


def test_dds_profile_given_or_none_and_it_reaches_an_included_camera_launch(overlay, stereo_onnx, tmp_path):
    camera_launch = tmp_path / "camera.launch.py"
    camera_launch.write_text(
        "import sys\nfrom launch import LaunchDescription\nfrom launch.actions import ExecuteProcess\n\n\n"
        "def generate_launch_description():\n"
        f"    code = \"import os; print('CAMERA_PROFILE=' + os.environ.get('{PROFILE_VAR}', 'unset'))\"\n"
        "    return LaunchDescription([ExecuteProcess(cmd=[sys.executable, '-c', code], output='screen')])\n")
    mine = tmp_path / "my_profile.xml"
    shutil.copy(overlay["share"] / "config" / "fastdds_large_images.xml", mine)
    launch = Launch(overlay, f"engine_file_path:={stereo_onnx}", f"dds_profile:={mine}", f"camera_launch:={camera_launch}")
    try:
        pid = launch.node_pid()
        assert _environ(pid).get(PROFILE_VAR) == str(mine)
        assert launch.wait_for(f"CAMERA_PROFILE={re.escape(str(mine))}"), launch.text  # the driver got it too
        assert launch.wait_for(r"m2s_stereo: onnxruntime runtime"), launch.text
        launch.signal_group(signal.SIGINT)
        _stopped_cleanly(launch, pid, launch.finish())
    finally:
        if launch.proc.poll() is None:
            os.killpg(launch.proc.pid, signal.SIGKILL)
    launch = Launch(overlay, f"engine_file_path:={stereo_onnx}", "dds_profile:=none", f"camera_launch:={camera_launch}")
    try:
        pid = launch.node_pid()
        env = _environ(pid)
        assert not any(v in env for v in PROFILE_VARS[:2]) and env.get("M2S_DDS_PROFILE") == "none", env
        assert launch.wait_for(r"CAMERA_PROFILE=unset"), launch.text
        assert launch.wait_for(r"m2s_stereo: onnxruntime runtime"), launch.text
        assert "DDS profile for large images" not in launch.text  # the node did not set it itself either
        launch.signal_group(signal.SIGINT)
        _stopped_cleanly(launch, pid, launch.finish())
    finally:
        if launch.proc.poll() is None:
            os.killpg(launch.proc.pid, signal.SIGKILL)


@pytest.mark.parametrize("stop", ["sigint", "sigint_twice", "sigint_then_sigterm", "sigint_while_starting"])
def test_stopped_as_a_terminal_stops_it(overlay, stereo_onnx, stop):
    launch = Launch(overlay, f"engine_file_path:={stereo_onnx}")
    try:
        pid = launch.node_pid()
        if stop == "sigint_while_starting":  # importing rclpy / the runtime, or loading the model
            time.sleep(0.5)
            assert "m2s_stereo: onnxruntime runtime" not in launch.text, "too late: the node had started"
        else:
            assert launch.wait_for(r"m2s_stereo: onnxruntime runtime"), launch.text
            time.sleep(0.5)
        launch.signal_group(signal.SIGINT)
        if stop == "sigint_twice":  # ros2 launch without a terminal forwards SIGINT again
            time.sleep(0.2)
            launch.signal_group(signal.SIGINT)
        elif stop == "sigint_then_sigterm":  # launch's escalation, to the node
            time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, signal.SIGTERM)
        rc = launch.finish()
        _stopped_cleanly(launch, pid, rc)
        assert re.search(r"process has finished cleanly \[pid " + str(pid), launch.text), launch.text
    finally:
        if launch.proc.poll() is None:
            os.killpg(launch.proc.pid, signal.SIGKILL)


def test_a_node_that_cannot_start_fails_the_launch_with_its_reason(overlay, tmp_path):
    launch = Launch(overlay, f"engine_file_path:={tmp_path / 'missing.onnx'}")
    rc = launch.finish()
    assert rc != 0, launch.text
    assert f"model_path '{tmp_path / 'missing.onnx'}' does not exist" in launch.text
    assert "could not run" in launch.text and "Traceback" not in launch.text
    bad = Launch(overlay, f"engine_file_path:={tmp_path / 'missing.onnx'}", "backend:=cuda")
    assert bad.finish() != 0 and "backend:=cuda: one of auto, onnxruntime, tensorrt, torch" in bad.text, bad.text
