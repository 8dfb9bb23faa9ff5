"""Stereo pair synchronisation by header stamp, without message_filters.

Same semantics as ``message_filters.TimeSynchronizer`` (exact stamps) and a simple
``ApproximateTimeSynchronizer`` (nearest partner within ``slop`` seconds): each side keeps the
last ``queue_size`` messages; when a pair matches it is emitted and everything older on both
sides is dropped. Out-of-order (older than the last emitted pair) messages are rejected and
counted. Single-threaded use (ROS callbacks of one node).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any


def stamp_ns(msg: Any) -> int:
    s = msg.header.stamp
    return int(s.sec) * 1_000_000_000 + int(s.nanosec)


class PairSynchronizer:
    def __init__(self, callback: Callable[[Any, Any], None], queue_size: int = 5, slop: float | None = None) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if slop is not None and slop < 0:
            raise ValueError(f"slop must be >= 0 seconds, got {slop}")
        self.callback = callback
        self.queues: tuple[deque, deque] = (deque(maxlen=queue_size), deque(maxlen=queue_size))
        self.slop_ns = None if slop is None else int(slop * 1e9)
        self.last_emitted = -1
        self.out_of_order = 0
        self.pairs = 0

    def add_left(self, msg: Any) -> None:
        self._add(0, msg)

    def add_right(self, msg: Any) -> None:
        self._add(1, msg)

    def _add(self, side: int, msg: Any) -> None:
        t = stamp_ns(msg)
        if t <= self.last_emitted:
            self.out_of_order += 1
            return
        self.queues[side].append((t, msg))
        other = self.queues[1 - side]
        match = None
        if self.slop_ns is None:
            match = next((item for item in other if item[0] == t), None)
        elif other:
            best = min(other, key=lambda item: abs(item[0] - t))
            if abs(best[0] - t) <= self.slop_ns:
                match = best
        if match is None:
            return
        pair = (msg, match[1]) if side == 0 else (match[1], msg)
        newest = max(t, match[0])
        for q in self.queues:
            keep = [item for item in q if item[0] > newest]
            q.clear()
            q.extend(keep)
        self.last_emitted = newest
        self.pairs += 1
        self.callback(*pair)
