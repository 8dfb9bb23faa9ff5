"""The node in a real multi-process graph: frames from another process arrive, diagnostics tell the
truth (windowed, STALE when inputs stop, sync starvation named), and the small contract fixes.

The camera is ``camera_process.py`` in a process of its own (DDS delivers in-process messages
differently), the node is ``m2s-stereo-node`` in another where the test says so, and this process
only listens (to /diagnostics, /rosout and the outputs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 Python (rclpy) is not installed: pip install 'mono2stereo[ros]'")
pytest.importorskip("onnxruntime")


from calib import StereoCamera  # noqa: E402
from calib.camera import CameraInfo as CalibInfo  # noqa: E402
from m2s_stereo.dds import PROFILE, profile_variables  # noqa: E402
from m2s_stereo.image_codec import image_to_array  # noqa: E402
from m2s_stereo.outputs import unpack_points  # noqa: E402
from rosgraph import Listener, _node_process, _stop  # noqa: E402  (tests/ros is on sys.path: conftest)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

# what the docs tell a camera driver to use: the variable this Fast DDS reads (FASTRTPS_ on Jazzy, FASTDDS_ on Kilted)
DRIVER_ENV = {v: str(PROFILE) for v in profile_variables()}


@pytest.mark.parametrize("qos", ["sensor_data", "reliable"])
@pytest.mark.parametrize("width, height", [(640, 480), (1280, 720)])
def test_pairs_from_another_process_arrive(stereo_onnx, width, height, qos):
    """Before: 2-7 of 20 pairs reached the node at 640x480 (fragmented best-effort UDP between processes). On
    Jazzy (Fast DDS 2.14) the same as on Kilted once the profile is in the variable it reads (FASTRTPS_): before,
    about half of the images arrived there, which had been taken for a limit of Fast DDS 2.14."""
    listener = Listener(outputs=False, inputs=False)  # the camera process is the only publisher
    node = _node_process(stereo_onnx, "diagnostics_period:=0.5")
    try:
        assert listener.wait(lambda: listener.last() is not None, 30), _stop(node)
        camera = subprocess.run([sys.executable, str(HERE / "camera_process.py"), "--width", str(width),
                                 "--height", str(height), "--rate", "10", "--count", "20", "--qos", qos,
                                 # qos auto re-subscribes reliable once: two matches per publisher
                                 "--expect-matches", "2" if qos == "reliable" else "1"],
                                cwd=ROOT, env={**os.environ, **DRIVER_ENV}, capture_output=True, text=True, timeout=120)
        assert camera.returncode == 0, camera.stderr[-2000:]
        assert json.loads(camera.stdout.strip().splitlines()[-1])["sent"] == 20
        listener.wait(lambda: listener.last()[3].get("left_total", 0) >= 20
                      and listener.last()[3].get("right_total", 0) >= 20, 10)
        values = listener.last()[3]
        got = ({k: v for k, v in values.items() if "total" in k}, camera.stdout[-500:])
        assert values["left_total"] == values["right_total"] == 20, got  # every image crossed
        assert values["pairs_total"] == 20 and values["unmatched"] == 0, got
    finally:
        log = _stop(node)
        listener.close()
    assert "DDS profile for large images" in log


def test_diagnostics_go_stale_when_the_inputs_stop_and_recover(stereo_onnx):
    from m2s_stereo.stereo_node import StereoNode  # noqa: F401  (the node in this process: in-process timing)

    listener = Listener()
    node = _node_process(stereo_onnx, "diagnostics_period:=0.5", "diagnostics_window:=2.0")
    try:
        assert listener.wait(lambda: listener.last() is not None, 30), _stop(node)
        assert listener.last()[1] == "STALE" and "no image received yet" in listener.last()[2]
        rng = np.random.default_rng(0)
        left = rng.integers(0, 255, (96, 128, 3), np.uint8)
        right = np.roll(left, -4, axis=1)
        camera = StereoCamera.ideal(128, 96, focal_px=128.0, baseline_m=0.1)
        listener.publish(left, right, None, time.time_ns())  # before any camera_info: a bad frame, the only one
        assert listener.wait(lambda: listener.last()[1] == "ERROR" and "camera_info" in listener.last()[2], 10), \
            listener.last()
        levels = []
        for _ in range(30):  # 3 s of good frames at 10 Hz: the bad frame leaves the 2 s window
            listener.publish(left, right, camera, time.time_ns())
            time.sleep(0.1)
            levels.append(listener.last()[1])
        assert "WARN" in levels  # good frames while the bad one is still in the window
        assert listener.last()[1] == "OK", listener.last()  # before: WARN for ever after one early bad frame
        stopped = time.monotonic()
        assert listener.wait(lambda: listener.last()[1] == "STALE" and listener.last()[0] > stopped, 5)
        assert listener.last()[0] - stopped <= 2.0  # STALE within 2 s of the inputs stopping
        assert "no image for" in listener.last()[2]
        assert listener.wait(lambda: listener.last()[3]["input_fps"] == 0.0, 3.0)  # the rate decays (window 2 s)
        assert listener.last()[1] == "STALE"
    finally:
        _stop(node)
        listener.close()


def test_free_running_cameras_under_exact_sync_are_named(stereo_onnx):
    listener = Listener(outputs=False, inputs=False)
    node = _node_process(stereo_onnx, "diagnostics_period:=0.5")
    try:
        assert listener.wait(lambda: listener.last() is not None, 30), _stop(node)
        camera = subprocess.run([sys.executable, str(HERE / "camera_process.py"), "--width", "128", "--height", "96",
                                 "--rate", "10", "--count", "25", "--right-offset-ms", "1"],
                                cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True, timeout=120)
        assert camera.returncode == 0, camera.stderr[-2000:]

        def named():  # any diagnostics message so far (the camera has stopped: STALE follows within 0.5 s)
            return next((d for d in reversed(listener.diagnostics) if d[1] == "WARN" and "none pair up" in d[2]), None)

        assert listener.wait(lambda: named() is not None, 5), listener.diagnostics[-3:]
        _, _, message, values = named()
        assert "sync_mode:=approximate" in message and 0.5 <= values["stamp_offset_ms"] <= 5.0
        assert values["pairs_total"] == 0 and values["unmatched"] >= 40
        assert any("none pair up" in m.msg and m.level == 30 for m in listener.logs)  # a WARN in the log too
    finally:
        _stop(node)
        listener.close()


def test_confidence_is_published_and_masks_every_output(stereo_onnx):
    """The node in its own process, the images from this one: ``confidence`` (32FC1, the disparity's
    header) arrives, and disparity, depth and points are invalid exactly where it is below the
    threshold. A model without a confidence output (the hand-built one of the torch-free legs) gets
    no confidence topic, no masking and a WARN saying so."""
    from m2s_export.runtime import load_runtime

    rng = np.random.default_rng(5)
    left = rng.integers(0, 255, (96, 128, 3), np.uint8)
    right = np.roll(left, -4, axis=1)
    camera = StereoCamera.ideal(128, 96, focal_px=100.0, baseline_m=0.1)
    expected = load_runtime(stereo_onnx).infer_with_confidence(left, right)
    has_confidence = expected.confidence is not None
    threshold = round(float(np.median(expected.confidence)), 4) if has_confidence else 0.5
    listener = Listener()
    node = _node_process(stereo_onnx, f"confidence_threshold:={threshold}", "min_depth:=0.01", "max_depth:=1000.0")
    try:
        want = ("disparity", "depth", "points2") + (("confidence",) if has_confidence else ())
        assert listener.wait(lambda: all(listener.node.count_publishers(f"/{n}") for n in want), 30), _stop(node)
        stamp = time.time_ns()
        for k in range(40):  # until one frame's outputs have all arrived (best-effort images may be lost)
            listener.publish(left, right, camera, stamp + k)
            if listener.wait(lambda: all(listener.outputs[n] for n in want), 1.0):
                break
        assert all(listener.outputs[n] for n in want), (_stop(node), {n: len(listener.outputs[n]) for n in want})
        disp_msg = listener.outputs["disparity"][0]
        key = (disp_msg.header.stamp.sec, disp_msg.header.stamp.nanosec)
        depth_msg = next(m for m in listener.outputs["depth"] if (m.header.stamp.sec, m.header.stamp.nanosec) == key)
        cloud = next(m for m in listener.outputs["points2"] if (m.header.stamp.sec, m.header.stamp.nanosec) == key)
        disp, depth, points = image_to_array(disp_msg.image), image_to_array(depth_msg), unpack_points(cloud)
        if not has_confidence:
            assert not listener.outputs["confidence"] and np.isfinite(disp).all()
            # the WARN comes at start, maybe before /rosout reaches this process: read the node's own log
            assert "no confidence output" in _stop(node)
            return
        conf_msg = next(m for m in listener.outputs["confidence"] if (m.header.stamp.sec, m.header.stamp.nanosec) == key)
        assert conf_msg.encoding == "32FC1" and conf_msg.header.frame_id == disp_msg.header.frame_id
        confidence = image_to_array(conf_msg)
        np.testing.assert_allclose(confidence, expected.confidence, atol=1e-5)
        low = confidence < threshold
        assert 0.3 < low.mean() < 0.7  # half of the pixels at the median: both kinds are checked
        valid = ~low & (expected.disparity > 0)
        np.testing.assert_array_equal(np.isfinite(disp), valid)
        np.testing.assert_allclose(disp[valid], expected.disparity[valid], rtol=1e-5)
        np.testing.assert_array_equal(np.isnan(depth), ~valid)  # NaN: no measurement (not +-Inf: the range is wide)
        np.testing.assert_array_equal(np.isfinite(points[..., 2]), valid)
    finally:
        _stop(node)
        listener.close()


def test_shutdown_is_quiet(stereo_onnx):
    listener = Listener()
    node = _node_process(stereo_onnx)
    try:
        assert listener.wait(lambda: listener.last() is not None, 30), _stop(node)
        rng = np.random.default_rng(1)
        left = rng.integers(0, 255, (96, 128, 3), np.uint8)
        camera = StereoCamera.ideal(128, 96, focal_px=128.0, baseline_m=0.1)
        for _ in range(10):
            listener.publish(left, np.roll(left, -3, axis=1), camera, time.time_ns())
            time.sleep(0.03)
        assert listener.wait(lambda: listener.outputs["disparity"], 20)
    finally:
        log = _stop(node)
        listener.close()
    assert node.returncode == 0, log
    assert "context is invalid" not in log and "inference failed" not in log and "Traceback" not in log, log


class TestContract:
    """Output details a perception stack relies on (REP 117/118, DisparityImage fields), in-process."""

    @pytest.fixture
    def harness(self, stereo_onnx):
        from rclpy.parameter import Parameter

        from m2s_stereo.stereo_node import StereoNode

        listener = Listener()
        node = StereoNode(parameter_overrides=[Parameter("model_path", value=str(stereo_onnx)),
                                               Parameter("min_depth", value=2.0), Parameter("max_depth", value=20.0),
                                               Parameter("confidence_threshold", value=0.0)],
                          context=listener.context)
        listener.executor.add_node(node)
        assert listener.wait(lambda: node.pub_disp.get_subscription_count() and node.pub_depth.get_subscription_count()
                             and all(p.get_subscription_count() for p in listener.pubs.values()), 10)
        yield listener, node
        listener.executor.remove_node(node)
        node.destroy_node()
        listener.close()

    def test_depth_range_is_signed_infinity_and_depth_info_published(self, harness):
        listener, node = harness
        rng = np.random.default_rng(2)
        left = rng.integers(0, 255, (96, 128, 3), np.uint8)
        right = np.roll(left, -5, axis=1)
        # doffs = cx_R - cx_L = 2 px: the published disparity is d + 2
        base = StereoCamera.ideal(128, 96, focal_px=100.0, baseline_m=0.1)
        p_right = base.right.P.copy()
        p_right[0, 2] += 2.0
        camera = StereoCamera(base.left, CalibInfo(128, 96, base.right.K, base.right.D, base.right.R, p_right,
                                                   camera_name="right"))
        stamp = time.time_ns()
        listener.publish(left, right, camera, stamp)
        assert listener.wait(lambda: listener.outputs["depth"] and listener.outputs["disparity"]
                             and listener.outputs["depth/camera_info"], 20)
        disp_msg = listener.outputs["disparity"][0]
        disp = image_to_array(disp_msg.image)
        depth = image_to_array(listener.outputs["depth"][0])
        z = 10.0 / disp  # f * B / (d + doffs)
        close, far = z < 2.0, z > 20.0
        assert np.all(depth[close & np.isfinite(z)] == -np.inf) and np.all(depth[far & np.isfinite(z)] == np.inf)
        inside = np.isfinite(z) & ~close & ~far
        np.testing.assert_allclose(depth[inside], z[inside], rtol=1e-5)
        assert np.isnan(depth[~np.isfinite(disp)]).all()  # no measurement stays NaN
        assert disp_msg.min_disparity == pytest.approx(2.0)  # the published values are d + doffs
        assert disp_msg.max_disparity == pytest.approx(node.max_disparity * 128 / node.runtime.input_size[1] + 2.0)
        assert np.nanmax(disp) <= disp_msg.max_disparity and np.nanmin(disp) > disp_msg.min_disparity
        info = listener.outputs["depth/camera_info"][0]
        assert info.header == listener.outputs["depth"][0].header and info.width == 128 and list(info.p) == list(camera.left.P.ravel())

    def test_broken_camera_info_is_reported_even_without_subscribers(self, stereo_onnx):
        from rclpy.parameter import Parameter

        from m2s_stereo.stereo_node import StereoNode

        listener = Listener(namespace="cam", outputs=False)
        node = StereoNode(parameter_overrides=[Parameter("model_path", value=str(stereo_onnx))],
                          context=listener.context, namespace="cam")
        listener.executor.add_node(node)
        try:
            assert listener.wait(lambda: all(p.get_subscription_count() for p in listener.pubs.values()), 10)
            rng = np.random.default_rng(3)
            left = rng.integers(0, 255, (96, 128, 3), np.uint8)
            small = StereoCamera.ideal(64, 48, focal_px=64.0, baseline_m=0.1)
            listener.publish(left, left, small, time.time_ns())  # nobody subscribes to the outputs
            assert listener.wait(lambda: any("camera_info is 64x48" in m.msg for m in listener.logs), 10)
            listener.publish(left, left, None, time.time_ns() + 1, infos=False)
            node.infos = {"left": None, "right": None}
            listener.publish(left, left, None, time.time_ns() + 2, infos=False)
            assert listener.wait(lambda: any("/cam/left/camera_info" in m.msg for m in listener.logs), 10), \
                [m.msg for m in listener.logs]  # the resolved (namespaced) topic is named
        finally:
            listener.executor.remove_node(node)
            node.destroy_node()
            listener.close()


def test_message_filters_branch(stereo_onnx):
    """The branch a Humble/Jazzy install takes: the real message_filters (from ../shared/ros, installed by
    the test scripts; ../shared/ros/install.sh VENV)."""
    pytest.importorskip("message_filters", reason="the real message_filters is not installed: "
                                                  "../shared/ros/install.sh VENV [rolling|jazzy]")
    from rclpy.parameter import Parameter

    from m2s_stereo.stereo_node import StereoNode

    listener = Listener()
    node = StereoNode(parameter_overrides=[Parameter("model_path", value=str(stereo_onnx)),
                                           Parameter("sync_mode", value="approximate"), Parameter("slop", value=0.01)],
                      context=listener.context)
    listener.executor.add_node(node)
    try:
        assert node.sync_backend == "message_filters"
        assert listener.wait(lambda: node.pub_disp.get_subscription_count()
                             and all(p.get_subscription_count() for p in listener.pubs.values()), 10)
        rng = np.random.default_rng(4)
        left = rng.integers(0, 255, (96, 128, 3), np.uint8)
        camera = StereoCamera.ideal(128, 96, focal_px=128.0, baseline_m=0.1)
        t = time.time_ns()
        listener.publish(left, np.roll(left, -3, axis=1), camera, t, right_stamp_ns=t + 2_000_000)  # 2 ms apart
        assert listener.wait(lambda: listener.outputs["disparity"], 20), node.stats()
        stats = node.stats()
        assert stats["left_in"] == stats["right_in"] == 1 and stats["pairs_in"] == 1
    finally:
        listener.executor.remove_node(node)
        node.destroy_node()
        listener.close()
