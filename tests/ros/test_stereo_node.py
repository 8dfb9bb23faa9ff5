"""The stereo node under real rclpy / DDS on loopback: message contract, bad inputs, overload."""

from __future__ import annotations

import resource
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 Python (rclpy) is not installed: pip install 'mono2stereo[ros]'")
pytest.importorskip("onnxruntime")

from rcl_interfaces.msg import Log  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402
from stereo_msgs.msg import DisparityImage  # noqa: E402

from calib import StereoCamera  # noqa: E402
from calib.image_io import read_rgb  # noqa: E402
from m2s_export.runtime import load_runtime  # noqa: E402
from m2s_stereo.image_codec import array_to_image, image_to_array  # noqa: E402
from m2s_stereo.outputs import unpack_points  # noqa: E402
from m2s_stereo.stereo_node import StereoNode  # noqa: E402
from rosgraph import wait_until  # noqa: E402  (tests/ros is on sys.path: conftest)


@pytest.fixture(scope="module")
def onnx_model(stereo_onnx):
    return stereo_onnx


class Harness:
    """The node under test plus a tester node (publishers of the inputs, subscribers of the outputs)."""

    def __init__(self, model, runtime=None, **overrides):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        params = [Parameter("model_path", value=str(model))] + [Parameter(k, value=v) for k, v in overrides.items()]
        self.node = StereoNode(runtime=runtime, parameter_overrides=params, context=self.context)
        self.tester = Node("tester", context=self.context)
        self.received = {"disparity": [], "depth": [], "points2": [], "rosout": []}
        qos = 10
        self.tester.create_subscription(DisparityImage, "disparity", self.received["disparity"].append, qos)
        self.tester.create_subscription(Image, "depth", self.received["depth"].append, qos)
        self.tester.create_subscription(PointCloud2, "points2", self.received["points2"].append, qos)
        self.tester.create_subscription(Log, "/rosout", self.received["rosout"].append, 100)
        from rclpy.qos import qos_profile_sensor_data

        self.pubs = {name: self.tester.create_publisher(t, name, qos_profile_sensor_data) for name, t in
                     (("left/image_rect", Image), ("right/image_rect", Image), ("left/camera_info", CameraInfo),
                      ("right/camera_info", CameraInfo))}
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.tester)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        self.wait(lambda: all(p.get_subscription_count() > 0 for p in self.pubs.values())
                  and self.node.pub_points.get_subscription_count() > 0, 10)

    def wait(self, predicate, timeout):
        return wait_until(predicate, timeout)

    def publish(self, left, right, camera, stamp_ns, frame="left_optical", encoding="rgb8", infos=True):
        header = Image().header
        header.stamp.sec, header.stamp.nanosec = stamp_ns // 10**9, stamp_ns % 10**9
        header.frame_id = frame
        if infos and camera is not None:
            for side, info in (("left", camera.left), ("right", camera.right)):
                msg = CameraInfo(header=header, **info.msg_fields())
                self.pubs[f"{side}/camera_info"].publish(msg)
            time.sleep(0.05)
        self.pubs["left/image_rect"].publish(array_to_image(Image, left, encoding, header))
        self.pubs["right/image_rect"].publish(array_to_image(Image, right, encoding, header))

    def close(self):
        self.executor.shutdown()
        self.thread.join(timeout=5.0)
        self.node.destroy_node()
        self.tester.destroy_node()
        rclpy.shutdown(context=self.context)


@pytest.fixture
def aloe(opencv_data):
    import cv2

    left, right = read_rgb(opencv_data / "aloeL.jpg"), read_rgb(opencv_data / "aloeR.jpg")
    size = (320, 277)  # quarter resolution keeps DDS messages small and the test fast
    return cv2.resize(left, size, interpolation=cv2.INTER_AREA), cv2.resize(right, size, interpolation=cv2.INTER_AREA)


def test_outputs_contract_on_real_aloe(onnx_model, aloe):
    left, right = aloe
    h, w = left.shape[:2]
    camera = StereoCamera.ideal(w, h, focal_px=0.25 * 3740.0, baseline_m=0.16)
    hx = Harness(onnx_model, points_organized=True, confidence_threshold=0.0)  # the unmasked contract
    try:
        hx.publish(left, right, camera, 1_700_000_000_123_456_789)
        assert hx.wait(lambda: all(hx.received[k] for k in ("disparity", "depth", "points2")), 30), hx.node.stats()
        disp_msg, depth_msg, cloud = hx.received["disparity"][0], hx.received["depth"][0], hx.received["points2"][0]
        for m in (disp_msg, depth_msg, cloud):
            assert m.header.frame_id == "left_optical"
            assert (m.header.stamp.sec, m.header.stamp.nanosec) == (1_700_000_000, 123_456_789)
        expected = load_runtime(onnx_model).infer(left, right)
        expected = np.where(expected > 0, expected, np.nan)
        disp = image_to_array(disp_msg.image)
        np.testing.assert_allclose(disp, expected, rtol=1e-5, atol=1e-5, equal_nan=True)
        assert disp_msg.f == pytest.approx(camera.focal_px) and disp_msg.t == pytest.approx(0.16)
        assert disp_msg.max_disparity > 0 and disp_msg.delta_d > 0 and disp_msg.valid_window.width == w
        depth = image_to_array(depth_msg)
        assert depth_msg.encoding == "32FC1"
        valid = np.isfinite(depth)
        np.testing.assert_allclose(depth[valid], (camera.focal_px * 0.16 / disp[valid]), rtol=1e-5)
        assert np.all(~valid[~np.isfinite(disp)])  # NaN where the disparity is invalid
        points = unpack_points(cloud)
        ref = camera.disparity_to_points(disp, min_depth=0.1, max_depth=50.0).points
        np.testing.assert_allclose(points, ref, rtol=1e-5, atol=1e-6, equal_nan=True)
    finally:
        hx.close()


def _errors(hx):
    return " | ".join(m.msg for m in hx.received["rosout"] if m.level >= 40)


def test_bad_inputs_are_named_and_good_frames_still_served(onnx_model, aloe):
    left, right = aloe
    h, w = left.shape[:2]
    camera = StereoCamera.ideal(w, h, focal_px=900.0, baseline_m=0.16)
    hx = Harness(onnx_model)
    try:
        t = 1_000 * 10**9
        hx.publish(left, right, None, t)  # no camera_info yet
        assert hx.wait(lambda: "camera_info" in _errors(hx), 15), _errors(hx)
        hx.publish(left, right[:, :-8].copy(), camera, t + 1)  # left/right size mismatch
        assert hx.wait(lambda: "but right is" in _errors(hx), 15)
        small = StereoCamera.ideal(w // 2, h // 2, focal_px=450.0, baseline_m=0.16)
        hx.publish(left, right, small, t + 2)  # camera_info size != image size
        assert hx.wait(lambda: "camera_info is" in _errors(hx), 15), _errors(hx)
        hx.publish(left, right, camera, t + 10, encoding="rgb8")
        assert hx.wait(lambda: hx.received["depth"], 30)
        # older than the last pair and never seen: out of order (a stamp an earlier pair had, t + 2, would be time
        # looping back, which restarts pairing instead)
        hx.publish(left, right, camera, t + 5)
        assert hx.wait(lambda: hx.node.stats().get("out_of_order", 0) >= 1, 10) or hx.node.sync is None
        bad = camera.right.P.copy()
        bad[0, 3] = 0.0  # zero baseline
        from calib.camera import CameraInfo as CalibInfo

        zero = StereoCamera.__new__(StereoCamera)
        object.__setattr__(zero, "left", camera.left)
        object.__setattr__(zero, "right", CalibInfo(w, h, camera.right.K, camera.right.D, camera.right.R, bad))
        hx.publish(left, right, zero, t + 11)
        assert hx.wait(lambda: "baseline" in _errors(hx), 15), _errors(hx)
        hx.publish(left, right, camera, t + 12, encoding="yuv422")  # unsupported encoding
        assert hx.wait(lambda: "yuv422" in _errors(hx), 15), _errors(hx)
        n = len(hx.received["depth"])
        hx.publish(left, right, camera, t + 13)  # a good frame after all that
        assert hx.wait(lambda: len(hx.received["depth"]) > n, 30)
        assert hx.node.stats()["bad_frames"] >= 5
    finally:
        hx.close()


class SlowRuntime:
    """The real runtime behind a fixed extra delay: a model slower than the camera, whatever this machine's
    speed (the small test model alone runs in ~2 ms, and publishing 4x faster than that measures the
    GIL, not the node). The delay is a sleep, so it holds no core and no GIL, as a GPU inference does not."""

    def __init__(self, runtime, delay_s):
        self.runtime, self.delay_s = runtime, delay_s
        self.backend, self.input_size, self.meta = runtime.backend, runtime.input_size, runtime.meta
        self.has_confidence = runtime.has_confidence

    def infer_with_confidence(self, left, right):
        time.sleep(self.delay_s)
        return self.runtime.infer_with_confidence(left, right)


def test_overload_drops_stale_pairs_with_bounded_latency(onnx_model):
    rng = np.random.default_rng(0)
    h, w = 240, 320
    left = rng.integers(0, 255, (h, w, 3), np.uint8)
    right = np.roll(left, -6, axis=1)
    camera = StereoCamera.ideal(w, h, focal_px=300.0, baseline_m=0.1)
    hx = Harness(onnx_model, runtime=SlowRuntime(load_runtime(onnx_model), 0.04), publish_points=False)
    try:
        hx.publish(left, right, camera, 10**9)
        assert hx.wait(lambda: hx.received["depth"], 30)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        infer_s = hx.node.stats()["inference_ms"] / 1e3
        assert infer_s >= 0.04
        period = infer_s / 4  # publish 4x faster than the node can process
        start = time.monotonic()
        sent = 0
        while time.monotonic() - start < 4.0:
            now_ns = hx.node.get_clock().now().nanoseconds
            hx.publish(left, right, camera, now_ns, infos=False)
            sent += 1
            time.sleep(period)
        hx.wait(lambda: False, 1.0)
        stats = hx.node.stats()
        # of the pairs that reached the node (on Jazzy many of the sent ones do not: best-effort
        # delivery of fast large samples), the stale ones were dropped, not queued
        assert stats["pairs_in"] > 0.2 * sent and stats["dropped_pairs"] > 0.3 * stats["pairs_in"], (sent, stats)
        # never a backlog of stale pairs: a pair waits at most for the inference in progress, and the wait
        # does not grow over the run. An unbounded queue would make them wait ~3 s by the end of this 4 s,
        # 4x overload. (Not asserted on the end-to-end latency: it also holds the inference itself, which
        # onnxruntime's thread pool stretches to 0.2-0.7 s now and then when this 2-core machine is
        # oversubscribed by the publisher and executor threads of this one-process harness.)
        wait = [v for _, v in hx.node.health.samples["queue_ms"]][1:]
        third = max(len(wait) // 3, 1)
        assert np.median(wait[-third:]) < 2.0 * np.median(wait[:third]) + 50.0, wait
        assert np.percentile(wait, 95) < 2 * infer_s * 1e3 + 100.0, wait
        assert np.max(wait) < 1000.0, wait
        assert len(hx.node.health.samples["stamp_latency_ms"]) > 10  # stamps on the node's clock: measured
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert rss1 - rss0 < 200_000  # KiB: no unbounded queue
    finally:
        hx.close()


def test_parameters_validated_on_set(onnx_model):
    hx = Harness(onnx_model)
    try:
        ok = hx.node.set_parameters([Parameter("max_depth", value=20.0)])[0]
        assert ok.successful and hx.node.values["max_depth"] == 20.0
        assert not hx.node.set_parameters([Parameter("min_depth", value=30.0)])[0].successful
        res = hx.node.set_parameters([Parameter("model_path", value="/x.onnx")])[0]
        assert not res.successful
        assert not hx.node.set_parameters([Parameter("point_stride", value=0)])[0].successful
        # the post-processing follows ros2 param set: the filter starts (compiled now), and a new alpha restarts it
        assert hx.node.postprocess.filter is None
        assert hx.node.set_parameters([Parameter("temporal_filter", value=True)])[0].successful
        first = hx.node.postprocess.filter
        assert first is not None and first.config.alpha == 0.3
        assert hx.node.set_parameters([Parameter("temporal_alpha", value=0.7)])[0].successful
        assert hx.node.postprocess.filter is not first and hx.node.postprocess.filter.config.alpha == 0.7
        assert not hx.node.set_parameters([Parameter("confidence_threshold", value=1.5)])[0].successful
    finally:
        hx.close()


def test_start_without_model_is_a_clear_error(tmp_path, monkeypatch):
    from m2s_stereo.dds import PROFILE_VARIABLES
    from m2s_stereo.stereo_node import main

    for name in PROFILE_VARIABLES:  # main() sets the profile variable in this process: undone after the test, or
        monkeypatch.setenv(name, "")  # every node started later by this pytest inherits it (setenv, then delenv:
        monkeypatch.delenv(name)  # delenv alone does not restore a variable that was absent)
    assert main(["m2s-stereo-node", "--ros-args", "-p", f"model_path:={tmp_path / 'none.onnx'}"]) == 2


def test_a_warning_whose_numbers_change_is_still_throttled(onnx_model):
    """The stale-input warning names how long the inputs have been silent: a throttle keyed on the message's
    first words (the seconds among them) let every one through."""
    h = Harness(onnx_model)
    try:
        logged = []
        h.node.get_logger = lambda: SimpleNamespace(warning=logged.append, error=logged.append)
        clock = [100.0]
        h.node.health.clock = lambda: clock[0]
        for t in (100.0, 100.1, 100.2):  # images at 10 Hz, then none: the real STALE message, every second
            clock[0] = t
            h.node.health.add("left")
        for t in (101.5, 102.5, 103.5):  # within the diagnostics window, 1 s apart (throttle: 2 s)
            clock[0] = t
            h.node._throttled("warning", h.node.status().message)
        h.node._throttled("warning", "a different problem: 1 frame dropped")
        assert len(logged) == 2 and logged[0].startswith("no image for ") and logged[1].startswith("a different"), logged
    finally:
        h.close()


def test_the_node_says_what_depths_the_model_can_measure_on_the_camera(onnx_model):
    """On a 640 px camera with f B = 451 x 0.075 the model measures nothing nearer than f B / (its maximum
    disparity x 640 / its export width); a min_depth set nearer than that is named (the default is not)."""
    from calib import StereoCamera

    camera = StereoCamera.ideal(640, 480, focal_px=451.0, baseline_m=0.075)
    for min_depth, level in ((0.05, "warning"), (None, "info"), (0.5, "info")):
        h = Harness(onnx_model, **({"min_depth": min_depth} if min_depth is not None else {}))
        try:
            said = []
            h.node.get_logger = lambda: SimpleNamespace(warning=lambda m: said.append(("warning", m)),
                                                        info=lambda m: said.append(("info", m)))
            width = h.node.runtime.input_size[1]
            near, far = h.node.measurable_range(camera)
            assert near == pytest.approx(451.0 * 0.075 / (h.node.max_disparity * 640 / width)) and far == 50.0
            h.node._announce_range(camera)
            assert len(said) == 1 and said[0][0] == level and f"from {near:.3g} m" in said[0][1], said
        finally:
            h.close()
