"""What the multi-process ROS tests share: this process's view of the graph (:class:`Listener`) and the
node started as a process of its own (``m2s-stereo-node``), stopped as a terminal stops it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import Log
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from stereo_msgs.msg import DisparityImage

from m2s_stereo.image_codec import array_to_image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
LEVELS = {DiagnosticStatus.OK: "OK", DiagnosticStatus.WARN: "WARN", DiagnosticStatus.ERROR: "ERROR",
          DiagnosticStatus.STALE: "STALE"}


def wait_until(predicate, timeout: float) -> bool:
    """Poll ``predicate`` every 20 ms until it is true (True) or ``timeout`` seconds have passed (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return False


class Listener:
    """This process's view of the graph: /diagnostics, /rosout and (optionally) the node's outputs."""

    def __init__(self, namespace: str = "", outputs: bool = True, inputs: bool = True) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("listener", namespace=namespace or None, context=self.context)
        self.diagnostics: list[tuple[float, str, str, dict[str, float]]] = []
        self.logs: list[Log] = []
        self.outputs: dict[str, list] = {"disparity": [], "depth": [], "depth/camera_info": [], "confidence": [],
                                         "points2": []}
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.node.create_subscription(Log, "/rosout", self.logs.append, 100)
        if outputs:
            for name, t in (("disparity", DisparityImage), ("depth", Image), ("depth/camera_info", CameraInfo),
                            ("confidence", Image), ("points2", PointCloud2)):
                self.node.create_subscription(t, name, self.outputs[name].append, 10)
        self.pubs = {name: self.node.create_publisher(t, name, qos_profile_sensor_data) for name, t in (
            ("left/image_rect", Image), ("right/image_rect", Image), ("left/camera_info", CameraInfo),
            ("right/camera_info", CameraInfo))} if inputs else {}
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for s in msg.status:
            if s.name.startswith("m2s_stereo"):
                values = {kv.key: float(kv.value) for kv in s.values}
                self.diagnostics.append((time.monotonic(), LEVELS[s.level], s.message, values))

    def wait(self, predicate, timeout: float) -> bool:
        return wait_until(predicate, timeout)

    def last(self) -> tuple[float, str, str, dict[str, float]] | None:
        return self.diagnostics[-1] if self.diagnostics else None

    def publish(self, left, right, camera, stamp_ns, right_stamp_ns=None, infos=True):
        for side, image, t in (("left", left, stamp_ns), ("right", right, right_stamp_ns or stamp_ns)):
            header = Image().header
            header.stamp.sec, header.stamp.nanosec = t // 10**9, t % 10**9
            header.frame_id = f"{side}_optical"
            if infos and camera is not None:
                self.pubs[f"{side}/camera_info"].publish(CameraInfo(header=header, **getattr(camera, side).msg_fields()))
            self.pubs[f"{side}/image_rect"].publish(array_to_image(Image, image, "rgb8", header))

    def close(self) -> None:
        self.executor.shutdown()
        self.thread.join(timeout=5.0)  # spin has returned before the node and the context go
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def _node_process(model: Path, *params: str, env: dict | None = None) -> subprocess.Popen:
    args = [sys.executable, "-m", "m2s_stereo.node_main", "--ros-args", "-p", f"model_path:={model}"]
    for p in params:
        args += ["-p", p]
    return subprocess.Popen(args, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return out + err
