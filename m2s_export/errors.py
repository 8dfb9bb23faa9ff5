"""Errors of the export and runtime package."""

from __future__ import annotations

from calib.errors import Mono2StereoError, ShapeError


class ExportError(Mono2StereoError):
    """Export, verification or engine build failed; the message says what and how to fix it."""


class RuntimeBackendError(Mono2StereoError):
    """A model file cannot be run by its backend (missing package, corrupt or foreign file, bad input)."""


__all__ = ["ExportError", "Mono2StereoError", "RuntimeBackendError", "ShapeError"]
