"""Synthesis from the robot's own recording: a bag topic or a video, camera-matched disparities,
resume giving identical samples, and bad input as one clear error. CLIs as subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("rosbags", reason="rosbags is not installed: pip install 'mono2stereo[ros]'")
pytest.importorskip("torch")

from calib import StereoCamera  # noqa: E402
from m2s_train.synth.shards import decode_sample, read_manifests  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _scene(rng, h=96, w=128):
    img = cv2.resize(rng.uniform(0, 255, (6, 8, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(5):
        cv2.circle(img, (int(rng.integers(10, w - 10)), int(rng.integers(10, h - 10))), int(rng.integers(6, 20)),
                   rng.uniform(0, 255, 3).tolist(), -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def _frames(n=6):
    """A camera panning over a scene, standing still for two frames (a near-duplicate)."""
    wide = _scene(np.random.default_rng(0), 96, 256)
    xs = [0, 12, 24, 24, 36, 48][:n]
    return [np.ascontiguousarray(wide[:, x : x + 128]) for x in xs]


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    from m2s_stereo.bag_tools import Frame, write_bag

    root = tmp_path_factory.mktemp("recording")
    camera = StereoCamera.ideal(128, 96, focal_px=100.0, baseline_m=0.12)
    frames = [Frame(10**9 + k * 10**8, f, f, camera) for k, f in enumerate(_frames())]
    write_bag(root / "bag", frames, storage="mcap")
    video = root / "walk.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (128, 96))
    for f in _frames():
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return root, camera


def _synth(*args, cwd):
    return subprocess.run([sys.executable, "-m", "m2s_train.cli", "synth", "--quiet", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def _samples(out: Path) -> dict[str, bytes]:
    return {e["sample_id"]: (out / "samples" / f"{e['sample_id']}.npz").read_bytes() for e in read_manifests(out)}


def test_from_a_bag_with_resume_and_camera_matched_range(recording, tmp_path):
    root, camera = recording
    args = ["--bag", root / "bag", "--topic", "left/image_rect", "--depth-range", "2.0", "6.0", "--max-side", "128"]
    first = _synth(*args, "--out", tmp_path / "a", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    report = json.loads(first.stdout)
    assert report["frames"]["seen"] == 6 and report["frames"]["near_duplicates"] == 1 and report["written"] == 5
    samples = _samples(tmp_path / "a")
    assert len(samples) == 5
    for sid in samples:
        s = decode_sample(tmp_path / "a" / "samples" / f"{sid}.npz")
        assert s.meta["source"].startswith("bag/left_image_rect/") and s.meta["source"].endswith(".png")
        # camera-matched: f B / MAX .. f B / MIN at the synthesis resolution (the camera's own here)
        lo, hi = 100.0 * 0.12 / 6.0, 100.0 * 0.12 / 2.0
        assert s.meta["min_disparity"] == pytest.approx(lo) and s.meta["max_disparity"] == pytest.approx(hi)
        assert s.meta["camera_range"]["disparity_px"] == pytest.approx([lo, hi])
        assert np.nanmin(s.disparity) >= lo - 1e-4 and np.nanmax(s.disparity) <= hi + 1e-4
        assert np.nanmax(s.disparity) > hi - 0.5 and np.nanmin(s.disparity) < lo + 0.5
    # a killed run resumed, and a fresh run elsewhere, give the same bytes
    next(iter((tmp_path / "a" / "samples").glob("*.npz"))).unlink()
    again = _synth(*args, "--out", tmp_path / "a", "--resume", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _samples(tmp_path / "a") == samples
    other = _synth(*args, "--out", tmp_path / "b", cwd=ROOT)  # another working directory
    assert other.returncode == 0 and _samples(tmp_path / "b") == samples


def test_from_a_video(recording, tmp_path):
    root, _ = recording
    if not cv2.VideoCapture(str(root / "walk.avi")).isOpened():
        pytest.skip("this OpenCV build cannot read back an MJPG AVI")
    args = ["--video", root / "walk.avi", "--every", "1", "--min-change", "2", "--max-side", "128"]
    res = _synth(*args, "--out", tmp_path / "v", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout)
    assert report["frames"]["seen"] == 6 and report["written"] == 6 - report["frames"]["near_duplicates"] >= 4
    samples = _samples(tmp_path / "v")
    (tmp_path / "v" / "samples" / f"{sorted(samples)[0]}.npz").unlink()
    assert _synth(*args, "--out", tmp_path / "v", "--resume", cwd=tmp_path).returncode == 0
    assert _samples(tmp_path / "v") == samples
    assert all(sid.startswith("walk_avi") for sid in samples)


@pytest.mark.parametrize("extra, message", [
    (["--topic", "front/image_raw"], r"no topic 'front/image_raw'; it has: .*left/image_rect \(Image\)"),
    (["--topic", "left/camera_info"], r"carries sensor_msgs/msg/CameraInfo, not an image"),
    (["--depth-range", "6", "2"], r"--depth-range needs 0 < MIN < MAX metres, got 6 2"),
    (["--depth-range", "0", "2"], r"argument --depth-range: must be > 0"),
    (["--camera", "CALIB_WRONG", "--depth-range", "1", "5"], r"the camera_info is 64x64 but the images are 128x96"),
    (["--images", "x", "--depth-range", "1", "5"], r"give exactly one of --images, --bag, --video"),
    (["--start", "5", "--end", "2"], r"--end \(2.0 s\) must be after --start \(5.0 s\)"),
    # a near end the image cannot hold: refused up front (it wrote 0 samples and exited 0)
    (["--depth-range", "0.001", "10"], r"MIN 0.001 m needs a disparity of f B / MIN = 12000.0 px, more than the image "
                                       r"width \(128 px\); the nearest depth this camera can give is 0.0938 m"),
])
def test_bad_input_is_one_error_line_and_nothing_written(recording, tmp_path, extra, message):
    import re

    root, _ = recording
    wrong = StereoCamera.ideal(64, 64, focal_px=50.0, baseline_m=0.1)
    wrong.to_dir(tmp_path / "calib_wrong")
    extra = [str(tmp_path / "calib_wrong") if a == "CALIB_WRONG" else a for a in extra]
    res = _synth("--bag", root / "bag", *extra, "--out", tmp_path / "o", cwd=tmp_path)
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert re.search(message, lines[0]), lines[0]
    # nothing left behind: not even the frames extracted before the camera_info shape was found wrong
    assert not (tmp_path / "o").exists(), sorted(str(p) for p in (tmp_path / "o").rglob("*"))


def _write_video(path: Path, frames: list[np.ndarray]) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (128, 96))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()


def test_a_recording_replaced_under_its_name_is_synthesized_anew(recording, tmp_path):
    """Frames are keyed by content, as photos are: --resume after the video was replaced by another kept the
    old video's frames and wrote nothing new."""
    root, _ = recording
    if not cv2.VideoCapture(str(root / "walk.avi")).isOpened():
        pytest.skip("this OpenCV build cannot read back an MJPG AVI")
    video = tmp_path / "w.avi"
    _write_video(video, _frames())
    args = ["--video", video, "--min-change", "0", "--max-side", "128"]
    assert _synth(*args, "--out", tmp_path / "o", cwd=tmp_path).returncode == 0
    before = _samples(tmp_path / "o")
    other = [np.ascontiguousarray(255 - f[:, ::-1]) for f in _frames()]  # another walk, same length and name
    _write_video(video, other)
    res = _synth(*args, "--out", tmp_path / "o", "--resume", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    after = _samples(tmp_path / "o")
    assert set(after) == set(before) and all(after[k] != before[k] for k in after)  # every sample made again
    fresh_dir = tmp_path / "fresh"
    fresh_dir.mkdir()
    _write_video(fresh_dir / "w.avi", other)
    fresh = _synth("--video", fresh_dir / "w.avi", "--min-change", "0", "--max-side", "128", "--out", tmp_path / "f",
                   cwd=tmp_path)
    assert fresh.returncode == 0 and _samples(tmp_path / "f") == after  # as if the old video had never been there


def test_a_damaged_bag_is_read_as_far_as_it_goes(recording, tmp_path):
    """synth --bag reads the truncated bags m2s-eval-bag reads (one salvage path for every reader)."""
    import shutil

    root, _ = recording
    shutil.copytree(root / "bag", tmp_path / "bag")
    f = next((tmp_path / "bag").glob("*.mcap"))
    data = f.read_bytes()
    f.write_bytes(data[: int(len(data) * 0.7)])
    res = _synth("--bag", tmp_path / "bag", "--topic", "left/image_rect", "--max-side", "128", "--out", tmp_path / "o",
                 cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "is damaged" in res.stderr and 1 <= json.loads(res.stdout)["written"] < 5


def test_video_runs_that_fail_leave_nothing_and_ranges_too_wide_are_named(tmp_path):
    """#39 kind 10: a --video run that wrote no sample left dataset.json, frames/ and samples/ behind; --video DIR
    said 'not found' for a folder that exists; --depth-range 0.15 10 on 256-px images wrote 170 px disparities
    without a word."""
    from calib import StereoCamera

    tiny = tmp_path / "tiny.avi"
    writer = cv2.VideoWriter(str(tiny), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    rng = np.random.default_rng(0)
    for _ in range(3):
        writer.write(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    writer.release()
    res = _synth("--video", tiny, "--out", "ds", cwd=tmp_path)  # every frame below min_side: nothing written
    assert res.returncode == 2 and "no sample was written" in res.stderr
    assert not (tmp_path / "ds").exists()
    res = _synth("--video", tmp_path, "--out", "ds2", cwd=tmp_path)
    assert res.returncode == 2 and "is a folder, not a video file" in res.stderr and not (tmp_path / "ds2").exists()
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        scene = cv2.resize(rng.uniform(0, 255, (6, 8, 3)).astype(np.float32), (256, 192)).astype(np.uint8)
        cv2.imwrite(str(photos / f"p{i}.png"), scene)
    StereoCamera.ideal(256, 192, focal_px=256.0, baseline_m=0.1).to_dir(tmp_path / "cam")
    res = _synth("--images", photos, "--camera", tmp_path / "cam", "--depth-range", "0.15", "10", "--out", "ds3",
                 cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "--depth-range from 0.15 m gives disparities up to 171 px on these 256-px wide images" in res.stderr
