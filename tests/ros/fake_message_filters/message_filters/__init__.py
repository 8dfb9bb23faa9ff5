"""Test-only stand-in for ROS 2's ``message_filters`` Python package (PyPI has no wheel of it).

It follows the package's documented Python interface, which is all the node uses:
``Subscriber(node, msg_type, topic, qos_profile=...)``, ``TimeSynchronizer(fs, queue_size)``,
``ApproximateTimeSynchronizer(fs, queue_size, slop)`` and ``registerCallback(cb, *args)``.
The pairing rules are simple versions of the real ones (exact stamps; nearest within slop),
enough to exercise the node's message_filters branch: its wiring, its per-input callbacks, its
QoS argument. What it does not reproduce: the real ApproximateTimeSynchronizer's pivot
algorithm, its ``allow_headerless`` mode and its queue eviction order.
"""

from __future__ import annotations

from collections import deque
from typing import Any


def _stamp(msg: Any) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


class SimpleFilter:
    def __init__(self) -> None:
        self.callbacks: list[tuple[Any, tuple]] = []

    def registerCallback(self, cb: Any, *args: Any) -> int:  # noqa: N802  (the package's name)
        self.callbacks.append((cb, args))
        return len(self.callbacks) - 1

    def signalMessage(self, *msgs: Any) -> None:  # noqa: N802
        for cb, args in list(self.callbacks):
            cb(*(msgs + args))


class Subscriber(SimpleFilter):
    def __init__(self, node: Any, msg_type: type, topic: str, qos_profile: Any = 10, **kwargs: Any) -> None:
        super().__init__()
        self.node, self.topic = node, topic
        self.sub = node.create_subscription(msg_type, topic, self.signalMessage, qos_profile, **kwargs)

    def getTopic(self) -> str:  # noqa: N802
        return self.sub.topic_name


class TimeSynchronizer(SimpleFilter):
    def __init__(self, fs: list[SimpleFilter], queue_size: int) -> None:
        super().__init__()
        self.queues: list[deque] = [deque(maxlen=queue_size) for _ in fs]
        for i, f in enumerate(fs):
            f.registerCallback(self.add, i)

    def _match(self, t: int, q: deque) -> Any:
        return next((m for m in q if _stamp(m) == t), None)

    def add(self, msg: Any, i: int) -> None:
        self.queues[i].append(msg)
        t = _stamp(msg)
        found = [msg if j == i else self._match(t, q) for j, q in enumerate(self.queues)]
        if all(m is not None for m in found):
            for q in self.queues:
                keep = [m for m in q if _stamp(m) > t]
                q.clear()
                q.extend(keep)
            self.signalMessage(*found)


class ApproximateTimeSynchronizer(TimeSynchronizer):
    def __init__(self, fs: list[SimpleFilter], queue_size: int, slop: float, allow_headerless: bool = False) -> None:
        super().__init__(fs, queue_size)
        self.slop_ns = int(slop * 1e9)

    def _match(self, t: int, q: deque) -> Any:
        best = min(q, key=lambda m: abs(_stamp(m) - t), default=None)
        return best if best is not None and abs(_stamp(best) - t) <= self.slop_ns else None
