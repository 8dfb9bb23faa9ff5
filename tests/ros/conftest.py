"""ROS tests talk over real DDS on loopback: a private domain per test session keeps other ROS
traffic on the machine (and parallel sessions) out of them."""

from __future__ import annotations

import os
import random

os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(20, 100)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
