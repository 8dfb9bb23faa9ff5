"""Console-script plumbing shared by every Mono2Stereo CLI: logging to stderr and error policy.

Project errors (:class:`Mono2StereoError`) print as one ``error: ...`` line and exit 2; with
``--debug`` the traceback is shown too. Ctrl-C exits 130 without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from calib.errors import Mono2StereoError


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors on stderr, no progress bars")


def setup_logging(debug: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s", force=True)


def run_command(handler: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run a subcommand handler under the project's error policy; returns the exit code."""
    setup_logging(getattr(args, "debug", False), getattr(args, "quiet", False))
    try:
        return int(handler(args) or 0)
    except Mono2StereoError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
