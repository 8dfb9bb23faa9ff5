"""Exception types shared by every Mono2Stereo package.

``calib`` is the lowest package of the project (it imports nothing of ours), so the
project-wide base exception lives here and the other packages subclass it.
"""

from __future__ import annotations


class Mono2StereoError(Exception):
    """Base of every error the project raises on purpose.

    CLIs print these as one line (no traceback unless ``--debug``); anything else is a bug.
    """


class ShapeError(Mono2StereoError, ValueError):
    """An array has the wrong shape, dtype or size for the operation."""


class CalibrationError(Mono2StereoError):
    """Calibration input or a camera model is unusable (missing, inconsistent, degenerate)."""


class DataError(Mono2StereoError):
    """Input data (images, example data, datasets) is missing, unreadable or inconsistent."""
