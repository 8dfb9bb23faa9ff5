"""The stereo node: rectified left/right images + camera_info in; disparity, depth, points2 out.

Inputs (relative names, remap as needed): ``left/image_rect``, ``right/image_rect``,
``left/camera_info``, ``right/camera_info``. Outputs: ``disparity`` (stereo_msgs/DisparityImage),
``depth`` (32FC1 m, REP 118), ``points2`` (sensor_msgs/PointCloud2), ``/diagnostics``.
Callbacks only pair and hand over: inference runs in a worker thread fed by a one-slot
"latest pair" buffer, so a slow model drops stale pairs (counted) instead of queueing.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from types import SimpleNamespace
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from stereo_msgs.msg import DisparityImage

from calib import CalibrationError, StereoCamera
from m2s_export.runtime import load_runtime
from m2s_stereo import params as P
from m2s_stereo.image_codec import BufferPool, EncodingError, image_to_rgb8
from m2s_stereo.outputs import frame_messages, warm_up
from m2s_stereo.sync import PairSynchronizer, stamp_ns

MSGS = SimpleNamespace(Image=Image, DisparityImage=DisparityImage, PointCloud2=PointCloud2, PointField=PointField)
THROTTLE_S = 2.0


class LatestSlot:
    """One-slot buffer: put() replaces an unconsumed item (counted as dropped); get() waits."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self.dropped = 0
        self.closed = False

    def put(self, item: Any) -> None:
        with self._cond:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._cond.notify()

    def get(self, timeout: float = 0.2) -> Any:
        with self._cond:
            if self._item is None and not self.closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


def _descriptor(p: P.Param) -> ParameterDescriptor:
    d = ParameterDescriptor(description=p.description, read_only=p.read_only)
    if p.choices:
        d.additional_constraints = "one of: " + ", ".join(p.choices)
    if p.range is not None:
        if isinstance(p.default, float):
            d.floating_point_range = [FloatingPointRange(from_value=float(p.range[0]), to_value=float(p.range[1]), step=0.0)]
        elif isinstance(p.default, int) and not isinstance(p.default, bool):
            d.integer_range = [IntegerRange(from_value=int(p.range[0]), to_value=int(p.range[1]), step=1)]
    return d


class StereoNode(Node):
    def __init__(self, runtime: Any = None, **kwargs: Any) -> None:
        super().__init__("m2s_stereo", **kwargs)
        for p in P.PARAMS:
            self.declare_parameter(p.name, p.default, _descriptor(p))
        self.values = {p.name: self.get_parameter(p.name).value for p in P.PARAMS}
        problems = P.validate_all(self.values) if runtime is None else [
            r for r in P.validate_all(self.values) if not r.startswith(P.MODEL_PATH)]
        if problems:
            raise ValueError("invalid parameters: " + "; ".join(problems))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.runtime = runtime or load_runtime(self.values[P.MODEL_PATH])
        self.max_disparity = float(getattr(self.runtime, "meta", {}).get("max_disp", 192))

        qos = qos_profile_sensor_data if self.values[P.QOS] == "sensor_data" else QoSProfile(
            depth=self.values[P.QUEUE_SIZE], reliability=ReliabilityPolicy.RELIABLE)
        self.infos: dict[str, CameraInfo | None] = {"left": None, "right": None}
        self.create_subscription(CameraInfo, "left/camera_info", lambda m: self.infos.__setitem__("left", m), qos)
        self.create_subscription(CameraInfo, "right/camera_info", lambda m: self.infos.__setitem__("right", m), qos)
        slop = self.values[P.SLOP] if self.values[P.SYNC_MODE] == "approximate" else None
        self.sync_backend = "m2s"
        try:
            import message_filters

            left = message_filters.Subscriber(self, Image, "left/image_rect", qos_profile=qos)
            right = message_filters.Subscriber(self, Image, "right/image_rect", qos_profile=qos)
            if slop is None:
                self._mf = message_filters.TimeSynchronizer([left, right], self.values[P.QUEUE_SIZE])
            else:
                self._mf = message_filters.ApproximateTimeSynchronizer([left, right], self.values[P.QUEUE_SIZE], slop)
            self._mf.registerCallback(self._on_pair)
            self.sync_backend = "message_filters"
            self.sync = None
        except ImportError:
            self.sync = PairSynchronizer(self._on_pair, self.values[P.QUEUE_SIZE], slop)
            self.create_subscription(Image, "left/image_rect", self.sync.add_left, qos)
            self.create_subscription(Image, "right/image_rect", self.sync.add_right, qos)

        self.pub_disp = self.create_publisher(DisparityImage, "disparity", 5)
        self.pub_depth = self.create_publisher(Image, "depth", 5)
        self.pub_points = self.create_publisher(PointCloud2, "points2", 5)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        self.slot = LatestSlot()
        self.buffers = BufferPool()  # output buffers, refilled each frame (only the worker publishes)
        self.counts = {"pairs_in": 0, "published": 0, "bad_frames": 0}
        self.recent_in: deque[float] = deque(maxlen=200)
        self.recent_out: deque[float] = deque(maxlen=200)
        self.infer_ms: deque[float] = deque(maxlen=200)
        self.latency_ms: deque[float] = deque(maxlen=200)
        self._last_error: dict[str, float] = {}
        self._camera_key: Any = None
        self._camera: StereoCamera | None = None
        self.output_backend = warm_up(MSGS)  # compile/load the output pass now, not on the first frame
        self._stop = threading.Event()
        self.worker = threading.Thread(target=self._work, name="m2s_stereo_worker", daemon=True)
        self.worker.start()
        self.create_timer(self.values[P.DIAGNOSTICS_PERIOD], self._diagnostics)
        self.get_logger().info(f"m2s_stereo: {getattr(self.runtime, 'backend', '?')} runtime, input "
                               f"{getattr(self.runtime, 'input_size', None)}, sync {self.values[P.SYNC_MODE]} via "
                               f"{self.sync_backend}, outputs via {self.output_backend}")

    # -- parameters -----------------------------------------------------------------------------
    def _on_set_parameters(self, changes: list[Any]) -> SetParametersResult:
        new = dict(self.values)
        for change in changes:
            if change.name in P.BY_NAME and P.BY_NAME[change.name].read_only:
                return SetParametersResult(successful=False, reason=f"{change.name} is read-only: restart the node to change it")
            new[change.name] = change.value
            if (reason := P.validate(change.name, change.value)) is not None:
                return SetParametersResult(successful=False, reason=reason)
        if new[P.MIN_DEPTH] >= new[P.MAX_DEPTH]:
            return SetParametersResult(successful=False, reason=f"{P.MIN_DEPTH} must be below {P.MAX_DEPTH}")
        self.values = new
        return SetParametersResult(successful=True)

    # -- input ------------------------------------------------------------------------------------
    def _on_pair(self, left: Image, right: Image) -> None:
        now = time.monotonic()
        self.counts["pairs_in"] += 1
        self.recent_in.append(now)
        self.slot.put((left, right, self.infos["left"], self.infos["right"], now))

    def _camera_for(self, left_info: CameraInfo | None, right_info: CameraInfo | None) -> StereoCamera:
        if left_info is None or right_info is None:
            missing = [s for s, i in (("left", left_info), ("right", right_info)) if i is None]
            raise CalibrationError(f"no camera_info received yet on {' and '.join(m + '/camera_info' for m in missing)}")
        key = (bytes(np.asarray(left_info.p).tobytes()), bytes(np.asarray(right_info.p).tobytes()),
               left_info.width, left_info.height, right_info.width, right_info.height)
        if key != self._camera_key:
            self._camera = StereoCamera.from_msgs(left_info, right_info)
            self._camera_key = key
        return self._camera

    # -- worker -------------------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            item = self.slot.get()
            if item is None:
                continue
            try:
                self._process(*item)
            except (EncodingError, CalibrationError, ValueError) as exc:
                self.counts["bad_frames"] += 1
                self._throttled_error(f"dropping frame: {exc}")
            except Exception as exc:  # noqa: BLE001  (keep serving: log and continue)
                self.counts["bad_frames"] += 1
                self._throttled_error(f"inference failed: {type(exc).__name__}: {exc}")

    def _throttled_error(self, message: str) -> None:
        """At most one log line per kind of problem (its first words) every THROTTLE_S seconds,
        so a persistent fault does not flood the log and does not hide a different one."""
        key = " ".join(message.split()[:5])
        now = time.monotonic()
        if now - self._last_error.get(key, -1e9) >= THROTTLE_S:
            self._last_error[key] = now
            self.get_logger().error(message)

    def _process(self, left_msg: Image, right_msg: Image, left_info: Any, right_info: Any, received: float) -> None:
        want_disp = self.values[P.PUBLISH_DISPARITY] and self.pub_disp.get_subscription_count() > 0
        want_depth = self.values[P.PUBLISH_DEPTH] and self.pub_depth.get_subscription_count() > 0
        want_points = self.values[P.PUBLISH_POINTS] and self.pub_points.get_subscription_count() > 0
        if not (want_disp or want_depth or want_points):
            return  # nobody listens: skip the work
        if (left_msg.width, left_msg.height) != (right_msg.width, right_msg.height):
            raise ValueError(f"left image is {left_msg.width}x{left_msg.height} but right is {right_msg.width}x{right_msg.height}")
        camera = self._camera_for(left_info, right_info)
        camera.check_image_size(left_msg.width, left_msg.height)
        left = image_to_rgb8(left_msg)
        right = image_to_rgb8(right_msg)
        t0 = time.perf_counter()
        disparity = self.runtime.infer(left, right)
        self.infer_ms.append((time.perf_counter() - t0) * 1e3)
        v = self.values
        scale = left.shape[1] / (self.runtime.input_size[1] if getattr(self.runtime, "input_size", None) else left.shape[1])
        out = frame_messages(MSGS, camera, disparity, left_msg.header, disparity_out=want_disp, depth_out=want_depth,
                             points_out=want_points, colors=left if v[P.POINT_COLORS] else None,
                             organized=v[P.POINTS_ORGANIZED], stride=v[P.POINT_STRIDE], min_depth=v[P.MIN_DEPTH],
                             max_depth=v[P.MAX_DEPTH], max_disparity=self.max_disparity * scale, pool=self.buffers)
        for pub, msg in ((self.pub_disp, out.disparity), (self.pub_depth, out.depth), (self.pub_points, out.points)):
            if msg is not None:
                pub.publish(msg)
        self.counts["published"] += 1
        self.recent_out.append(time.monotonic())
        now_ns = self.get_clock().now().nanoseconds
        self.latency_ms.append((now_ns - stamp_ns(left_msg)) / 1e6)

    # -- diagnostics -----------------------------------------------------------------------------
    def stats(self) -> dict[str, float]:
        def rate(ts: deque) -> float:
            return (len(ts) - 1) / (ts[-1] - ts[0]) if len(ts) > 1 and ts[-1] > ts[0] else 0.0

        def med(ts: deque) -> float:
            return float(np.median(ts)) if ts else float("nan")

        out = {"input_fps": rate(self.recent_in), "output_fps": rate(self.recent_out), "inference_ms": med(self.infer_ms),
               "latency_ms": med(self.latency_ms), "dropped_pairs": float(self.slot.dropped), **{k: float(v) for k, v in self.counts.items()}}
        if self.sync is not None:
            out["out_of_order"] = float(self.sync.out_of_order)
        return out

    def _diagnostics(self) -> None:
        s = self.stats()
        status = DiagnosticStatus(name="m2s_stereo: pipeline", hardware_id=str(getattr(self.runtime, "backend", "")))
        status.level = DiagnosticStatus.OK if s["bad_frames"] == 0 else DiagnosticStatus.WARN
        status.message = "ok" if status.level == DiagnosticStatus.OK else f"{int(s['bad_frames'])} bad frames"
        status.values = [KeyValue(key=k, value=f"{v:.3f}") for k, v in s.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(msg)
        if self.counts["pairs_in"]:
            self.get_logger().info(
                f"in {s['input_fps']:.1f} fps, out {s['output_fps']:.1f} fps, inference {s['inference_ms']:.1f} ms, "
                f"latency {s['latency_ms']:.1f} ms, dropped {int(s['dropped_pairs'])}, bad {int(s['bad_frames'])}",
                throttle_duration_sec=max(self.values[P.DIAGNOSTICS_PERIOD], 5.0))

    def destroy_node(self) -> None:
        if hasattr(self, "worker"):  # absent when __init__ failed part-way
            self._stop.set()
            self.slot.close()
            self.worker.join(timeout=5.0)
        super().destroy_node()


def main(argv: list[str] | None = None) -> int:
    rclpy.init(args=argv if argv is not None else sys.argv)
    try:
        node = StereoNode()
    except (ValueError, CalibrationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    except Exception as exc:  # noqa: BLE001  (runtime load errors: one line, no traceback)
        print(f"error: cannot start m2s_stereo: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
