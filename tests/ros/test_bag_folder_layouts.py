"""``m2s-bag make --from folder:``: both folder layouts (left/ + right/, and NAME_left / NAME_right as a
camera's tools save pairs), grey images kept as mono8 / mono16 as the driver publishes them, and the
layouts in --help. The CLI as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("rosbags", reason="rosbags is not installed: pip install 'mono2stereo[ros]'")

from calib.rosbag_io import raw_messages, typestore  # noqa: E402
from m2s_stereo.bag_tools import read_frames  # noqa: E402


def _bag(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "m2s_stereo.bag_cli", "make", "--quiet", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


def _encodings(bag: Path) -> set[str]:
    ts = typestore()
    _, stream = raw_messages(bag)
    return {ts.deserialize_cdr(raw, m).encoding for t, m, raw in stream if t.endswith("image_rect")}


def _grey(rng, dtype=np.uint8):
    top = np.iinfo(dtype).max
    return rng.integers(0, top, (48, 64), dtype=dtype)


def test_name_left_name_right_in_grey_becomes_a_mono8_bag(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "shots"
    src.mkdir()
    views = {}
    for name in ("desk", "door"):
        for side in ("left", "right"):
            views[name, side] = _grey(rng)
            cv2.imwrite(str(src / f"{name}_{side}.png"), views[name, side])
    res = _bag("--from", "folder:shots", "--out", "bag", cwd=tmp_path)  # relative: the caller's directory
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["frames"] == 2 and _encodings(tmp_path / "bag") == {"mono8"}
    frames = list(read_frames(tmp_path / "bag"))
    assert np.array_equal(frames[0].left[..., 0], views["desk", "left"])  # pairs in name order, bytes kept
    assert np.array_equal(frames[1].right[..., 1], views["door", "right"])
    # the same pictures as rgb8 on request (3x the bytes)
    assert _bag("--from", "folder:shots", "--out", "bag_rgb", "--encoding", "rgb8", cwd=tmp_path).returncode == 0
    assert _encodings(tmp_path / "bag_rgb") == {"rgb8"}


def test_sixteen_bit_grey_stays_mono16(tmp_path):
    rng = np.random.default_rng(1)
    for side in ("left", "right"):
        (tmp_path / "pairs" / side).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "pairs" / side / "0.png"), _grey(rng, np.uint16))
    assert _bag("--from", "folder:pairs", "--out", "bag", cwd=tmp_path).returncode == 0
    assert _encodings(tmp_path / "bag") == {"mono16"}


@pytest.mark.parametrize("files, extra, message", [
    ({"a_left.png": "grey"}, [], r"a_left.png has no partner"),
    ({"notes.txt": None}, [], r"holds no stereo pairs\s+folder:DIR layouts"),
    ({"a_left.png": "grey", "a_right.png": "colour"}, [], r"a_right.png is rgb8 but the first image was mono8"),
    ({"a_left.png": "grey", "a_right.png": "grey"}, ["--encoding", "mono16"], r"mono16 needs 16-bit grey images"),
])
def test_bad_folders_are_one_error_line_and_no_bag(tmp_path, files, extra, message):
    import re

    rng = np.random.default_rng(2)
    (tmp_path / "src").mkdir()
    for name, kind in files.items():
        if kind is None:
            (tmp_path / "src" / name).write_text("x")
        else:
            cv2.imwrite(str(tmp_path / "src" / name), _grey(rng) if kind == "grey" else rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    res = _bag("--from", "folder:src", "--out", "bag", *extra, cwd=tmp_path)
    assert res.returncode == 2 and re.search(message, res.stderr), res.stderr
    assert not (tmp_path / "bag").exists()


def test_help_names_the_layouts():
    res = subprocess.run([sys.executable, "-m", "m2s_stereo.bag_cli", "make", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert "DIR/NAME_left.png + DIR/NAME_right.png" in res.stdout and "DIR/left/NAME.png" in res.stdout
