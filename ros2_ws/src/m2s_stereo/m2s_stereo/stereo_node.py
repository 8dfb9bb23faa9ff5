"""The stereo node: rectified left/right images + camera_info in; disparity, depth, points2 out.

Inputs (relative names, remap as needed): ``left/image_rect``, ``right/image_rect``,
``left/camera_info``, ``right/camera_info``. Outputs: ``disparity`` (stereo_msgs/DisparityImage),
``confidence`` (32FC1 in [0, 1], the disparity's header), ``depth`` (32FC1 m, REP 118; -Inf/+Inf
outside [min_depth, max_depth], REP 117) with ``depth/camera_info``, ``points2``
(sensor_msgs/PointCloud2), ``/diagnostics``. Pixels below ``confidence_threshold`` (and, with
``lr_check``, those the right view does not confirm) are invalid in every output; an optional
temporal filter smooths the stream (:mod:`m2s_stereo.postprocess`).
Callbacks only count, pair and hand over: inference runs in a worker thread fed by a one-slot
"latest pair" buffer, so a slow model drops stale pairs (counted) instead of queueing. The
diagnostics are computed over the last ``diagnostics_window`` seconds (:mod:`m2s_stereo.health`).
"""

from __future__ import annotations

import re
import sys
import threading
import time
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
from calib.ros_image import ENCODINGS, EncodingError, image_problem, image_to_rgb8
from m2s_export.runtime import load_runtime
from m2s_stereo import params as P
from m2s_stereo.dds import (
    ignored_profile_variable,
    make_room_for_shm,
    profile_in_use,
    profile_variables,
    shm_problem,
    shm_report,
)
from m2s_stereo.health import ERROR, OK, STALE, WARN, PipelineHealth, Status
from m2s_stereo.image_codec import BufferPool
from m2s_stereo.outputs import float_image, frame_messages, warm_up
from m2s_stereo.postprocess import FramePostprocess, disparity_scale
from m2s_stereo.sync import PairOrder, PairSynchronizer, StampHistory, mf_slop, stamp_ns

MSGS = SimpleNamespace(Image=Image, DisparityImage=DisparityImage, PointCloud2=PointCloud2, PointField=PointField)
THROTTLE_S = 2.0
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")  # "no input for 3.2 s" and "... 4.1 s" are one kind of problem
CLOCK_AGREEMENT_S = 10.0  # stamps within this of the node's clock are on the same clock: stamp latency is meaningful
LEVELS = {OK: DiagnosticStatus.OK, WARN: DiagnosticStatus.WARN, ERROR: DiagnosticStatus.ERROR, STALE: DiagnosticStatus.STALE}


class LatestSlot:
    """One-slot buffer: put() replaces an unconsumed item (counted as dropped); get() waits."""

    def __init__(self, on_drop: Any = None) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self.dropped = 0
        self.closed = False
        self.on_drop = on_drop

    def put(self, item: Any) -> None:
        with self._cond:
            if self._item is not None:
                self.dropped += 1
                if self.on_drop is not None:
                    self.on_drop()
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


def _image_problem(msg: Image, topic: str) -> str | None:
    """Why an input image cannot be used, checked without decoding it (None when it can)."""
    if msg.encoding not in ENCODINGS:
        return f"unsupported image encoding '{msg.encoding}' on {topic}; supported: {', '.join(ENCODINGS)}"
    problem = image_problem(msg)
    return None if problem is None else f"image on {topic}: {problem}"


class StereoNode(Node):
    def __init__(self, runtime: Any = None, **kwargs: Any) -> None:
        super().__init__("m2s_stereo", **kwargs)
        for p in P.PARAMS:
            self.declare_parameter(p.name, p.default, _descriptor(p))
        self.values = {p.name: self.get_parameter(p.name).value for p in P.PARAMS}
        problems = P.validate_all(self.values) if runtime is None else [
            r for r in P.validate_all(self.values) if not r.startswith(P.MODEL_PATH) and not r.startswith(P.BACKEND)]
        if problems:
            raise ValueError("invalid parameters: " + "; ".join(problems))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        loaded_here = runtime is None
        if runtime is None:
            extra = {"execution": self.values[P.ONNX_EXECUTION]} if self.values[P.MODEL_PATH].endswith(".onnx") else {}
            runtime = load_runtime(self.values[P.MODEL_PATH], backend=self.values[P.BACKEND], **extra)
        self.runtime = runtime
        self.max_disparity = float(getattr(self.runtime, "meta", {}).get("max_disp", 192))
        self.health = PipelineHealth(window=self.values[P.DIAGNOSTICS_WINDOW])
        self._last_error: dict[str, float] = {}

        self.infos: dict[str, CameraInfo | None] = {"left": None, "right": None}
        self.topics = {name: self._resolve(name) for name in
                       ("left/image_rect", "right/image_rect", "left/camera_info", "right/camera_info")}
        self._last_stamp = {"left": None, "right": None}
        self._newest = {"left": None, "right": None}  # the newest stamp seen per side (time going back: a reset)
        self._seen = {"left": StampHistory(), "right": StampHistory()}  # stamps each side had: time that loops
        self.order = PairOrder()  # pairs leave in stamp order on both synchronisation paths
        self.time_resets = 0  # times the input stamps went back (bag loop, driver restart, sim-time reset)
        self._reset_filter = threading.Event()  # the worker resets the temporal filter before its next frame
        self._input_subs: list[Any] = []
        self.sync: PairSynchronizer | None = None
        self.sync_backend = "m2s"
        # ready before subscribing: a publisher that starts when the subscription matches (a bag replay, a camera)
        # must not meet a node still compiling its output pass (seconds with a cold numba cache, e.g. the first
        # start after an install) or running the runtime's first, slow inference: those frames would be dropped
        self.output_backend = warm_up(MSGS)
        if loaded_here and hasattr(self.runtime, "warmup"):
            self.runtime.warmup(runs=1)
        reliable = QoSProfile(depth=self.values[P.QUEUE_SIZE], reliability=ReliabilityPolicy.RELIABLE)
        self.input_qos = reliable if self.values[P.QOS] == "reliable" else qos_profile_sensor_data
        self._subscribe_inputs(self.input_qos)
        if self.values[P.QOS] == "auto":  # best effort matches every publisher; reliable once they all are
            self.create_timer(1.0, self._match_publisher_qos)

        self.pub_disp = self.create_publisher(DisparityImage, "disparity", 5)
        self.pub_conf = self.create_publisher(Image, "confidence", 5)
        self.pub_depth = self.create_publisher(Image, "depth", 5)
        self.pub_depth_info = self.create_publisher(CameraInfo, "depth/camera_info", 5)
        self.pub_points = self.create_publisher(PointCloud2, "points2", 5)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        self.slot = LatestSlot(on_drop=lambda: self.health.add("dropped"))
        self.buffers = BufferPool()  # output buffers, refilled each frame (only the worker publishes)
        self.infer_ms = self.health.samples["inference_ms"]  # (time, ms) of the recent frames
        self._camera_key: Any = None
        self._camera: StereoCamera | None = None
        self._bad_info_logged: set[str] = set()
        self.postprocess = FramePostprocess(self.values)
        self.has_confidence = bool(getattr(self.runtime, "has_confidence", True))
        if not self.has_confidence:
            self.get_logger().warning(
                "the model has no confidence output (exported before models had one): 'confidence' is not published "
                f"and {P.CONFIDENCE_THRESHOLD} is not applied; re-export it with m2s-export to get both")
        self._watch_shm = profile_in_use()
        self._stop = threading.Event()
        self._publishing = threading.Lock()  # a frame's messages go out together, or not at all
        self.worker = threading.Thread(target=self._work, name="m2s_stereo_worker", daemon=True)
        self.worker.start()
        self.create_timer(self.values[P.DIAGNOSTICS_PERIOD], self._diagnostics)
        self.get_logger().info(f"m2s_stereo: {getattr(self.runtime, 'backend', '?')} runtime, input "
                               f"{getattr(self.runtime, 'input_size', None)}, sync {self.values[P.SYNC_MODE]} via "
                               f"{self.sync_backend}, outputs via {self.output_backend}, inputs "
                               f"{self.topics['left/image_rect']} / {self.topics['right/image_rect']}")

    def _subscribe_inputs(self, qos: QoSProfile) -> None:
        """(Re)create the input subscriptions and the pairing with ``qos``."""
        for sub in self._input_subs:
            self.destroy_subscription(sub)
        self._input_subs = [self.create_subscription(CameraInfo, f"{side}/camera_info",
                                                     lambda m, s=side: self._on_info(s, m), qos)
                            for side in ("left", "right")]
        slop = self.values[P.SLOP] if self.values[P.SYNC_MODE] == "approximate" else None
        try:
            import message_filters

            left = message_filters.Subscriber(self, Image, "left/image_rect", qos_profile=qos)
            right = message_filters.Subscriber(self, Image, "right/image_rect", qos_profile=qos)
            left.registerCallback(lambda m: self._on_image("left", m))
            right.registerCallback(lambda m: self._on_image("right", m))
            if slop is None:
                self._mf = message_filters.TimeSynchronizer([left, right], queue_size=self.values[P.QUEUE_SIZE])
            else:  # it pairs strictly closer than slop; the node's own synchroniser up to slop inclusive
                self._mf = message_filters.ApproximateTimeSynchronizer([left, right], queue_size=self.values[P.QUEUE_SIZE],
                                                                       slop=mf_slop(slop))
            self._mf.registerCallback(self._on_pair)
            self._input_subs += [left.sub, right.sub]
            self.sync_backend = "message_filters"
            self.sync = None
        except ImportError:
            self.sync = PairSynchronizer(self._on_pair, self.values[P.QUEUE_SIZE], slop)

            def feed(side: str, add: Any) -> Any:
                def callback(msg: Image) -> None:
                    self._on_image(side, msg)
                    add(msg)
                return callback

            self._input_subs += [self.create_subscription(Image, "left/image_rect", feed("left", self.sync.add_left), qos),
                                 self.create_subscription(Image, "right/image_rect", feed("right", self.sync.add_right), qos)]

    def _match_publisher_qos(self) -> None:
        """qos auto (every second): subscribe reliable while every publisher of the image topics is
        reliable (as rviz does: a reliable writer's lost fragments are then resent; without the large-image
        profile Jazzy's Fast DDS 2.14 delivered about half of them to a best-effort reader), best effort as soon
        as one is not (a reliable reader cannot hear it)."""
        infos = [i for name in ("left/image_rect", "right/image_rect")
                 for i in self.get_publishers_info_by_topic(self.topics[name])]
        if not infos:
            return
        want = ReliabilityPolicy.RELIABLE if all(
            i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos) else ReliabilityPolicy.BEST_EFFORT
        if want == self.input_qos.reliability:
            return
        self.input_qos = (QoSProfile(depth=self.values[P.QUEUE_SIZE], reliability=want)
                          if want == ReliabilityPolicy.RELIABLE else qos_profile_sensor_data)
        self._subscribe_inputs(self.input_qos)
        self.get_logger().info(f"qos auto: the image publishers are {'all reliable' if want == ReliabilityPolicy.RELIABLE else 'not all reliable'}: subscribing {'reliable' if want == ReliabilityPolicy.RELIABLE else 'best effort'}")

    def _resolve(self, name: str) -> str:
        """The topic a relative name resolves to here (namespace and remappings applied)."""
        try:
            return self.resolve_topic_name(name)
        except Exception:  # noqa: BLE001  (older rclpy: fall back to the namespace)
            ns = self.get_namespace().rstrip("/")
            return f"{ns}/{name}"

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
        if hasattr(self, "postprocess"):  # absent while __init__ declares the parameters
            self.postprocess.update(new)
        return SetParametersResult(successful=True)

    # -- input ------------------------------------------------------------------------------------
    def _on_info(self, side: str, msg: CameraInfo) -> None:
        self.health.add(f"{side}_info")
        self.infos[side] = msg

    def _on_image(self, side: str, msg: Image) -> None:
        """Every image, paired or not: counted, and its stamp offset to the other side's last one kept
        (what tells two free-running cameras apart from a pairing that works). A stamp older than this
        side's newest by more than JUMP_BACK_NS, or one this side already had (a short recording played in a
        loop), means time was reset: pairing starts over."""
        self.health.add(side)
        t = stamp_ns(msg)
        newest = self._newest[side]
        if newest is not None and t <= newest and self._seen[side].went_back(t, newest):
            self._time_went_back(side, (newest - t) / 1e9)
        self._seen[side].add(t)
        self._newest[side] = t if self._newest[side] is None else max(t, self._newest[side])
        self._last_stamp[side] = t
        other = self._last_stamp["right" if side == "left" else "left"]
        if other is not None:
            self.health.sample("stamp_offset_ms", abs(t - other) / 1e6)

    def _time_went_back(self, side: str, seconds: float) -> None:
        """Stamps jumped back (a bag played in a loop, a driver restart, a sim-time reset): forget the
        pairing state, the order of pairs, the stamp offsets and the temporal filter, warn, carry on."""
        self._newest = {"left": None, "right": None}
        self._last_stamp = {"left": None, "right": None}
        for seen in self._seen.values():
            seen.clear()
        self.time_resets += 1
        if self.sync is not None:
            self.sync.reset()
        elif getattr(self, "_mf", None) is not None:  # message_filters would keep stale newer messages queued
            with self._mf.lock:
                for queue in self._mf.queues:
                    queue.clear()
        self.order.reset()
        self.health.forget("stamp_offset_ms")
        self._reset_filter.set()
        self._throttled("warning", f"input stamps on {self.topics[f'{side}/image_rect']} went back by {seconds:.1f} s "
                                   "(a bag played in a loop, a driver restart or a sim-time reset): pairing starts over")

    def _on_pair(self, left: Image, right: Image) -> None:
        verdict = self.order.check(max(stamp_ns(left), stamp_ns(right)))
        if verdict == "old":  # message_filters' TimeSynchronizer can emit an older pair after a newer one
            self.health.add("out_of_order")
            self._throttled("warning", "dropped a stereo pair older than the last one published (out of order): "
                                       "the driver delivers late or reordered images")
            return
        self.health.add("pairs")
        self.slot.put((left, right, self.infos["left"], self.infos["right"], time.monotonic()))

    def _camera_for(self, left_info: CameraInfo | None, right_info: CameraInfo | None) -> StereoCamera:
        if left_info is None or right_info is None:
            missing = [self.topics[f"{s}/camera_info"] for s, i in (("left", left_info), ("right", right_info)) if i is None]
            raise CalibrationError(f"no camera_info received yet on {' and '.join(missing)}")
        key = (bytes(np.asarray(left_info.p).tobytes()), bytes(np.asarray(right_info.p).tobytes()),
               left_info.width, left_info.height, right_info.width, right_info.height,
               left_info.binning_x, left_info.binning_y, left_info.roi.x_offset, left_info.roi.y_offset,
               left_info.roi.width, left_info.roi.height)
        if key != self._camera_key:
            try:
                self._camera = StereoCamera.from_msgs(left_info, right_info, float(self.values[P.BASELINE]) or None)
            except CalibrationError as exc:
                self._camera_key = None
                raise CalibrationError(f"camera_info on {self.topics['left/camera_info']} / "
                                       f"{self.topics['right/camera_info']}: {exc}") from None
            self._camera_key = key
            self._announce_range(self._camera)
        return self._camera

    def measurable_range(self, camera: StereoCamera) -> tuple[float, float]:
        """(nearest, farthest) depth in m this model can give on ``camera``: f B / its maximum disparity in
        the camera's pixels (the exported width's, scaled), and the max_depth parameter."""
        max_disp = self.max_disparity * disparity_scale(self.runtime, camera.left.width)
        return camera.focal_px * camera.baseline_m / max_disp, float(self.values[P.MAX_DEPTH])

    def _announce_range(self, camera: StereoCamera) -> None:
        """Say once per camera what depths the model can measure on it, and warn when min_depth asks for more
        (anything nearer comes out wrong: too far, or missing)."""
        near, far = self.measurable_range(camera)
        text = (f"on this camera ({camera.left.width}x{camera.left.height}, f B = "
                f"{camera.focal_px * camera.baseline_m:.4g} px m) the model measures depth from {near:.3g} m (its maximum "
                f"disparity) to {far:g} m (max_depth)")
        configured = self.values[P.MIN_DEPTH] != P.BY_NAME[P.MIN_DEPTH].default  # the default asks for nothing
        if configured and float(self.values[P.MIN_DEPTH]) < near:
            self.get_logger().warning(f"{text}; min_depth {self.values[P.MIN_DEPTH]:g} m asks for nearer: a surface "
                                      f"nearer than {near:.3g} m comes out too far or missing (a model with a larger "
                                      "max disparity, or a larger export size, measures nearer)")
        else:
            self.get_logger().info(text)

    # -- worker -------------------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            item = self.slot.get()
            if item is None:
                continue
            if self._reset_filter.is_set():  # time went back: the filtered state belongs to another sequence
                self._reset_filter.clear()
                self.postprocess.reset()
            try:
                self._process(*item)
            except (EncodingError, CalibrationError, ValueError) as exc:
                if self._stopping():
                    return
                self.health.error(str(exc))
                self._throttled("error", f"dropping frame: {exc}")
            except Exception as exc:  # noqa: BLE001  (keep serving: log and continue)
                if self._stopping():
                    return  # publish() after shutdown: "publisher's context is invalid" is not a fault
                self.health.error(f"{type(exc).__name__}: {exc}")
                self._throttled("error", f"inference failed: {type(exc).__name__}: {exc}")

    def _stopping(self) -> bool:
        return self._stop.is_set() or not self.context.ok()

    def _throttled(self, level: str, message: str) -> None:
        """At most one log line per kind of problem (its text with the numbers left out) every THROTTLE_S
        seconds, so a persistent fault does not flood the log and does not hide a different one."""
        key = _NUMBER.sub("#", message)
        now = time.monotonic()
        if now - self._last_error.get(key, -1e9) >= THROTTLE_S:
            self._last_error[key] = now
            # one call site per severity: rclpy refuses a call site that changes its severity
            if level == "error":
                self.get_logger().error(message)
            else:
                self.get_logger().warning(message)

    def _process(self, left_msg: Image, right_msg: Image, left_info: Any, right_info: Any, received: float) -> None:
        self.health.sample("queue_ms", (time.monotonic() - received) * 1e3)  # how stale the pair is when taken
        # input checks first, whether anybody listens or not: a broken input is reported at once
        for msg, topic in ((left_msg, self.topics["left/image_rect"]), (right_msg, self.topics["right/image_rect"])):
            if (problem := _image_problem(msg, topic)) is not None:
                raise EncodingError(problem)
        if (left_msg.width, left_msg.height) != (right_msg.width, right_msg.height):
            raise ValueError(f"left image is {left_msg.width}x{left_msg.height} but right is {right_msg.width}x{right_msg.height}")
        camera = self._camera_for(left_info, right_info)
        camera.check_image_size(left_msg.width, left_msg.height)
        want_disp = self.values[P.PUBLISH_DISPARITY] and self.pub_disp.get_subscription_count() > 0
        want_depth = self.values[P.PUBLISH_DEPTH] and (self.pub_depth.get_subscription_count() > 0
                                                       or self.pub_depth_info.get_subscription_count() > 0)
        want_points = self.values[P.PUBLISH_POINTS] and self.pub_points.get_subscription_count() > 0
        want_conf = (self.values[P.PUBLISH_CONFIDENCE] and self.has_confidence
                     and self.pub_conf.get_subscription_count() > 0)
        if not (want_disp or want_depth or want_points or want_conf):
            return  # nobody listens: skip the work (the temporal filter's state then waits too)
        v = self.values
        left = image_to_rgb8(left_msg, v[P.MONO16_MAX])
        right = image_to_rgb8(right_msg, v[P.MONO16_MAX])
        t0 = time.perf_counter()
        frame = self.postprocess(self.runtime, left, right)
        self.health.sample("inference_ms", (time.perf_counter() - t0) * 1e3)
        self.health.sample("masked_confidence_pct", 100.0 * frame.masked_confidence / frame.disparity.size)
        if v[P.LR_CHECK]:
            self.health.sample("masked_lr_pct", 100.0 * frame.masked_lr / frame.disparity.size)
        disparity = frame.disparity
        scale = disparity_scale(self.runtime, left.shape[1])
        outgoing = []  # the frame's messages, published together (never half a frame, see destroy_node)
        if want_conf and frame.confidence is not None:
            data, view = self.buffers.take("confidence", frame.confidence.size * 4)
            np.copyto(view.view(np.float32).reshape(frame.confidence.shape), frame.confidence)
            outgoing.append((self.pub_conf, float_image(Image, data, *frame.confidence.shape, left_msg.header)))
        out = frame_messages(MSGS, camera, disparity, left_msg.header, disparity_out=want_disp, depth_out=want_depth,
                             points_out=want_points, colors=left if v[P.POINT_COLORS] else None,
                             organized=v[P.POINTS_ORGANIZED], stride=v[P.POINT_STRIDE], min_depth=v[P.MIN_DEPTH],
                             max_depth=v[P.MAX_DEPTH], max_disparity=self.max_disparity * scale, pool=self.buffers)
        outgoing += [(pub, msg) for pub, msg in ((self.pub_disp, out.disparity), (self.pub_depth, out.depth),
                                                 (self.pub_points, out.points)) if msg is not None]
        if out.depth is not None and left_info is not None:
            info = CameraInfo()
            info.header = left_msg.header
            for name in ("height", "width", "distortion_model", "d", "k", "r", "p", "binning_x", "binning_y", "roi"):
                setattr(info, name, getattr(left_info, name))
            outgoing.append((self.pub_depth_info, info))
        with self._publishing:
            if self._stop.is_set():
                return  # shutting down: this frame is not published at all
            for pub, msg in outgoing:
                pub.publish(msg)
        self.health.add("published")
        self.health.sample("latency_ms", (time.monotonic() - received) * 1e3)
        age = (self.get_clock().now().nanoseconds - stamp_ns(left_msg)) / 1e9
        if 0.0 <= age < CLOCK_AGREEMENT_S:  # a stamp on the node's clock; else (a camera's own counter) meaningless
            self.health.sample("stamp_latency_ms", age * 1e3)

    # -- diagnostics -----------------------------------------------------------------------------
    def stats(self) -> dict[str, float]:
        """Totals since start and rates/medians over the diagnostics window (also what /diagnostics says)."""
        h = self.health
        out = {"input_fps": h.rate("pairs"), "output_fps": h.rate("published"), "inference_ms": h.median("inference_ms"),
               "latency_ms": h.median("latency_ms"), "stamp_latency_ms": h.median("stamp_latency_ms"),
               "stamp_offset_ms": h.median("stamp_offset_ms"), "pairs_in": float(h.totals["pairs"]),
               "published": float(h.totals["published"]), "bad_frames": float(h.totals["bad"]),
               "dropped_pairs": float(h.totals["dropped"])}
        for side in ("left", "right"):
            out[f"{side}_in"] = float(h.totals[side])
            out[f"{side}_info_in"] = float(h.totals[f"{side}_info"])
        out["unmatched"] = max(0.0, out["left_in"] + out["right_in"] - 2 * out["pairs_in"])
        out["out_of_order"] = float(h.totals["out_of_order"] + (self.sync.out_of_order if self.sync is not None else 0))
        out["time_resets"] = float(self.time_resets + self.order.resets)
        return out

    def status(self) -> Any:
        return self.health.status(stale_timeout=self.values[P.STALE_TIMEOUT],
                                  inputs=f"{self.topics['left/image_rect']} and {self.topics['right/image_rect']}")

    def _diagnostics(self) -> None:
        status = self.status()
        values = {**status.values, **self.stats()}
        if self._watch_shm:  # large images are lost without room for the shared-memory segments
            report = shm_report()
            if report is not None:
                values["shm_free_mib"] = report.free_mib
                values["shm_dead_segments"] = float(report.zombie_segments)
                problem = shm_problem(report)
                if problem and status.level in (OK, STALE):
                    status = Status(WARN, problem, status.values)
        for side in ("left", "right"):  # how old the camera_info in use is, against its image
            info, stamp = self.infos[side], self._last_stamp[side]
            if info is not None and stamp is not None:
                values[f"{side}_camera_info_age_s"] = (stamp - stamp_ns(info)) / 1e9
        msg = DiagnosticArray(status=[DiagnosticStatus(
            name="m2s_stereo: pipeline", hardware_id=str(getattr(self.runtime, "backend", "")),
            level=LEVELS[status.level],
            message=status.message, values=[KeyValue(key=k, value=f"{v:.3f}") for k, v in sorted(values.items())])])
        msg.header.stamp = self.get_clock().now().to_msg()
        try:
            self.pub_diag.publish(msg)
        except Exception:  # noqa: BLE001  (the context is going down)
            if self._stopping():
                return
            raise
        if status.level == WARN:
            self._throttled("warning", status.message)
        elif status.level == ERROR:
            self._throttled("error", status.message)
        elif status.level == OK and self.health.totals["pairs"]:
            s = self.stats()
            self.get_logger().info(
                f"in {s['input_fps']:.1f} fps, out {s['output_fps']:.1f} fps, inference {s['inference_ms']:.1f} ms, "
                f"latency {s['latency_ms']:.1f} ms, dropped {int(s['dropped_pairs'])}, bad {int(s['bad_frames'])}",
                throttle_duration_sec=max(self.values[P.DIAGNOSTICS_PERIOD], 5.0))
        elif status.level == STALE and self.health.totals["pairs"]:
            self._throttled("warning", status.message)

    def destroy_node(self) -> None:
        if hasattr(self, "worker"):  # absent when __init__ failed part-way
            with self._publishing:  # waits for a frame being published; the worker publishes none after this
                self._stop.set()
            self.slot.close()
            self.worker.join(timeout=5.0)  # an inference still running is abandoned: it publishes nothing
        super().destroy_node()


def main(argv: list[str] | None = None, stop: threading.Event | None = None) -> int:
    """Run the node until SIGINT or SIGTERM, then stop cleanly: exit 0, no traceback, nothing published half.

    The signals are this function's, not rclpy's: the first one (Ctrl-C, ``ros2 launch``'s SIGINT, a
    SIGTERM) asks to stop; later ones (``ros2 launch`` without a terminal forwards SIGINT again, then
    escalates to SIGTERM) are ignored while the node shuts down, instead of raising KeyboardInterrupt
    inside the clean-up. A signal while the model loads stops the node as soon as it has loaded.
    Exit status 2 with one ``error:`` line when the node cannot start. ``stop``: an event the caller's
    own signal handlers already set (:mod:`m2s_stereo.node_main` installs them before these imports).
    """
    import signal

    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from m2s_stereo.dds import use_large_image_profile

    if stop is None:
        stop = threading.Event()

        def on_signal(signum: int, frame: Any) -> None:
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)
    profile = use_large_image_profile()  # before the first DDS participant of this process
    shm_problem_text, shm_removed = make_room_for_shm() if profile_in_use() else (None, 0)
    rclpy.init(args=argv if argv is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    try:
        if stop.is_set():  # asked to stop while Python was still importing: nothing started, nothing to undo
            return 0
        try:
            node = StereoNode()
        except (ValueError, CalibrationError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:  # noqa: BLE001  (runtime load errors: one line, no traceback)
            print(f"error: cannot start m2s_stereo: {exc}", file=sys.stderr)
            return 2
        if profile:
            node.get_logger().info(f"DDS profile for large images: {profile} (set {profile_variables()[0]} to "
                                   "choose another, M2S_DDS_PROFILE=none to use none; the camera driver needs it too)")
        elif (ignored := ignored_profile_variable()) is not None:
            node.get_logger().warning(ignored)
        if shm_removed:
            node.get_logger().info(f"removed {shm_removed} shared-memory segment(s) of Fast DDS processes that died "
                                   "from /dev/shm: it had no room left for this node's")
        if shm_problem_text:
            node.get_logger().warning(shm_problem_text)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
        executor.remove_node(node)
        if stop.is_set():
            node.get_logger().info("stopping: signal received")
    finally:
        # from here on a signal changes nothing: ignored, not handled (Python restores the default action,
        # death by SIGINT, for signals with a handler when the interpreter finalises; not for ignored ones)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
