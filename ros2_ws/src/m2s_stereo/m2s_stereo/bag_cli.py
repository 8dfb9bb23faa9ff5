"""``m2s-bag``: make stereo bags from image folders, KITTI 2015 or a synthesized dataset; summarise bags.

    m2s-bag make --from folder:DIR --out BAG [--calib CALIB_DIR] [--encoding auto] [--storage mcap] [--rate 10]
    m2s-bag make --from kitti2015:DIR --out BAG          (or kitti2012:DIR)
    m2s-bag make --from synth:DATASET --out BAG [--focal 500 --baseline 0.1]
    m2s-bag make --from synth:DATASET --out BAG --limit 2 --hold 15 --noise 3    (a sequence: 2 static scenes
        of 15 frames each under fresh sensor noise, with exact GT; m2s-eval-bag reports its flicker and step response)
    m2s-bag info BAG
    m2s-bag labels --bag BAG --cloud lidar/points [--extrinsic T_cam_lidar.yaml] --out DATASET
        (sparse disparity GT from the bag's LiDAR for m2s-train finetune --dataset folder:DATASET)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from calib import StereoCamera
from calib.console import (
    CliParser,
    add_common_flags,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run_command,
)
from calib.safe_files import dumps_json
from m2s_stereo.bag_tools import (
    BAG_ENCODINGS,
    FOLDER_LAYOUTS,
    BagError,
    TopicNames,
    add_topic_flags,
    bag_info,
    extrinsic_from_yaml,
    frames_from_folder,
    frames_from_kitti,
    frames_from_synth,
    held_sequence,
    lidar_labels,
    lidar_messages,
    simulated_lidar,
    write_bag,
)


def _make(args: argparse.Namespace) -> int:
    kind, _, path = args.source.partition(":")
    root = Path(path)
    if not path or not root.exists():
        raise BagError(f"--from must be kind:PATH with an existing PATH, got '{args.source}'")
    start = time.time_ns() if args.start_now else 1_700_000_000 * 10**9
    if kind == "folder":
        camera = StereoCamera.from_dir(args.calib) if args.calib else None
        frames = frames_from_folder(root, camera, args.rate, start, args.encoding)
    elif kind in ("kitti2015", "kitti2012"):
        frames = frames_from_kitti(root, int(kind[-4:]), args.rate, start)
    elif kind == "synth":
        frames = frames_from_synth(root, args.rate, start, args.focal, args.baseline)
    else:
        raise BagError(f"unknown source kind '{kind}': use folder, kitti2015, kitti2012 or synth")
    if args.limit:
        import itertools

        frames = itertools.islice(frames, args.limit)
    if args.hold > 1 or args.noise > 0:
        frames = held_sequence(frames, args.hold, args.noise, args.rate, start, args.seed)
    extra = None
    if args.simulate_lidar:
        pairs = list(simulated_lidar(frames, seed=args.seed))
        frames = [f for f, _ in pairs]
        extra = lidar_messages([(f.stamp_ns, p) for f, p in pairs])
    n = write_bag(args.out, frames, storage=args.storage, extra=extra)
    print(dumps_json({"bag": args.out, "frames": n, "storage": args.storage}))
    return 0


def _labels(args: argparse.Namespace) -> int:
    extrinsic = extrinsic_from_yaml(args.extrinsic) if args.extrinsic else None
    summary = lidar_labels(args.bag, args.cloud, args.out, extrinsic, max_dt=args.max_dt, window=args.window,
                           progress=not args.quiet, names=TopicNames.from_args(args), baseline_m=args.baseline)
    print(dumps_json({k: v for k, v in summary.items() if k != "per_frame"} | {"out": args.out}))
    return 0


def _info(args: argparse.Namespace) -> int:
    info = bag_info(args.bag, TopicNames.from_args(args))
    print(dumps_json(info, indent=2))
    return 1 if info["problems"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = CliParser(prog="m2s-bag", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make", help="write a stereo bag (left/right image_rect, camera_info, optional gt/disparity)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=FOLDER_LAYOUTS)
    p.add_argument("--from", dest="source", required=True,
                   help="folder:DIR (layouts below) | kitti2015:DIR | kitti2012:DIR | synth:DATASET")
    p.add_argument("--encoding", choices=BAG_ENCODINGS, default="auto",
                   help="folder source: image encoding in the bag; auto (default) keeps grey images as mono8 / mono16, "
                        "as the camera's driver publishes them, and colour as rgb8")
    p.add_argument("--out", required=True, help="new bag directory")
    p.add_argument("--storage", choices=["sqlite3", "mcap"], default="sqlite3", help="rosbag2 storage (default sqlite3)")
    p.add_argument("--rate", type=positive_float, default=10.0, help="frames per second of the stamps (default 10)")
    p.add_argument("--calib", help="folder source: calibration dir with left.yaml/right.yaml (else an ideal camera)")
    p.add_argument("--focal", type=positive_float, help="synth source: focal length, px (default: image width)")
    p.add_argument("--baseline", type=positive_float, default=0.1, help="synth source: baseline, m (default 0.1)")
    p.add_argument("--limit", type=positive_int, help="use at most N source frames")
    p.add_argument("--hold", type=positive_int, default=1,
                   help="show each source frame N times in a row (a static scene, then a change; default 1)")
    p.add_argument("--noise", type=non_negative_float, default=0.0,
                   help="Gaussian sensor noise added to every frame, grey levels (std; default 0)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the noise (default 0)")
    p.add_argument("--simulate-lidar", action="store_true",
                   help="also write lidar/points (PointCloud2 from the GT disparity on 32 scan rows, a LiDAR at the "
                        "left camera) and /tf_static: a recording to try m2s-bag labels on")
    p.add_argument("--start-now", action="store_true", help="stamp from the current time (default: a fixed epoch)")
    add_common_flags(p)
    p.set_defaults(handler=_make)
    p = sub.add_parser("labels", help="sparse disparity GT for the bag's stereo pairs from its LiDAR (PointCloud2)")
    p.add_argument("--bag", required=True, help="a stereo bag (left/right images + camera_info) with a LiDAR topic")
    p.add_argument("--cloud", required=True, help="the sensor_msgs/PointCloud2 topic")
    p.add_argument("--extrinsic", help="YAML with T_cam_lidar (4x4) or translation + rotation (quaternion x y z w): "
                   "LiDAR -> left camera optical frame (default: the bag's /tf_static)")
    p.add_argument("--max-dt", type=positive_float, default=0.05,
                   help="largest time between a pair and its cloud, seconds (default 0.05)")
    p.add_argument("--window", type=positive_int, default=5,
                   help="z-buffer window for points hidden from the camera by the LiDAR-camera parallax, px (odd)")
    p.add_argument("--out", required=True, help="new dataset directory (left/, right/, disparity/ KITTI PNGs, labels.json)")
    p.add_argument("--baseline", type=positive_float,
                   help="stereo baseline, metres, for a driver whose right camera_info has P[0,3] = 0 or > 0")
    add_topic_flags(p)
    add_common_flags(p)
    p.set_defaults(handler=_labels)
    p = sub.add_parser("info", help="topics, counts, rates, gaps and stamp problems of a bag (exit 1 on problems)")
    p.add_argument("bag")
    add_topic_flags(p)
    add_common_flags(p)
    p.set_defaults(handler=_info)
    args = parser.parse_args(argv)
    return run_command(args.handler, args)


if __name__ == "__main__":
    sys.exit(main())
