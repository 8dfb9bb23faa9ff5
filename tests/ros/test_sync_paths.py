"""The node pairs the same way with the real message_filters and with its own synchroniser, and survives time
going backwards. The node runs as a process of its own (``m2s-stereo-node``); this process publishes the
images with chosen stamps and counts the disparities (a camera driver and a consumer, as on a robot).

Where the real message_filters and the node's own synchroniser differed: ``ApproximateTimeSynchronizer``
pairs only stamps strictly closer than ``slop`` (``slop: 0.0`` never paired, pairs exactly ``slop`` apart
were dropped), ``TimeSynchronizer`` can emit an older pair after a newer one (the own synchroniser drops
it), and after a jump back in time (a bag played in a loop) the own synchroniser rejected every later pair
while message_filters' full queues deleted every new message on arrival.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 Python (rclpy) is not installed: pip install 'mono2stereo[ros]'")
pytest.importorskip("onnxruntime")

from calib import StereoCamera  # noqa: E402
from rosgraph import Listener, _node_process, _stop  # noqa: E402

MS = 1_000_000


@pytest.fixture(params=["message_filters", "m2s"])
def sync_env(request, tmp_path):
    """The environment that gives the node the real message_filters, or none (its own synchroniser)."""
    if request.param == "message_filters":
        pytest.importorskip("message_filters", reason="the real message_filters is not installed: "
                                                      "../shared/ros/install.sh VENV [rolling|jazzy]")
        return request.param, {}
    blocked = tmp_path / "no_message_filters" / "message_filters"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('message_filters is not installed here')\n")
    import os

    return request.param, {"PYTHONPATH": os.pathsep.join([str(blocked.parent), os.environ.get("PYTHONPATH", "")])}


class Graph:
    """A node process and this process as its camera and its consumer."""

    def __init__(self, model, env, *params):
        self.listener = Listener()
        self.proc = _node_process(model, *params, env=env)
        self.camera = StereoCamera.ideal(128, 96, focal_px=128.0, baseline_m=0.1)
        rng = np.random.default_rng(7)
        self.left = rng.integers(0, 255, (96, 128, 3), np.uint8)
        self.right = np.roll(self.left, -4, axis=1)
        ok = self.listener.wait(lambda: self.proc.poll() is not None or (
            all(p.get_subscription_count() for p in self.listener.pubs.values()) and self.listener.diagnostics), 30)
        assert ok and self.proc.poll() is None, self.close()
        time.sleep(1.0)  # the node's outputs matched to this process's subscriptions both ways

    def send(self, base_ns, pairs, gap=0.25):
        """(left_ms, right_ms) stamps after ``base_ns``, one pair every ``gap`` s (the node answers in between)."""
        for left_ms, right_ms in pairs:
            self.listener.publish(self.left, self.right, self.camera, base_ns + int(left_ms * MS),
                                  right_stamp_ns=base_ns + int(right_ms * MS))
            time.sleep(gap)

    def stamps(self):
        return [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in self.listener.outputs["disparity"]]

    def counters(self, after):
        """The node's diagnostics values of a message sent after monotonic time ``after``."""
        assert self.listener.wait(lambda: self.listener.diagnostics and self.listener.diagnostics[-1][0] > after, 10)
        return self.listener.diagnostics[-1][3]

    def close(self):
        log = _stop(self.proc)
        self.listener.close()
        return log


def test_approximate_sync_pairs_up_to_slop_inclusive_on_both_paths(stereo_onnx, sync_env):
    path, env = sync_env
    g = Graph(stereo_onnx, env, "sync_mode:=approximate", "slop:=0.005")
    try:
        base = time.time_ns()
        g.send(base, [(0, 5), (1000, 1006), (2000, 2004)])  # exactly slop apart, 1 ms over it, well within it
        assert g.listener.wait(lambda: len(g.stamps()) >= 2, 20)
        time.sleep(1.0)
        got = sorted(s - base for s in g.stamps())
        assert got == [0, 2000 * MS], (path, got)  # the disparity carries the left image's header
    finally:
        log = g.close()
    assert "Traceback" not in log, log


def test_approximate_sync_with_slop_zero_pairs_equal_stamps_on_both_paths(stereo_onnx, sync_env):
    """message_filters alone never pairs with slop 0 (strictly less than 0): no output at all."""
    path, env = sync_env
    g = Graph(stereo_onnx, env, "sync_mode:=approximate", "slop:=0.0")
    try:
        base = time.time_ns()
        g.send(base, [(0, 0), (1000, 1001), (2000, 2000)])
        assert g.listener.wait(lambda: len(g.stamps()) >= 2, 20), path
        time.sleep(1.0)
        assert sorted(s - base for s in g.stamps()) == [0, 2000 * MS], path
    finally:
        g.close()


def test_an_older_pair_after_a_newer_one_is_dropped_and_counted_on_both_paths(stereo_onnx, sync_env):
    """Exact sync, left 1, left 2, right 2, right 1: message_filters' TimeSynchronizer emits pair 2, then
    pair 1 (it keeps the unmatched left 1); the node publishes pair 2 only and counts the other."""
    path, env = sync_env
    g = Graph(stereo_onnx, env)
    try:
        base = time.time_ns()
        t1, t2 = base, base + 100 * MS
        header_order = [("left", t1), ("left", t2), ("right", t2), ("right", t1)]
        for side, t in header_order:
            image = g.left if side == "left" else g.right
            pub_info, pub_image = g.listener.pubs[f"{side}/camera_info"], g.listener.pubs[f"{side}/image_rect"]
            from sensor_msgs.msg import CameraInfo, Image

            from m2s_stereo.image_codec import array_to_image

            header = Image().header
            header.stamp.sec, header.stamp.nanosec = t // 10**9, t % 10**9
            pub_info.publish(CameraInfo(header=header, **getattr(g.camera, side).msg_fields()))
            pub_image.publish(array_to_image(Image, image, "rgb8", header))
            time.sleep(0.2)
        assert g.listener.wait(lambda: g.stamps(), 20)
        time.sleep(1.0)
        assert g.stamps() == [t2], (path, [s - base for s in g.stamps()])
        values = g.counters(time.monotonic())
        assert values["out_of_order"] == 1, (path, values)
    finally:
        g.close()


def test_time_going_back_starts_pairing_over_on_both_paths(stereo_onnx, sync_env):
    """Stamps 10, 11, 12 s then 1, 2, 3 s (a bag played in a loop, a driver restart): the second run is
    published too, the node warns once and counts the reset. The own synchroniser used to reject every pair
    after the jump; message_filters kept the stale newer messages and dropped every new one."""
    path, env = sync_env
    g = Graph(stereo_onnx, env)
    try:
        base = time.time_ns() - 60 * 10**9
        g.send(base, [(10_000, 10_000), (11_000, 11_000), (12_000, 12_000)])
        g.listener.publish(g.left, g.right, g.camera, base + 12_500 * MS, right_stamp_ns=base + 12_400 * MS)  # unmatched
        time.sleep(0.25)
        g.send(base, [(1000, 1000), (2000, 2000), (3000, 3000), (4000, 4000)])
        assert g.listener.wait(lambda: len(g.stamps()) >= 7, 20), (path, [s - base for s in g.stamps()])
        assert sorted(s - base for s in g.stamps()) == [t * MS for t in (1000, 2000, 3000, 4000, 10_000, 11_000, 12_000)]
        values = g.counters(time.monotonic())
        assert values["time_resets"] >= 1, values
        assert g.listener.wait(lambda: any("went back by" in m.msg for m in g.listener.logs), 10)
    finally:
        g.close()


def test_a_recording_shorter_than_a_second_played_in_a_loop_is_published_on_every_pass(stereo_onnx, sync_env):
    """`ros2 bag play --loop` of a 0.3 s bag (4 pairs): the stamps go back by 0.3 s on every pass, less than the
    1 s a jump back needed; 4 outputs came on the first pass and none after. A stamp already seen restarts
    pairing whatever the size of the jump."""
    path, env = sync_env
    g = Graph(stereo_onnx, env)
    try:
        base = time.time_ns() - 60 * 10**9
        loop = [(t, t) for t in (0, 100, 200, 300)]
        for k in range(3):
            g.send(base, loop)
            assert g.listener.wait(lambda k=k: len(g.listener.outputs["disparity"]) >= 4 * (k + 1), 20), \
                (path, k, [s - base for s in g.stamps()])
        values = g.counters(time.monotonic())
        assert values["time_resets"] >= 2, values
    finally:
        g.close()
