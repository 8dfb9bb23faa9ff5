"""``m2s-calib intrinsics``: camera_info YAMLs from a factory-calibrated camera's numbers or from a bag,
with the ROS conventions (P_R[0,3] = -fx B) checked, as a user runs it (subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from calib import StereoCamera

ROOT = Path(__file__).resolve().parents[2]


def _calib(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "calib.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_known_intrinsics_give_the_camera_info_a_ros_driver_would_publish(tmp_path):
    res = _calib("intrinsics", "--fx", 451, "--fy", 450.5, "--cx", 318.2, "--cy", 241.7, "--baseline", 0.075, "--size",
                 "640x480", "--out", "cam", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    cam = StereoCamera.from_dir(tmp_path / "cam")  # relative --out: the caller's directory
    assert cam.image_size == (640, 480) and cam.fx == 451 and cam.fy == 450.5 and (cam.cx, cam.cy) == (318.2, 241.7)
    assert cam.baseline_m == pytest.approx(0.075) and cam.right.P[0, 3] == pytest.approx(-451 * 0.075)
    assert cam.doffs == 0 and np.array_equal(cam.left.R, np.eye(3)) and not cam.left.D.any()
    # what a model can measure on it, said up front: f B / 64 = 0.53 m for a 64 px model
    assert report["nearest_depth_m_at_max_disparity"]["64"] == pytest.approx(451 * 0.075 / 64, abs=1e-4)
    again = _calib("intrinsics", "--fx", 451, "--cx", 318, "--cy", 240, "--baseline", 0.075, "--size", "640x480",
                   "--out", "cam", cwd=tmp_path)
    assert again.returncode == 2 and "already holds left.yaml and right.yaml: pass --overwrite" in again.stderr
    assert StereoCamera.from_dir(tmp_path / "cam").fy == 450.5  # untouched


@pytest.mark.parametrize("args, message", [
    (["--fx", "451"], r"give --cx, --cy, --baseline, --size"),
    (["--fx", "0.001", "--cx", "320", "--cy", "240", "--baseline", "0.075", "--size", "640x480"],
     r"fx = 0.001 px is not a focal length of a 640x480 camera"),
    (["--fx", "451", "--cx", "320", "--cy", "240", "--baseline", "0.075", "--size", "640by480"],
     r"--size: expected WIDTHxHEIGHT"),
    (["--fx", "451", "--cx", "320", "--cy", "240", "--baseline", "-0.075", "--size", "640x480"], r"--baseline: must be > 0"),
    (["--fx", "451", "--from-bag", "x"], r"--from-bag reads the camera from the bag's camera_info: give no --fx"),
])
def test_bad_numbers_are_one_error_line_and_nothing_written(tmp_path, args, message):
    import re

    res = _calib("intrinsics", *args, "--out", tmp_path / "cam", cwd=tmp_path)
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 2 and len(lines) == 1 and re.search(message, lines[0]), res.stderr
    assert not (tmp_path / "cam").exists()


def test_a_millimetre_baseline_is_questioned(tmp_path):
    res = _calib("intrinsics", "--fx", 451, "--cx", 320, "--cy", 240, "--baseline", 75, "--size", "640x480", "--out",
                 "cam", cwd=tmp_path)
    assert res.returncode == 0 and "is it in millimetres?" in res.stderr


def test_from_a_bag_recorded_with_the_driver(tmp_path):
    pytest.importorskip("rosbags")
    from m2s_stereo.bag_tools import Frame, write_bag

    truth = StereoCamera.pinhole(320, 240, fx=225.5, fy=225.0, cx=160.2, cy=119.4, baseline_m=0.12)
    img = np.zeros((240, 320, 3), np.uint8)
    write_bag(tmp_path / "bag", [Frame(10**9, img, img, truth)], storage="mcap")
    res = _calib("intrinsics", "--from-bag", "bag", "--out", "cam", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    got = StereoCamera.from_dir(tmp_path / "cam")
    assert got.image_size == truth.image_size
    assert np.array_equal(got.left.P, truth.left.P) and np.array_equal(got.right.P, truth.right.P)
    assert json.loads(res.stdout)["camera_info_topics"] == ["left/camera_info", "right/camera_info"]
    bad = _calib("intrinsics", "--from-bag", "bag", "--left-info", "/front/camera_info", "--out", "c2", cwd=tmp_path)
    assert bad.returncode == 2 and "has no CameraInfo topic '/front/camera_info'" in bad.stderr
