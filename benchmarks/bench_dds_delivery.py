"""Delivery of camera images between two processes over DDS, with the node's profile and without.

    python benchmarks/bench_dds_delivery.py [--count 60] [--sizes 640x480 1280x720] [--rates 10 30]

A publisher process sends ``--count`` rgb8 images with sensor-data QoS (best effort, depth 5: what
camera drivers use) at each rate; a subscriber process counts what arrives and the latency from
the header stamp (the publisher's wall clock, same host) to the callback. Each row runs once with
Fast DDS's default transports (the baseline) and once with the profile ``m2s_stereo`` ships
(``fastdds_large_images.xml``) on both sides, and once with it on the subscriber only (which
does not help: the sender fragments). Prints delivered / sent and the latency median / p95.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

import numpy as np

PUB = r"""
import sys, time, numpy as np, rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
w, h, n, hz = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
rclpy.init()
node = rclpy.create_node("bench_pub")
pub = node.create_publisher(Image, "bench/image", qos_profile_sensor_data)
end = time.time() + 15
while pub.get_subscription_count() == 0 and time.time() < end:
    time.sleep(0.05)
time.sleep(1.0)
data = np.random.default_rng(0).integers(0, 255, h * w * 3, np.uint8).tobytes()
t0 = time.monotonic()
for i in range(n):
    time.sleep(max(0.0, t0 + i / hz - time.monotonic()))
    m = Image(height=h, width=w, encoding="rgb8", step=w * 3)
    m.data = data
    now = time.time_ns()
    m.header.stamp.sec, m.header.stamp.nanosec = now // 10**9, now % 10**9
    pub.publish(m)
time.sleep(1.0)
rclpy.shutdown()
"""

SUB = r"""
import json, sys, time, rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
rclpy.init()
node = rclpy.create_node("bench_sub")
lat = []
def cb(m):
    lat.append((time.time_ns() - (m.header.stamp.sec * 10**9 + m.header.stamp.nanosec)) / 1e6)
node.create_subscription(Image, "bench/image", cb, qos_profile_sensor_data)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    rclpy.spin_once(node, timeout_sec=0.05)
print(json.dumps(lat))
rclpy.shutdown()
"""


def trial(w: int, h: int, n: int, hz: float, pub_env: dict, sub_env: dict) -> list[float]:
    base = {**os.environ, "ROS_DOMAIN_ID": str(random.randint(120, 200)), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    for v in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE"):
        base.pop(v, None)
    sub = subprocess.Popen([sys.executable, "-c", SUB, str(8 + n / hz)], stdout=subprocess.PIPE, text=True,
                           env={**base, **sub_env})
    time.sleep(1.0)
    subprocess.run([sys.executable, "-c", PUB, str(w), str(h), str(n), str(hz)], env={**base, **pub_env}, check=True)
    out, _ = sub.communicate(timeout=60)
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    from m2s_stereo.dds import PROFILE, profile_variables

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=60)
    p.add_argument("--sizes", nargs="+", default=["640x480", "1280x720"])
    p.add_argument("--rates", nargs="+", type=float, default=[10.0, 30.0])
    args = p.parse_args()
    profile = {v: str(PROFILE) for v in profile_variables()}  # the variable this Fast DDS reads
    setups = (("default transports", {}, {}), ("profile on the subscriber only", {}, profile),
              ("m2s profile on both sides", profile, profile))
    print(f"{args.count} rgb8 images per row, sensor-data QoS, publisher and subscriber in separate processes")
    print(f"{'size':>9s} {'Hz':>4s}  {'setup':32s} {'delivered':>10s} {'latency median':>15s} {'p95':>8s}")
    for size in args.sizes:
        w, h = (int(v) for v in size.split("x"))
        for hz in args.rates:
            for label, pub_env, sub_env in setups:
                lat = trial(w, h, args.count, hz, pub_env, sub_env)
                med = f"{np.median(lat):.1f} ms" if lat else "-"
                p95 = f"{np.percentile(lat, 95):.1f} ms" if lat else "-"
                print(f"{size:>9s} {hz:4.0f}  {label:32s} {len(lat):>4d} / {args.count:<4d} {med:>15s} {p95:>8s}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
