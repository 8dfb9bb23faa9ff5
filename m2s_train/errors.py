"""Errors of the training package; all derive from the project's :class:`Mono2StereoError`."""

from __future__ import annotations

from calib.errors import DataError, Mono2StereoError, ShapeError


class ConfigError(Mono2StereoError):
    """A YAML config or an override is invalid; the message names the key."""


class SynthesisError(Mono2StereoError):
    """Stereo synthesis cannot proceed for an input (bad depth, missing model weights, ...)."""


class DatasetError(DataError):
    """A dataset directory has the wrong layout or inconsistent samples."""


__all__ = ["ConfigError", "DataError", "DatasetError", "Mono2StereoError", "ShapeError", "SynthesisError"]
