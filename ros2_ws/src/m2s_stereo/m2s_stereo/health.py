"""What the node's diagnostics say, computed from what happened in the last few seconds.

Pure Python (no ROS), so the rules are tested directly: counters and rates over a sliding
window (a frame that went bad a minute ago is not a WARN now), STALE when the inputs stop,
ERROR when every recent frame failed, WARN when some did or when left and right images arrive
but never pair up (free-running cameras under exact sync), and latency from the moment a pair
was received to the moment its outputs were published (header stamps of another clock, e.g. a
camera's own counter, would be meaningless; the stamp latency is reported only when the stamps
agree with the node's clock).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import numpy as np

OK, WARN, ERROR, STALE = 0, 1, 2, 3  # diagnostic_msgs/DiagnosticStatus levels
EVENTS = ("left", "right", "left_info", "right_info", "pairs", "unmatched", "dropped", "bad", "published", "out_of_order")


@dataclass
class Status:
    level: int
    message: str
    values: dict[str, float]


class PipelineHealth:
    """Event counts over the last ``window`` seconds (monotonic clock) plus totals since start."""

    def __init__(self, window: float = 5.0, clock: Any = time.monotonic) -> None:
        self.window = float(window)
        self.clock = clock
        self.started = clock()
        self.totals: Counter[str] = Counter()
        self.times: dict[str, deque[float]] = {k: deque() for k in EVENTS}
        self.samples: dict[str, deque[tuple[float, float]]] = {
            k: deque() for k in ("inference_ms", "latency_ms", "queue_ms", "stamp_latency_ms", "stamp_offset_ms",
                                 "masked_confidence_pct", "masked_lr_pct")}
        self.last_error = ""
        self.last_error_time = -1e9
        self.last_seen: dict[str, float] = {}  # the last event of each kind, however long ago
        self.first_seen: dict[str, float] = {}

    def add(self, kind: str, count: int = 1) -> None:
        now = self.clock()
        self.totals[kind] += count
        self.last_seen[kind] = now
        self.first_seen.setdefault(kind, now)
        q = self.times[kind]
        q.extend([now] * count)
        self._prune(q, now)

    def sample(self, kind: str, value: float) -> None:
        now = self.clock()
        q = self.samples[kind]
        q.append((now, float(value)))
        self._prune(q, now)

    def forget(self, kind: str) -> None:
        """Drop the samples of ``kind`` (they describe a stream that ended, e.g. before time went back)."""
        self.samples[kind].clear()

    def error(self, message: str) -> None:
        self.add("bad")
        self.last_error, self.last_error_time = message, self.clock()

    def _prune(self, q: deque, now: float) -> None:
        limit = now - self.window
        while q and (q[0][0] if isinstance(q[0], tuple) else q[0]) < limit:
            q.popleft()

    def count(self, kind: str) -> int:
        q = self.times[kind]
        self._prune(q, self.clock())
        return len(q)

    def rate(self, kind: str) -> float:
        """Events per second over the window (over the time since the first event while that is shorter):
        it falls to 0 within one window of the events stopping, instead of keeping the last value."""
        q = self.times[kind]
        now = self.clock()
        self._prune(q, now)
        span = min(self.window, now - self.first_seen.get(kind, now))
        return len(q) / span if q and span > 0 else 0.0

    def median(self, kind: str) -> float:
        q = self.samples[kind]
        self._prune(q, self.clock())
        return float(np.median([v for _, v in q])) if q else float("nan")

    def last(self, kind: str) -> float | None:
        return self.last_seen.get(kind)

    def stale_after(self, minimum: float = 0.5) -> float:
        """How long without input means STALE: five input periods (the median gap between the recent
        images, which does not shrink when they stop), at least ``minimum`` seconds."""
        gaps = [g for side in ("left", "right") if len(self.times[side]) > 1 for g in np.diff(self.times[side])]
        return max(minimum, 5.0 * float(np.median(gaps))) if gaps else max(minimum, self.window)

    def status(self, *, stale_timeout: float = 0.0, inputs: str = "the image topics") -> Status:
        now = self.clock()
        values = {f"{k}_total": float(self.totals[k]) for k in EVENTS}
        values.update({f"{k}_last_{self.window:g}s": float(self.count(k)) for k in EVENTS})
        values.update({"input_fps": self.rate("pairs"), "output_fps": self.rate("published"),
                       "left_fps": self.rate("left"), "right_fps": self.rate("right")})
        values.update({k: self.median(k) for k in self.samples})
        last_input = max((t for t in (self.last("left"), self.last("right")) if t is not None), default=None)
        timeout = stale_timeout if stale_timeout > 0 else self.stale_after()
        if last_input is None:
            age = now - self.started
            return Status(STALE, f"no image received yet on {inputs} ({age:.1f} s since start)", values)
        if now - last_input > timeout:
            return Status(STALE, f"no image for {now - last_input:.1f} s on {inputs} (stale after {timeout:.1f} s)", values)
        pairs, published, bad = self.count("pairs"), self.count("published"), self.count("bad")
        left, right = self.count("left"), self.count("right")
        w = f"{self.window:g} s"
        if left and right and not pairs:
            offset = self.median("stamp_offset_ms")
            return Status(WARN, f"left ({left}) and right ({right}) images arrive but none pair up in the last {w}: "
                                f"their stamps differ by {offset:.1f} ms (median); with free-running cameras use "
                                f"sync_mode:=approximate and slop >= {max(offset * 1.5e-3, 0.001):.3f}", values)
        if pairs and not published and bad:
            return Status(ERROR, f"every frame of the last {w} failed ({bad}): {self.last_error}", values)
        if bad and now - self.last_error_time <= self.window:
            return Status(WARN, f"{bad} bad frame(s) in the last {w}: {self.last_error}", values)
        dropped = self.count("dropped")
        note = f"; {dropped} stale pair(s) skipped (model slower than the camera)" if dropped else ""
        return Status(OK, f"{values['output_fps']:.1f} of {values['input_fps']:.1f} pairs/s published{note}", values)


__all__ = ["ERROR", "EVENTS", "OK", "STALE", "WARN", "PipelineHealth", "Status"]
