"""Per-frame overhead of the ROS node outside inference, next to a memcpy of the same bytes.

    python benchmarks/bench_node_overhead.py [--repeats 30] [--no-points | --valid-only] [--period-ms 50]

The node's frame path (image decode, camera model, disparity / depth / point-cloud messages,
publish to a live subscriber over loopback DDS) is timed with a zero-cost runtime that returns
a fixed disparity map, so inference is excluded. The subscriber runs in another process, as it
would on a robot (in-process it would compete for the GIL while deserialising). Frames come one
per ``--period-ms`` (default 50 ms, a camera's pace; inference would fill the gap on a robot) so
that the subscriber keeps up as a real one must; ``--period-ms 0`` runs them back to back. Baseline from
the same run: a memcpy of the input and output bytes of one frame, "hot" (the same two buffers
over and over: cache-resident where they fit) and "cold" (eight buffer pairs in turn, beyond the
last-level cache, as each new frame's data is). "of which publish" is the
time inside ``Publisher.publish`` (rclpy message conversion, CDR serialisation, DDS hand-over);
the rest is the node's own work (decode, depth, cloud building).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import numpy as np
import rclpy
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image

from calib import StereoCamera
from m2s_stereo.image_codec import array_to_image
from m2s_stereo.stereo_node import StereoNode


class FixedDisparity:
    """A runtime that costs nothing: returns precomputed maps in turn (to time everything else).

    The maps differ in how many pixels are invalid, as real frames do, so a valid-only cloud
    changes size from frame to frame."""

    backend = "fixed"
    input_size = None
    meta = {"max_disp": 192}

    def __init__(self, disparities: list[np.ndarray]) -> None:
        self.disparities = disparities
        self.calls = 0

    def infer(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self.disparities[self.calls % len(self.disparities)]


SINK = """
import rclpy
from sensor_msgs.msg import Image, PointCloud2
from stereo_msgs.msg import DisparityImage
rclpy.init()
n = rclpy.create_node("sink")
for t, name in ((DisparityImage, "disparity"), (Image, "depth"), (PointCloud2, "points2")):
    n.create_subscription(t, name, lambda m: None, 5)
try:
    rclpy.spin(n)
except BaseException:
    pass
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--period-ms", type=float, default=50.0,
                        help="one frame per period, as a camera (and inference) would pace them; 0 = back to back, "
                             "where the subscriber falls behind and competes for the cores")
    parser.add_argument("--no-points", action="store_true", help="disparity and depth only (publish_points off)")
    parser.add_argument("--valid-only", action="store_true", help="cloud of the valid points only instead of the default "
                        "organised HxW cloud (NaN = invalid)")
    args = parser.parse_args()
    rclpy.init()
    sink = subprocess.Popen([sys.executable, "-c", SINK])
    print(f"{'size':>10s} {'node overhead ms (median)':>26s} {'of which publish':>17s} {'memcpy hot ms':>14s} "
          f"{'ratio':>6s} {'memcpy cold ms':>15s} {'ratio':>6s}")
    for w, h in ((640, 480), (1280, 720)):
        rng = np.random.default_rng(0)
        left = rng.integers(0, 255, (h, w, 3), np.uint8)
        disparity = rng.uniform(1, 100, (h, w)).astype(np.float32)
        maps = [np.where(rng.random((h, w)) < p, np.float32(0), disparity) for p in (0.01, 0.03, 0.02, 0.05)]
        camera = StereoCamera.ideal(w, h, focal_px=w * 0.8, baseline_m=0.12)
        node = StereoNode(runtime=FixedDisparity(maps), parameter_overrides=[Parameter("model_path", value="fixed"),
                                                                                   Parameter("publish_points", value=not args.no_points),
                                                                                   Parameter("points_organized", value=not args.valid_only)])
        while (node.pub_points.get_subscription_count() == 0 or node.pub_depth.get_subscription_count() == 0
               or node.pub_disp.get_subscription_count() == 0):
            time.sleep(0.05)
        lmsg = array_to_image(Image, left, "bgr8")
        rmsg = array_to_image(Image, left, "bgr8")
        infos = [type("Info", (), c.msg_fields())() for c in (camera.left, camera.right)]
        publish_s = [0.0]
        for pub in (node.pub_disp, node.pub_depth, node.pub_points):  # time the DDS hand-over apart
            def timed_publish(msg, _inner=pub.publish):
                t = time.perf_counter()
                _inner(msg)
                publish_s[0] += time.perf_counter() - t
            pub.publish = timed_publish
        times, publishing = [], []
        next_frame = time.perf_counter()
        for _ in range(args.repeats):
            next_frame += args.period_ms / 1e3
            time.sleep(max(0.0, next_frame - time.perf_counter()))
            publish_s[0] = 0.0
            t0 = time.perf_counter()
            node._process(lmsg, rmsg, infos[0], infos[1], time.monotonic())
            times.append(time.perf_counter() - t0)
            publishing.append(publish_s[0])
        # memcpy of the same bytes: two input images + disparity + depth + xyzrgb cloud (16 B/pt)
        nbytes = 2 * left.nbytes + 2 * disparity.nbytes + (0 if args.no_points else 16 * h * w)
        # hot: the same two buffers every time (cache-resident where they fit); cold: 8 pairs in
        # turn (beyond the last-level cache), as fresh frames are
        pairs = [(np.ones(nbytes, np.uint8), np.ones(nbytes, np.uint8)) for _ in range(8)]
        floors = []
        for buffers in (pairs[:1], pairs):
            copies = []
            for i in range(max(args.repeats, 16)):
                src, dst = buffers[i % len(buffers)]
                t0 = time.perf_counter()
                np.copyto(dst, src)
                copies.append(time.perf_counter() - t0)
            floors.append(statistics.median(copies) * 1e3)
        med, pub_ms = statistics.median(times) * 1e3, statistics.median(publishing) * 1e3
        print(f"{w:>5d}x{h:<4d} {med:26.2f} {pub_ms:17.2f} {floors[0]:14.2f} {med / floors[0]:5.1f}x "
              f"{floors[1]:15.2f} {med / floors[1]:5.1f}x")
        node.destroy_node()
    sink.kill()
    sink.wait()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
