"""Shared fixtures: real example data from Debian opencv-doc (skipped with a reason where absent).

ROS tests (the node, live replay, the quickstart) talk over real DDS on loopback: a private
domain per session on localhost keeps other ROS traffic on the machine out of them.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

from calib.example_data import find_opencv_examples

os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(20, 100)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


@pytest.fixture(scope="session")
def opencv_data() -> Path:
    found = find_opencv_examples()
    if found is None:
        pytest.skip("Debian opencv-doc example data not available; run 'python -m calib.example_data fetch'")
    return found


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def folder_dataset(tmp_path):
    """A tiny dense-GT dataset in the generic folder layout (left/, right/, disparity/*.npy: a raised square on a
    plane) with a sharp affine "monocular" teacher per left image: returns (root, teachers)."""
    cv2 = pytest.importorskip("cv2")

    def make(count: int, width: int, square_cols: tuple[int, int], height: int = 64, shift: int = 0,
             seed: int = 3) -> tuple[Path, Path]:
        rng = np.random.default_rng(seed)
        root, teachers = tmp_path / "data", tmp_path / "teachers"
        for sub in ("left", "right", "disparity"):
            (root / sub).mkdir(parents=True)
        teachers.mkdir()
        for i in range(count):
            left = cv2.resize(rng.uniform(0, 255, (6, 8, 3)).astype(np.float32), (width, height)).astype(np.uint8)
            disp = np.full((height, width), 8.0, np.float32)
            disp[20:44, square_cols[0]:square_cols[1]] = 16.0
            cv2.imwrite(str(root / "left" / f"{i}.png"), left)
            cv2.imwrite(str(root / "right" / f"{i}.png"), np.roll(left, -shift, axis=1))
            np.save(root / "disparity" / f"{i}.npy", disp)
            np.save(teachers / f"{i:06d}.npy", 0.1 * disp + 1.0)
        return root, teachers

    return make
