"""Shared fixtures: real example data from Debian opencv-doc (skipped with a reason where absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from calib.example_data import find_opencv_examples


@pytest.fixture(scope="session")
def opencv_data() -> Path:
    found = find_opencv_examples()
    if found is None:
        pytest.skip("Debian opencv-doc example data not available; run 'python -m calib.example_data fetch'")
    return found


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
