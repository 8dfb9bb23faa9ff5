"""Reading images into the project's in-memory convention (RGB uint8 HxWx3, or mono uint8 HxW).

One reader for every package, so corrupt, 16-bit, RGBA and grayscale files are handled the
same way everywhere: unreadable -> :class:`DataError` naming the file; other formats converted.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from calib.errors import DataError


_JPEG_DAMAGE = ("Corrupt JPEG data", "Premature end of JPEG", "Bogus", "Invalid JPEG", "Unsupported marker")
_stderr_lock = threading.Lock()


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """What C libraries write to file descriptor 2 inside the block (libjpeg reports damaged data
    there as a warning and decodes anyway). Lines that are not libjpeg's are written back."""
    lines: list[str] = []
    with _stderr_lock, tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
            lines.extend(text.splitlines())
            others = [line for line in lines if not line.startswith(_JPEG_DAMAGE)]
            if others:
                print("\n".join(others), file=sys.stderr)


def decode_image(data: bytes | np.ndarray, where: str) -> np.ndarray:
    """Decode encoded image bytes (any format OpenCV reads) with ``IMREAD_UNCHANGED``.

    A JPEG that libjpeg reports as damaged (corrupt data, premature end: it would fill the rest
    with grey) is refused like an unreadable file, not returned half-decoded.
    """
    buf = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray)) else data
    if not buf.size:
        raise DataError(f"cannot decode image {where} (empty file)")
    if buf[:2].tobytes() == b"\xff\xd8":
        with _captured_stderr() as messages:
            image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        damage = [m for m in messages if m.startswith(_JPEG_DAMAGE)]
        if damage:
            raise DataError(f"damaged JPEG {where}: libjpeg reports '{damage[0].strip()}'")
    else:
        image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"cannot decode image {where} (corrupt, truncated or not an image)")
    return image


def read_unchanged(path: str | os.PathLike) -> np.ndarray:
    """An image file as stored (bit depth and channels kept, OpenCV's BGR order), checked as every read is."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    # imdecode on the bytes (not imread) so that non-ASCII paths work and errors stay ours.
    return decode_image(np.fromfile(str(path), dtype=np.uint8), str(path))


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
    image = _to_uint8(read_unchanged(path), path)
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
