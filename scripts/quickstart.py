"""Quickstart: the Mono2Stereo chain on the embedded default (real Debian opencv-doc data).

Steps run today:
  1. calibrate the real chessboard stereo pairs (13 pairs, 9x6 board) -> camera_info YAML + report.

Later stages (synthesis, pre-training, evaluation, export, ROS replay) join this script as
they land. Outputs go under --out; a JSON summary is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from calib.console import add_common_flags, run_command
from calib.example_data import require_opencv_examples
from calib.stereo_calibration import Board, calibrate_stereo


def _step(title: str) -> None:
    print(f"\n== {title}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    data = require_opencv_examples()
    summary: dict[str, object] = {"data": str(data), "out": str(out)}
    t0 = time.perf_counter()

    _step("1. stereo calibration on the real chessboard pairs (opencv-doc left*/right*.jpg, 9x6)")
    camera, report = calibrate_stereo(str(data / "left*.jpg"), str(data / "right*.jpg"),
                                      Board.parse("9x6", 0.025), progress=not args.quiet)
    calib_dir = out / "calib"
    camera.to_dir(calib_dir)
    (calib_dir / "report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    print(f"   pairs used: {report.pairs_used} (skipped {len(report.skipped)}: "
          f"{', '.join(Path(s['file'].split(' | ')[0]).name for s in report.skipped) or '-'})", file=sys.stderr)
    print(f"   RMS reprojection error: {report.rms_px:.3f} px; rectified epipolar error: "
          f"{report.epipolar_mean_px:.3f} px mean, {report.epipolar_max_px:.3f} px max", file=sys.stderr)
    print(f"   f = {camera.focal_px:.2f} px, baseline = {camera.baseline_m * 1000:.2f} mm -> {calib_dir}/left.yaml, right.yaml",
          file=sys.stderr)
    summary["calibration"] = {
        "dir": str(calib_dir), "pairs_used": report.pairs_used, "rms_px": report.rms_px,
        "epipolar_mean_px": report.epipolar_mean_px, "focal_px": camera.focal_px, "baseline_m": camera.baseline_m,
    }

    summary["seconds"] = round(time.perf_counter() - t0, 2)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quickstart", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="quickstart_out", help="output directory (default: quickstart_out)")
    add_common_flags(parser)
    return run_command(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
