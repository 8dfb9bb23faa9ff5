"""Per-frame overhead of the ROS node outside inference, next to a memcpy of the same bytes.

    python benchmarks/bench_node_overhead.py [--repeats 30] [--no-points | --valid-only] [--period-ms 50]
    python benchmarks/bench_node_overhead.py --post      # the cost of the confidence threshold, the confidence
                                                         # topic, the temporal filter and the left-right check

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

``--post``: the default outputs (coloured organised cloud) under the post-processing settings, one
row each: no confidence threshold; the default threshold (0.5: masking every output); with the
``confidence`` topic subscribed; with the temporal filter; with the left-right check (its own work:
mirroring and the consistency test; its second inference costs as much as the first and is not in
these figures since the runtime here costs nothing).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import cv2
import numpy as np
import rclpy
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image

from calib import StereoCamera
from m2s_export.runtime import Inference, StereoRuntime
from m2s_stereo.image_codec import array_to_image
from m2s_stereo.stereo_node import StereoNode


class FixedDisparity(StereoRuntime):
    """A runtime that costs nothing: returns precomputed maps in turn (to time everything else).

    The maps differ in how many pixels are invalid, as real frames do, so a valid-only cloud
    changes size from frame to frame; each comes with a confidence map, spatially coherent as a
    model's is, about a fifth of it below 0.5. The arrays are handed out fresh, as a real runtime's
    outputs are (the node masks them in place): the copy is counted in the node's figures."""

    backend = "fixed"

    def __init__(self, disparities: list[np.ndarray], confidences: list[np.ndarray]) -> None:
        super().__init__(None, {"max_disp": 192})
        self.disparities, self.confidences = disparities, confidences
        self.calls = 0

    def infer_with_confidence(self, left: np.ndarray, right: np.ndarray) -> Inference:
        self.calls += 1
        k = self.calls % len(self.disparities)
        return Inference(self.disparities[k].copy(), self.confidences[k].copy())


SINK = """
import sys
import rclpy
from sensor_msgs.msg import Image, PointCloud2
from stereo_msgs.msg import DisparityImage
rclpy.init()
n = rclpy.create_node("sink")
topics = ((DisparityImage, "disparity"), (Image, "depth"), (PointCloud2, "points2"), (Image, "confidence"))
for t, name in topics[:4 if "confidence" in sys.argv else 3]:
    n.create_subscription(t, name, lambda m: None, 5)
try:
    rclpy.spin(n)
except BaseException:
    pass
"""

POST = (  # --post rows: (label, node parameters, the sink subscribes to 'confidence')
    ("no confidence threshold", {"confidence_threshold": 0.0}, False),
    ("threshold 0.5 (default)", {}, False),
    ("+ confidence topic", {}, True),
    ("+ temporal filter", {"temporal_filter": True}, False),
    ("+ left-right check (own work)", {"lr_check": True}, False),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--period-ms", type=float, default=50.0,
                        help="one frame per period, as a camera (and inference) would pace them; 0 = back to back, "
                             "where the subscriber falls behind and competes for the cores")
    parser.add_argument("--no-points", action="store_true", help="disparity and depth only (publish_points off)")
    parser.add_argument("--valid-only", action="store_true", help="cloud of the valid points only instead of the default "
                        "organised HxW cloud (NaN = invalid)")
    parser.add_argument("--post", action="store_true", help="one row per post-processing setting (see above)")
    args = parser.parse_args()
    rclpy.init()
    rows = POST if args.post else (("", {}, False),)
    print(f"{'size':>10s} {'setting':31s} {'node overhead ms (median)':>26s} {'of which publish':>17s} "
          f"{'memcpy hot ms':>14s} {'ratio':>6s} {'memcpy cold ms':>15s} {'ratio':>6s}")
    for w, h in ((640, 480), (1280, 720)):
        rng = np.random.default_rng(0)
        left = rng.integers(0, 255, (h, w, 3), np.uint8)
        disparity = rng.uniform(1, 100, (h, w)).astype(np.float32)
        maps = [np.where(rng.random((h, w)) < p, np.float32(0), disparity) for p in (0.01, 0.03, 0.02, 0.05)]
        # spatially coherent, as a model's confidence is (regions, not salt and pepper): about a fifth below 0.5
        confidences = [np.clip(cv2.resize(rng.normal(0.75, 0.3, (24, 32)).astype(np.float32), (w, h),
                                          interpolation=cv2.INTER_CUBIC), 0, 1) for _ in maps]
        camera = StereoCamera.ideal(w, h, focal_px=w * 0.8, baseline_m=0.12)
        floors = memcpy_floors(left, disparity, args)
        for label, params, with_confidence in rows:
            sink = subprocess.Popen([sys.executable, "-c", SINK] + (["confidence"] if with_confidence else []))
            try:
                med, pub_ms = time_node(FixedDisparity(maps, confidences), camera, left, params, with_confidence, args)
            finally:  # never leave the subscriber process behind (it would disturb every later DDS run)
                sink.kill()
                sink.wait()
            print(f"{w:>5d}x{h:<4d} {label:31s} {med:26.2f} {pub_ms:17.2f} {floors[0]:14.2f} {med / floors[0]:5.1f}x "
                  f"{floors[1]:15.2f} {med / floors[1]:5.1f}x")
    rclpy.shutdown()
    return 0


def time_node(runtime: FixedDisparity, camera: StereoCamera, left: np.ndarray, params: dict, with_confidence: bool,
              args: argparse.Namespace) -> tuple[float, float]:
    """Median ms of the node's frame path and of the time inside publish, with a subscriber in the sink process."""
    overrides = {"model_path": "fixed", "publish_points": not args.no_points, "points_organized": not args.valid_only,
                 **params}
    node = StereoNode(runtime=runtime, parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
    pubs = [node.pub_disp, node.pub_depth] + ([node.pub_points] if not args.no_points else []) + (
        [node.pub_conf] if with_confidence else [])
    while any(p.get_subscription_count() == 0 for p in pubs):
        time.sleep(0.05)
    lmsg = array_to_image(Image, left, "bgr8")
    rmsg = array_to_image(Image, left, "bgr8")
    infos = [CameraInfo(**c.msg_fields()) for c in (camera.left, camera.right)]
    publish_s = [0.0]
    for pub in (node.pub_disp, node.pub_depth, node.pub_points, node.pub_conf):  # time the DDS hand-over apart
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
    node.destroy_node()
    return statistics.median(times) * 1e3, statistics.median(publishing) * 1e3


def memcpy_floors(left: np.ndarray, disparity: np.ndarray, args: argparse.Namespace) -> list[float]:
    """memcpy of the same bytes: two input images + disparity + depth + xyzrgb cloud (16 B/pt); hot: the same
    two buffers every time (cache-resident where they fit); cold: 8 pairs in turn (beyond the last-level
    cache), as fresh frames are."""
    h, w = disparity.shape
    nbytes = 2 * left.nbytes + 2 * disparity.nbytes + (0 if args.no_points else 16 * h * w)
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
    return floors


if __name__ == "__main__":
    sys.exit(main())
