"""Stereo calibration on OpenCV's real chessboard pairs (Debian opencv-doc) and its error paths."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from calib import CalibrationError, DataError, StereoCamera
from calib.cli import main as calib_main
from calib.stereo_calibration import Board, Rectifier, calibrate_stereo, find_corners, pair_image_files


@pytest.fixture(scope="module")
def calibrated(opencv_data):
    return calibrate_stereo(str(opencv_data / "left*.jpg"), str(opencv_data / "right*.jpg"),
                            Board.parse("9x6", 0.025), progress=False)


class TestRealPairs:
    def test_accuracy_bars(self, calibrated):
        camera, report = calibrated
        # 14 numbered pairs minus the absent left10/right10 = 13
        assert report.pairs_used == 13
        assert report.rms_px <= 0.5, report.rms_px
        assert report.epipolar_mean_px <= 0.3, report.epipolar_mean_px
        assert len(report.pairs) == 13 and all(p.rms_left_px > 0 for p in report.pairs)

    def test_plausible_geometry(self, calibrated):
        camera, _ = calibrated
        assert camera.image_size == (640, 480)
        assert 0.05 < camera.baseline_m < 0.12  # the sample rig's baseline is ~8 cm with 25 mm squares
        assert 400 < camera.focal_px < 700

    def test_photo_without_board_skipped_and_named(self, calibrated):
        _, report = calibrated
        reasons = " ".join(s["file"] + " " + s["reason"] for s in report.skipped)
        assert "left.jpg" in reasons and "board not found" in reasons

    def test_rectified_rows_align(self, calibrated, opencv_data):
        camera, _ = calibrated
        rect = Rectifier(camera)
        left = cv2.imread(str(opencv_data / "left01.jpg"))
        right = cv2.imread(str(opencv_data / "right01.jpg"))
        rl, rr = rect(left, right)
        board = Board.parse("9x6", 0.025)
        cl = find_corners(cv2.cvtColor(rl, cv2.COLOR_BGR2GRAY), board)
        cr = find_corners(cv2.cvtColor(rr, cv2.COLOR_BGR2GRAY), board)
        assert cl is not None and cr is not None
        assert np.abs(cl[:, 0, 1] - cr[:, 0, 1]).mean() < 0.5


class TestPairing:
    def test_pairs_by_wildcard_part(self, tmp_path):
        for name in ("left01.jpg", "left02.jpg", "left.jpg", "right02.jpg", "right01.jpg", "right03.jpg"):
            (tmp_path / name).write_bytes(b"x")
        pairs, unpaired = pair_image_files(str(tmp_path / "left*.jpg"), str(tmp_path / "right*.jpg"))
        assert [(a.name, b.name) for a, b in pairs] == [("left01.jpg", "right01.jpg"), ("left02.jpg", "right02.jpg")]
        assert sorted(p.name for p in unpaired) == ["left.jpg", "right03.jpg"]

    def test_no_match(self, tmp_path):
        with pytest.raises(CalibrationError, match="no files match"):
            pair_image_files(str(tmp_path / "l*.png"), str(tmp_path / "r*.png"))


def _copy_pairs(src: Path, dst: Path, ids) -> None:
    for i in ids:
        shutil.copy(src / f"left{i:02d}.jpg", dst / f"left{i:02d}.jpg")
        shutil.copy(src / f"right{i:02d}.jpg", dst / f"right{i:02d}.jpg")


class TestBadInput:
    def test_too_few_pairs(self, opencv_data, tmp_path):
        _copy_pairs(opencv_data, tmp_path, [1, 2])
        with pytest.raises(CalibrationError, match="only 2 usable pair"):
            calibrate_stereo(str(tmp_path / "left*.jpg"), str(tmp_path / "right*.jpg"), Board.parse("9x6", 0.025), progress=False)

    def test_unreadable_file_named(self, opencv_data, tmp_path):
        _copy_pairs(opencv_data, tmp_path, [1, 2, 3])
        (tmp_path / "right02.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
        with pytest.raises(DataError, match="right02.jpg"):
            calibrate_stereo(str(tmp_path / "left*.jpg"), str(tmp_path / "right*.jpg"), Board.parse("9x6", 0.025), progress=False)

    def test_size_mismatch_named(self, opencv_data, tmp_path):
        _copy_pairs(opencv_data, tmp_path, [1, 2, 3])
        img = cv2.imread(str(tmp_path / "right03.jpg"))
        cv2.imwrite(str(tmp_path / "right03.jpg"), cv2.resize(img, (800, 600)))
        with pytest.raises(CalibrationError, match="right03.jpg is 800x600"):
            calibrate_stereo(str(tmp_path / "left*.jpg"), str(tmp_path / "right*.jpg"), Board.parse("9x6", 0.025), progress=False)

    def test_swapped_sides_non_positive_baseline(self, opencv_data):
        with pytest.raises(CalibrationError, match="swapped"):
            calibrate_stereo(str(opencv_data / "right*.jpg"), str(opencv_data / "left*.jpg"), Board.parse("9x6", 0.025), progress=False)

    @pytest.mark.parametrize("pattern, square", [("9by6", 0.025), ("6x6", 0.025), ("9x6", 0.0), ("9x6", float("nan"))])
    def test_board_spec(self, pattern, square):
        with pytest.raises(CalibrationError):
            Board.parse(pattern, square)


class TestCli:
    def test_stereo_writes_camera_info_and_report(self, opencv_data, tmp_path, capsys):
        rc = calib_main(["stereo", "--left", str(opencv_data / "left*.jpg"), "--right", str(opencv_data / "right*.jpg"),
                         "--board", "9x6", "--square", "0.025", "--out", str(tmp_path), "--quiet"])
        assert rc == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["pairs_used"] == 13
        cam = StereoCamera.from_dir(tmp_path)
        report = json.loads((tmp_path / "report.json").read_text())
        assert report["baseline_m"] == pytest.approx(cam.baseline_m)
        assert report["rms_px"] <= 0.5
        assert calib_main(["info", "--calib", str(tmp_path)]) == 0

    def test_rectify_command(self, opencv_data, tmp_path, capsys):
        calib_dir = tmp_path / "cal"
        assert calib_main(["stereo", "--left", str(opencv_data / "left*.jpg"), "--right", str(opencv_data / "right*.jpg"),
                           "--out", str(calib_dir), "--quiet"]) == 0
        out = tmp_path / "rect"
        assert calib_main(["rectify", "--calib", str(calib_dir), "--left", str(opencv_data / "left0[12].jpg"),
                           "--right", str(opencv_data / "right0[12].jpg"), "--out", str(out), "--quiet"]) == 0
        assert sorted(p.name for p in out.iterdir()) == [
            "rect_left01.png", "rect_left02.png", "rect_right01.png", "rect_right02.png"]

    def test_error_is_one_line_without_traceback(self, opencv_data, tmp_path):
        _copy_pairs(opencv_data, tmp_path, [1])
        cmd = [sys.executable, "-m", "calib.cli", "stereo", "--left", str(tmp_path / "left*.jpg"),
               "--right", str(tmp_path / "right*.jpg"), "--out", str(tmp_path / "o"), "--quiet"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 2
        assert "Traceback" not in res.stderr
        assert res.stderr.strip().splitlines()[-1].startswith("error: only 1 usable pair")
        res = subprocess.run(cmd + ["--debug"], capture_output=True, text=True)
        assert res.returncode != 0 and "Traceback" in res.stderr

    def test_bad_alpha(self, tmp_path, capsys):
        assert calib_main(["stereo", "--left", "a*", "--right", "b*", "--out", str(tmp_path), "--alpha", "2"]) == 2
        assert "--alpha" in capsys.readouterr().err


class TestQualityGate:
    def test_gate_refuses_and_force_writes_with_the_problems_recorded(self, opencv_data, tmp_path, capsys):
        args = ["stereo", "--left", str(opencv_data / "left*.jpg"), "--right", str(opencv_data / "right*.jpg"),
                "--out", str(tmp_path / "cal"), "--quiet", "--max-rms", "0.2"]
        assert calib_main(args) == 2
        err = capsys.readouterr().err
        assert "quality gate, nothing written: RMS reprojection error 0.44" in err and "--force" in err
        assert not (tmp_path / "cal").exists()
        assert calib_main(args + ["--force"]) == 0
        report = json.loads((tmp_path / "cal" / "report.json").read_text())
        assert report["quality_gate"]["passed"] is False and report["quality_gate"]["forced"] is True
        assert "RMS" in report["quality_gate"]["problems"][0]

    def test_repeated_board_poses_are_not_counted_as_views(self, opencv_data, tmp_path, capsys):
        """Three copies of one pair calibrated with RMS 0.29 px and were written (OpenCV 4.12: 300 px epipolar
        error; 4.11: f = 1841 px): a degenerate solution. Duplicates are skipped, so it is too few pairs."""
        import shutil

        for i in range(3):
            shutil.copy(opencv_data / "left01.jpg", tmp_path / f"left0{i}.jpg")
            shutil.copy(opencv_data / "right01.jpg", tmp_path / f"right0{i}.jpg")
        assert calib_main(["stereo", "--left", str(tmp_path / "left*.jpg"), "--right", str(tmp_path / "right*.jpg"),
                           "--out", str(tmp_path / "cal"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "only 1 usable pair" in err and "same board pose as left00.jpg" in err
        assert not (tmp_path / "cal").exists()

    def test_epipolar_gate(self, calibrated):
        from calib.stereo_calibration import quality_problems

        camera, report = calibrated
        assert quality_problems(camera, report) == []
        assert "rectified epipolar error" in quality_problems(camera, report, max_epipolar_px=0.05)[0]

    @pytest.mark.parametrize("board, square, message", [("100000x3", 0.025, "not a real chessboard"),
                                                        ("9x6", 1e30, "square size must be"),
                                                        ("9x6", 1e-9, "square size must be")])
    def test_absurd_board_refused_before_any_work(self, board, square, message):
        with pytest.raises(CalibrationError, match=message):
            Board.parse(board, square)
