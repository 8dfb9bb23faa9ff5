"""``m2s-calib``: stereo calibration from chessboard pairs or known intrinsics, rectification, calibration info."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from calib.camera import StereoCamera
from calib.console import CliParser, add_common_flags, finite_float, positive_float, run_command
from calib.errors import CalibrationError
from calib.image_io import read_rgb, write_rgb
from calib.safe_files import dumps_json, write_json_atomic
from calib.stereo_calibration import (
    DEFAULT_MAX_EPIPOLAR_PX,
    DEFAULT_MAX_RMS_PX,
    Board,
    Rectifier,
    calibrate_stereo,
    pair_image_files,
    quality_problems,
)

log = logging.getLogger("m2s-calib")


def _stereo(args: argparse.Namespace) -> int:
    if not 0.0 <= args.alpha <= 1.0:
        raise CalibrationError(f"--alpha must be in [0, 1], got {args.alpha}")
    board = Board.parse(args.board, args.square)
    camera, report = calibrate_stereo(args.left, args.right, board, alpha=args.alpha, progress=not args.quiet)
    problems = quality_problems(camera, report, args.max_rms, args.max_epipolar)
    if problems and not args.force:
        raise CalibrationError("calibration failed the quality gate, nothing written: " + "; ".join(problems)
                               + ". Fix the input, or pass --force to write it anyway")
    for problem in problems:
        log.warning("written despite the quality gate (--force): %s", problem)
    out = Path(args.out)
    result = {**report.to_dict(), "quality_gate": {"max_rms_px": args.max_rms, "max_epipolar_px": args.max_epipolar,
                                                   "problems": problems, "passed": not problems, "forced": bool(problems)}}
    write_json_atomic(out / "report.json", result)
    camera.to_dir(out)
    summary = {
        "pairs_used": report.pairs_used,
        "skipped": len(report.skipped),
        "rms_px": round(report.rms_px, 4),
        "epipolar_mean_px": round(report.epipolar_mean_px, 4),
        "focal_px": round(report.focal_px, 3),
        "baseline_m": round(report.baseline_m, 5),
        "quality_gate": "passed" if not problems else "forced",
        "out": str(out),
    }
    print(dumps_json(summary))
    return 0


def _rectify(args: argparse.Namespace) -> int:
    camera = StereoCamera.from_dir(args.calib)
    rectifier = Rectifier(camera)
    pairs, unpaired = pair_image_files(args.left, args.right)
    for path in unpaired:
        log.warning("skipping %s: no matching file on the other side", path)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for lp, rp in pairs:
        left, right = rectifier(read_rgb(lp), read_rgb(rp))
        write_rgb(out / f"rect_{lp.stem}.png", left)
        write_rgb(out / f"rect_{rp.stem}.png", right)
    print(dumps_json({"pairs": len(pairs), "out": str(out)}))
    return 0


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT in pixels, e.g. 640x480, got '{text}'") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"must be positive, got {w}x{h}")
    return w, h


def _intrinsics(args: argparse.Namespace) -> int:
    numbers = {f: getattr(args, f) for f in ("fx", "fy", "cx", "cy", "baseline", "size")}
    if args.from_bag:
        given = [f"--{k}" for k, v in numbers.items() if v is not None and k != "baseline"]
        if given:
            raise CalibrationError(f"--from-bag reads the camera from the bag's camera_info: give no {', '.join(given)} "
                                   "with it (only --baseline, for a driver whose right camera_info has no baseline)")
        from calib.rosbag_io import first_messages, stereo_camera_info_topics

        bag = Path(args.from_bag)
        topics = stereo_camera_info_topics(bag, args.left_info, args.right_info)
        msgs = first_messages(bag, topics)
        camera = StereoCamera.from_msgs(msgs[topics[0]], msgs[topics[1]], args.baseline)
        source = {"bag": str(bag), "camera_info_topics": list(topics)}
    else:
        missing = [f"--{k}" for k in ("fx", "cx", "cy", "baseline", "size") if numbers[k] is None]
        if missing:
            raise CalibrationError(f"give {', '.join(missing)} (the rectified intrinsics and baseline of the camera), "
                                   "or --from-bag BAG to read its camera_info")
        w, h = args.size
        if args.baseline > 2.0:
            log.warning("baseline %g m: is it in millimetres? Stereo cameras on robots have 3..30 cm (0.03..0.3)",
                        args.baseline)
        camera = StereoCamera.pinhole(w, h, fx=args.fx, fy=args.fy if args.fy is not None else args.fx, cx=args.cx,
                                      cy=args.cy, baseline_m=args.baseline)
        source = {"intrinsics": "given"}
    out = Path(args.out)
    there = [n for n in ("left.yaml", "right.yaml") if (out / n).exists()]
    if there and not args.overwrite:
        raise CalibrationError(f"{out} already holds {' and '.join(there)}: pass --overwrite to replace them, or choose "
                               "another --out")
    camera.to_dir(out)
    fb = camera.focal_px * camera.baseline_m
    w, h = camera.image_size
    print(dumps_json({
        **source, "out": str(out), "image_size": [w, h], "fx": camera.fx, "fy": camera.fy, "cx": camera.cx,
        "cy": camera.cy, "baseline_m": camera.baseline_m, "P_right_03": float(camera.right.P[0, 3]),
        # what a model can measure on this camera: the nearest depth for common maximum disparities
        "nearest_depth_m_at_max_disparity": {str(d): round(fb / d, 4) for d in (64, 128, 192, 256) if d < w},
    }, indent=2))
    return 0


def _info(args: argparse.Namespace) -> int:
    camera = StereoCamera.from_dir(args.calib)
    w, h = camera.image_size
    print(dumps_json({
        "image_size": [w, h], "focal_px": camera.focal_px, "baseline_m": camera.baseline_m,
        "cx": camera.cx, "cy": camera.cy, "doffs": camera.doffs, "Q": camera.q_matrix.tolist(),
    }, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(prog="m2s-calib", description="Stereo calibration and the camera model.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("stereo", help="calibrate a stereo pair from chessboard images",
                       description="Find the chessboard in left/right pairs, calibrate, rectify, and write "
                                   "left.yaml, right.yaml (ROS camera_info) and report.json to --out. "
                                   "Left/right files are paired by what the glob wildcards match "
                                   "(left07.jpg <-> right07.jpg); pairs without a visible board are skipped.")
    p.add_argument("--left", required=True, help="glob of left images, quoted, e.g. 'data/left*.jpg'")
    p.add_argument("--right", required=True, help="glob of right images, quoted, e.g. 'data/right*.jpg'")
    p.add_argument("--board", default="9x6", help="inner corners per row x per column (default: 9x6)")
    p.add_argument("--square", type=positive_float, default=0.025,
                   help="chessboard square size in metres (default: 0.025)")
    p.add_argument("--alpha", type=finite_float, default=0.0,
                   help="rectification free scaling in [0, 1]: 0 crops to valid pixels, 1 keeps all (default: 0)")
    p.add_argument("--out", required=True, help="output directory for left.yaml, right.yaml, report.json")
    p.add_argument("--max-rms", type=positive_float, default=DEFAULT_MAX_RMS_PX,
                   help=f"quality gate: largest RMS reprojection error accepted, px (default {DEFAULT_MAX_RMS_PX:g})")
    p.add_argument("--max-epipolar", type=positive_float, default=DEFAULT_MAX_EPIPOLAR_PX,
                   help="quality gate: largest mean rectified epipolar error |y_L - y_R| accepted, px "
                        f"(default {DEFAULT_MAX_EPIPOLAR_PX:g})")
    p.add_argument("--force", action="store_true",
                   help="write the calibration even if it fails the quality gate (RMS, epipolar error, focal length, "
                        "baseline)")
    add_common_flags(p)
    p.set_defaults(handler=_stereo)

    p = sub.add_parser("rectify", help="rectify image pairs with a calibration",
                       description="Apply a calibration (left.yaml/right.yaml) to raw image pairs; writes PNGs.")
    p.add_argument("--calib", required=True, help="directory with left.yaml and right.yaml")
    p.add_argument("--left", required=True, help="glob of raw left images, quoted")
    p.add_argument("--right", required=True, help="glob of raw right images, quoted")
    p.add_argument("--out", required=True, help="output directory for rect_*.png")
    add_common_flags(p)
    p.set_defaults(handler=_rectify)

    p = sub.add_parser(
        "intrinsics", help="camera_info YAMLs from known intrinsics (a factory-calibrated camera) or a bag",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write left.yaml and right.yaml (ROS camera_info of a rectified pair: K = P[:, :3], R = I, no "
                    "distortion, P_R[0,3] = -fx * baseline) from the numbers a factory-calibrated stereo camera "
                    "reports for its rectified images, or copy them from a bag's camera_info topics.",
        epilog="Where a RealSense, ZED, OAK-D or a USB pair shows these numbers, and the topics to record for "
               "--from-bag: docs/cameras.md. Any ROS 2 driver publishing camera_info: record a few seconds, use "
               "--from-bag.")
    p.add_argument("--fx", type=positive_float, help="focal length, px (rectified)")
    p.add_argument("--fy", type=positive_float, help="vertical focal length, px (default: --fx)")
    p.add_argument("--cx", type=finite_float, help="principal point x, px")
    p.add_argument("--cy", type=finite_float, help="principal point y, px")
    p.add_argument("--baseline", type=positive_float,
                   help="distance between the optical centres, metres (with --from-bag: for a driver whose right "
                        "camera_info has P[0,3] = 0 or > 0)")
    p.add_argument("--size", type=_size, help="image size WIDTHxHEIGHT, px (e.g. 640x480)")
    p.add_argument("--from-bag", metavar="BAG", help="read the first left/right camera_info of this rosbag2 instead")
    p.add_argument("--left-info", metavar="TOPIC", help="--from-bag: the left camera_info topic (default: found by name)")
    p.add_argument("--right-info", metavar="TOPIC", help="--from-bag: the right camera_info topic (default: found by name)")
    p.add_argument("--out", required=True, help="output directory for left.yaml and right.yaml")
    p.add_argument("--overwrite", action="store_true", help="replace left.yaml / right.yaml already in --out")
    add_common_flags(p)
    p.set_defaults(handler=_intrinsics)

    p = sub.add_parser("info", help="print focal length, baseline and Q of a calibration")
    p.add_argument("--calib", required=True, help="directory with left.yaml and right.yaml")
    add_common_flags(p)
    p.set_defaults(handler=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.handler, args)


if __name__ == "__main__":
    sys.exit(main())
