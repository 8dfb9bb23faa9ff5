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

USAGE = """usage: m2s-stereo-node [-h] [--version] --ros-args -p model_path:=MODEL [-p NAME:=VALUE ...]
                       [-r __ns:=/stereo] [-r left/image_rect:=TOPIC ...] [--params-file FILE]

The Mono2Stereo stereo node: rectified left/right images + camera_info in; disparity, depth, points2,
confidence and /diagnostics out. On a ROS 2 install: ros2 launch m2s_stereo stereo.launch.py.

options:
  -h, --help  show this message (with the node's parameters) and exit
  --version   show the version and exit
  --ros-args  ROS arguments follow: -p NAME:=VALUE, -r FROM:=TO, --params-file FILE, --log-level LEVEL

parameters (-p NAME:=VALUE; defaults in config/stereo.yaml):
"""


def usage() -> str:
    """The help text: the usage and every parameter with its default and values (m2s_stereo.params)."""
    import textwrap

    from m2s_stereo import params as P

    lines = [USAGE]
    for p in P.PARAMS:
        values = " | ".join(p.choices) if p.choices else (f"{p.range[0]} .. {p.range[1]}" if p.range else "")
        default = str(p.default).lower() if isinstance(p.default, bool) else repr(p.default)
        head = f"  {p.name} (default {default}{'; ' + values if values else ''}{'; at start only' if p.read_only else ''})"
        lines.append(head + "\n" + textwrap.fill(p.description, 100, initial_indent=" " * 6,
                                                 subsequent_indent=" " * 6))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv[1:]
    own = args[: args.index("--ros-args")] if "--ros-args" in args else args
    if "--version" in own:
        from calib.version import version

        print(f"m2s-stereo-node (mono2stereo) {version()}")
        return 0
    if "-h" in own or "--help" in own:
        print(usage())
        return 0
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    from m2s_stereo.stereo_node import (
        main as run,  # the heavy imports, under the handlers above
    )

    return run(argv, stop=stop)


if __name__ == "__main__":
    sys.exit(main())
