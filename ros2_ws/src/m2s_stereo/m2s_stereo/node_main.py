"""The node's entry point (``ros2 run m2s_stereo stereo_node``, ``m2s-stereo-node``, ``ros2 launch``).

It takes SIGINT and SIGTERM before anything heavy is imported: a Ctrl-C that arrives while Python
imports rclpy, numpy or the inference runtime, or while the model loads, only asks the node to stop,
which it then does cleanly (exit 0, no traceback), instead of raising KeyboardInterrupt wherever the
interpreter happens to be. See :func:`m2s_stereo.stereo_node.main`. What remains is the first ~0.1 s
of the process: Python's start-up and the console-script wrapper's own imports (importlib.metadata),
before this module runs.
"""

from __future__ import annotations

import signal
import sys
import threading


def main(argv: list[str] | None = None) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    from m2s_stereo.stereo_node import main as run  # the heavy imports, under the handlers above

    return run(argv, stop=stop)


if __name__ == "__main__":
    sys.exit(main())
