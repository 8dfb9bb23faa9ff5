"""The diagnostics rules on a simulated clock (no ROS needed)."""

from __future__ import annotations

import pytest

from m2s_stereo.health import ERROR, OK, STALE, WARN, PipelineHealth


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def run(h: PipelineHealth, clock: Clock, seconds: float, hz: float = 10.0, bad: bool = False, pair: bool = True) -> None:
    for _ in range(int(seconds * hz)):
        clock.t += 1.0 / hz
        h.add("left")
        h.add("right")
        if pair:
            h.add("pairs")
            h.error("no camera_info") if bad else h.add("published")


def test_levels_follow_the_window_not_history():
    clock = Clock()
    h = PipelineHealth(window=2.0, clock=clock)
    assert h.status().level == STALE and "no image received yet" in h.status().message
    run(h, clock, 1.0, bad=True)
    assert h.status().level == ERROR
    run(h, clock, 1.0)
    assert h.status().level == WARN  # some bad frames in the last 2 s
    run(h, clock, 2.5)
    s = h.status()
    assert s.level == OK and s.values["bad_total"] == 10 and s.values["bad_last_2s"] == 0
    assert s.values["input_fps"] == pytest.approx(10.0, rel=0.05)
    clock.t += 0.6  # five periods of 10 Hz
    assert h.status().level == STALE
    clock.t += 2.0
    assert h.status().values["input_fps"] == 0.0  # decays, instead of the last value for ever


def test_unpaired_inputs_are_sync_starvation():
    clock = Clock()
    h = PipelineHealth(window=2.0, clock=clock)
    for _ in range(20):
        clock.t += 0.1
        h.add("left")
        h.add("right")
        h.sample("stamp_offset_ms", 1.0)
    s = h.status()
    assert s.level == WARN and "none pair up" in s.message and "1.0 ms" in s.message and "approximate" in s.message


def test_stale_timeout_follows_the_input_rate_or_the_parameter():
    clock = Clock()
    h = PipelineHealth(window=5.0, clock=clock)
    run(h, clock, 5.0, hz=2.0)  # 2 Hz: five periods are 2.5 s
    clock.t += 2.0
    assert h.status().level == OK
    clock.t += 1.0
    assert h.status().level == STALE
    assert h.status(stale_timeout=10.0).level == OK


def test_every_frame_failed_names_the_current_failure():
    """The ERROR names the failure happening now, not the first one of its window."""
    clock = Clock()
    h = PipelineHealth(window=2.0, clock=clock)
    run(h, clock, 1.0, bad=True)  # "no camera_info"
    for _ in range(5):  # then every frame fails for another reason
        clock.t += 0.1
        h.add("left")
        h.add("right")
        h.add("pairs")
        h.error("camera_info is 64x48 but images are 128x96")
    s = h.status()
    assert s.level == ERROR and s.message.endswith("camera_info is 64x48 but images are 128x96"), s.message
