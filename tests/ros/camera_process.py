"""A stereo camera driver in a process of its own, as on a robot: rectified left/right images and
camera_info on sensor-data QoS, stamped with the wall clock (optionally the right camera late by
--right-offset-ms, as two free-running cameras), at --rate Hz. It starts once the node's input
subscriptions are matched and prints one JSON line: what it sent."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import rclpy
from rclpy.event_handler import PublisherEventCallbacks
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image

from calib import StereoCamera
from m2s_stereo.image_codec import array_to_image


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--right-offset-ms", type=float, default=0.0)
    p.add_argument("--namespace", default="")
    p.add_argument("--qos", choices=["sensor_data", "reliable"], default="sensor_data")
    p.add_argument("--wait", type=float, default=20.0, help="seconds to wait for the node's subscriptions")
    p.add_argument("--expect-matches", type=int, default=1,
                   help="subscriptions each publisher must have matched in total before sending, all but the last "
                        "unmatched again (2 for a node with qos auto and a reliable driver: it re-subscribes once)")
    args = p.parse_args()
    rclpy.init()
    node = rclpy.create_node("fake_camera", namespace=args.namespace or None)
    qos = qos_profile_sensor_data if args.qos == "sensor_data" else QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    matched: dict[str, tuple[int, int]] = {}  # topic -> (total, current) matched subscriptions, from DDS itself

    def on_matched(name: str):
        def callback(status) -> None:
            matched[name] = (status.total_count, status.current_count)
        return callback

    pubs = {name: node.create_publisher(t, name, qos, event_callbacks=PublisherEventCallbacks(matched=on_matched(name)))
            for name, t in (("left/image_rect", Image), ("right/image_rect", Image), ("left/camera_info", CameraInfo),
                            ("right/camera_info", CameraInfo))}

    def all_matched() -> bool:
        """Each publisher has matched ``--expect-matches`` subscriptions and the earlier ones are gone: a
        re-subscribed reader is then matched at the writer, not only announced in the graph (a sample
        published between the two reaches nobody)."""
        need = args.expect_matches
        return all(name in matched and matched[name][0] >= need and matched[name][0] - matched[name][1] >= need - 1
                   and matched[name][1] >= 1 for name in pubs)
    def wait_for_subscribers() -> None:
        end = time.monotonic() + args.wait
        while time.monotonic() < end and not all(pub.get_subscription_count() for pub in pubs.values()):
            time.sleep(0.05)

    def subscribers_match() -> bool:
        """Every image subscriber is seen and, for a reliable driver, has re-subscribed reliable (qos auto
        does so within a second of seeing this publisher; on a loaded machine discovery takes longer)."""
        infos = [i for name in ("left/image_rect", "right/image_rect")
                 for i in node.get_subscriptions_info_by_topic(node.resolve_topic_name(name))]
        if not infos:
            return False
        return args.qos != "reliable" or all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos)

    wait_for_subscribers()
    time.sleep(2.5)  # let discovery settle both ways, and a node with qos auto re-subscribe (it checks every 1 s)
    end = time.monotonic() + args.wait
    while time.monotonic() < end and not subscribers_match():
        time.sleep(0.1)
    end = time.monotonic() + args.wait
    while time.monotonic() < end and not all_matched():  # implies every publisher has a subscriber
        rclpy.spin_once(node, timeout_sec=0.1)  # the matched events are delivered by spinning
    time.sleep(0.5)
    rng = np.random.default_rng(0)
    left = rng.integers(0, 255, (args.height, args.width, 3), np.uint8)
    right = np.roll(left, -6, axis=1)
    camera = StereoCamera.ideal(args.width, args.height, focal_px=float(args.width), baseline_m=0.1)
    period = 1.0 / args.rate
    t0 = time.monotonic()
    for i in range(args.count):
        time.sleep(max(0.0, t0 + i * period - time.monotonic()))
        stamp = time.time_ns()
        for side, image, offset in (("left", left, 0), ("right", right, int(args.right_offset_ms * 1e6))):
            msg_stamp = stamp + offset
            header = Image().header
            header.stamp.sec, header.stamp.nanosec = msg_stamp // 10**9, msg_stamp % 10**9
            header.frame_id = f"{side}_optical"
            info = CameraInfo(header=header, **getattr(camera, side).msg_fields())
            pubs[f"{side}/camera_info"].publish(info)
            pubs[f"{side}/image_rect"].publish(array_to_image(Image, image, "rgb8", header))
    time.sleep(0.5)
    print(json.dumps({"sent": args.count, "seconds": time.monotonic() - t0,
                      "subscribers": min(pub.get_subscription_count() for pub in pubs.values()),
                      "matched": matched}))
    node.destroy_node()
    rclpy.try_shutdown()


if __name__ == "__main__":
    main()
