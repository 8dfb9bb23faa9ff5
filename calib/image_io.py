"""Reading images into the project's in-memory convention (RGB uint8 HxWx3, or mono uint8 HxW).

One reader for every package, so corrupt, 16-bit, RGBA and grayscale files are handled the
same way everywhere: unreadable -> :class:`DataError` naming the file; other formats converted.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from calib.errors import DataError


def _read_any(path: str | os.PathLike) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    # imdecode on the bytes (not imread) so that non-ASCII paths work and errors stay ours.
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise DataError(f"cannot decode image {path} (corrupt, truncated or not an image)")
    return image


def _to_uint8(image: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        if not np.all(np.isfinite(image)):
            raise DataError(f"image {path} contains NaN or inf values")
        return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    raise DataError(f"image {path} has unsupported pixel type {image.dtype}")


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image as RGB uint8 HxWx3: gray is replicated, alpha dropped, 16-bit scaled to 8-bit."""
    image = _to_uint8(_read_any(path), path)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise DataError(f"image {path} has {channels} channels; expected 1, 3 or 4")


def read_gray(path: str | os.PathLike) -> np.ndarray:
    """Read an image as mono uint8 HxW."""
    return cv2.cvtColor(read_rgb(path), cv2.COLOR_RGB2GRAY)


def write_rgb(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an RGB (or mono) uint8 image; the format follows the file extension."""
    path = Path(path)
    out = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    if not cv2.imwrite(str(path), out):
        raise DataError(f"cannot write image {path} (unsupported extension or unwritable directory)")
