"""Console-script plumbing shared by every Mono2Stereo CLI: parser, flag validators, error boundary.

Error policy, the same for every command: an expected failure prints exactly one line
``error: ...`` on stderr and exits 2 (with ``--debug`` the traceback is shown instead). Expected
failures are the project's own errors (:class:`Mono2StereoError`), bad flags (argparse), files
that cannot be read or written (``OSError``: a full disk, a read-only ``--out``), OpenCV
refusing degenerate input (``cv2.error``) and running out of memory. Ctrl-C exits 130 without a
traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import math
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from calib.errors import Mono2StereoError


class CliParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one ``error:`` line and exit 2, with ``--version``.

    Sub-command parsers made with ``add_subparsers`` inherit the class.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        add_version_flag(self)

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


# -- flag validators (argparse ``type=``): each names what it wants and what it got --------------

def _number(text: str, kind: type) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got '{text}'") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got '{text}'")
    return value


def bounded(kind: type, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None) -> Callable[[str], Any]:
    """An argparse ``type`` for ``kind`` (int or float, never NaN/inf) within the given bounds."""
    def parse(text: str) -> Any:
        value = _number(text, kind)
        if ge is not None and not value >= ge:
            raise argparse.ArgumentTypeError(f"must be >= {ge:g}, got {text}")
        if gt is not None and not value > gt:
            raise argparse.ArgumentTypeError(f"must be > {gt:g}, got {text}")
        if le is not None and not value <= le:
            raise argparse.ArgumentTypeError(f"must be <= {le:g}, got {text}")
        return value

    parts = [f">= {ge:g}" if ge is not None else "", f"> {gt:g}" if gt is not None else "",
             f"<= {le:g}" if le is not None else ""]
    parse.__name__ = f"{kind.__name__} {' '.join(p for p in parts if p)}".strip()  # argparse shows it
    return parse


positive_int = bounded(int, ge=1)
non_negative_int = bounded(int, ge=0)
positive_float = bounded(float, gt=0)
non_negative_float = bounded(float, ge=0)
finite_float = bounded(float)


def add_version_flag(parser: argparse.ArgumentParser) -> None:
    """``--version``: the program name and Mono2Stereo's one version (:mod:`calib.version`), exit 0."""
    if "--version" not in parser._option_string_actions:
        from calib.version import version

        parser.add_argument("--version", action="version", version=f"%(prog)s (mono2stereo) {version()}",
                            help="show the version and exit")


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors on stderr, no progress bars")
    add_version_flag(parser)


def setup_logging(debug: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s", force=True)


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip()) or "(no message)"


def describe_os_error(exc: OSError) -> str:
    """``cannot write /x/y: No space left on device`` style text for an ``OSError``."""
    what = exc.strerror or _one_line(str(exc))
    name = exc.filename if exc.filename is not None else ""
    hint = {errno.ENOSPC: " (free some space or choose another --out)",
            errno.EACCES: " (check the permissions or choose another --out)",
            errno.EROFS: " (the file system is read-only: choose another --out)"}.get(exc.errno or -1, "")
    return f"{name}: {what}{hint}" if name else f"{what}{hint}"


def _opencv_message(exc: Exception) -> str:
    # cv2.error text: "OpenCV(4.x) /path/file.cpp:123: error: (-215:Assertion failed) cond in function 'f'"
    text = _one_line(str(exc))
    return "OpenCV refused the input: " + (text.split("error: ", 1)[1] if "error: " in text else text)


def _expected_error(exc: BaseException) -> str | None:
    """The one-line message for an expected failure, or None for a bug."""
    if isinstance(exc, Mono2StereoError):
        return _one_line(str(exc))
    if isinstance(exc, MemoryError):
        return "out of memory: lower the image size, batch size or number of pairs"
    if isinstance(exc, OSError):
        return describe_os_error(exc)
    cv2 = sys.modules.get("cv2")
    if cv2 is not None and isinstance(exc, cv2.error):
        return _opencv_message(exc)
    return None


def run_command(handler: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run a subcommand handler under the project's error policy; returns the exit code."""
    setup_logging(getattr(args, "debug", False), getattr(args, "quiet", False))
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        message = _expected_error(exc)
        if message is None or getattr(args, "debug", False):
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


__all__ = ["CliParser", "add_common_flags", "bounded", "describe_os_error", "finite_float", "non_negative_float",
           "non_negative_int", "positive_float", "positive_int", "run_command", "setup_logging"]
