"""Stereo pair synchronisation by header stamp, and what the node does the same way on both paths.

:class:`PairSynchronizer` is the node's own pairing where ``message_filters`` is absent: exact stamps,
or the nearest partner within ``slop`` seconds (inclusive); each side keeps the last ``queue_size``
messages; when a pair matches it is emitted and everything older on both sides is dropped.

The real ``message_filters`` differs, and the node evens it out (:class:`PairOrder`, :func:`mf_slop`):
its ``ApproximateTimeSynchronizer`` pairs only stamps *strictly* closer than ``slop`` (``slop`` 0
never pairs), and its ``TimeSynchronizer`` keeps older unmatched messages, so it can emit an older
pair after a newer one. Pairs leave the node in stamp order on both paths: an older pair is dropped
and counted. Time may also go backwards (a bag played in a loop, a driver restart, a sim-time reset):
a stamp older than the newest seen by more than :data:`JUMP_BACK_NS`, or one a pair already had (a
recording shorter than that played in a loop), is a reset of time, after which pairing starts over (as
tf2 clears its buffer on a jump back), instead of every later pair being rejected as out of order.
Single-threaded use (ROS callbacks of one node).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any


JUMP_BACK_NS = 1_000_000_000  # older than the newest stamp by more than this: time was reset, not reordered
HISTORY = 1000  # pair stamps remembered to recognise time that loops back to a stamp it had


class StampHistory:
    """The stamps of the last :data:`HISTORY` pairs: a stamp older than the newest that one of them had is
    time looping (a bag played with --loop), not a late message."""

    def __init__(self) -> None:
        self.order: deque[int] = deque()
        self.seen: set[int] = set()

    def add(self, t: int) -> None:
        if t in self.seen:
            return
        self.order.append(t)
        self.seen.add(t)
        if len(self.order) > HISTORY:
            self.seen.discard(self.order.popleft())

    def clear(self) -> None:
        self.order.clear()
        self.seen.clear()

    def went_back(self, t: int, newest: int) -> bool:
        """Whether ``t`` (<= ``newest``) is time going back: by more than :data:`JUMP_BACK_NS`, or to a stamp
        an earlier pair had (other than the newest itself: that is a repeated message)."""
        return newest - t > JUMP_BACK_NS or (t < newest and t in self.seen)


def stamp_ns(msg: Any) -> int:
    s = msg.header.stamp
    return int(s.sec) * 1_000_000_000 + int(s.nanosec)


def mf_slop(slop: float) -> float:
    """The ``slop`` to give message_filters' ApproximateTimeSynchronizer so that it pairs what the node's
    own synchroniser pairs: stamps up to ``slop`` apart *inclusive* (it pairs strictly closer ones only),
    so ``slop`` 0 pairs equal stamps (it would pair nothing)."""
    return (round(slop * 1e9) + 1) / 1e9


class PairOrder:
    """Pairs in stamp order, whatever synchroniser made them: :meth:`check` says ``"ok"``, ``"old"``
    (an older or equal pair after a newer one: drop it; the node counts it) or ``"reset"`` (time
    went back by more than :data:`JUMP_BACK_NS`: accept it and start the order over; counted in ``resets``)."""

    def __init__(self) -> None:
        self.last: int | None = None
        self.resets = 0
        self.history = StampHistory()

    def check(self, t: int) -> str:
        if self.last is not None and t <= self.last:
            if not self.history.went_back(t, self.last):
                return "old"
            self.resets += 1
            self.history.clear()
            self.history.add(t)
            self.last = t
            return "reset"
        self.last = t
        self.history.add(t)
        return "ok"

    def reset(self) -> None:
        self.last = None
        self.history.clear()


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
        self.history = StampHistory()

    def add_left(self, msg: Any) -> None:
        self._add(0, msg)

    def add_right(self, msg: Any) -> None:
        self._add(1, msg)

    def reset(self) -> None:
        """Forget every queued message and the last pair (time went backwards)."""
        for q in self.queues:
            q.clear()
        self.last_emitted = -1
        self.history.clear()

    def _add(self, side: int, msg: Any) -> None:
        t = stamp_ns(msg)
        if t <= self.last_emitted:
            if self.history.went_back(t, self.last_emitted):  # time was reset or loops: start over
                self.reset()
            else:
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
        self.history.add(newest)
        self.pairs += 1
        self.callback(*pair)
