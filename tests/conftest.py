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
