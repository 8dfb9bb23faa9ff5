"""Stereo pairs an export is verified and its FP16 behaviour measured on. Torch-free.

The real Middlebury Aloe pair (when the opencv-doc data is available), random-texture pairs with
a known shift, and the user's own pairs (``--calib-images LEFT_GLOB RIGHT_GLOB``, paired by what
the wildcards match as in ``m2s-calib``), all resized to the export size.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from m2s_export.errors import ExportError

log = logging.getLogger(__name__)


def verification_pairs(height: int, width: int, count: int = 2, seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The real Aloe pair (when opencv-doc data is available) resized to the export size, plus
    ``count`` random-texture pairs with a known shift: (name, left, right) RGB uint8 HxWx3."""
    from calib.example_data import find_opencv_examples
    from calib.image_io import read_rgb

    pairs = []
    data = find_opencv_examples()
    if data is not None:
        left, right = (cv2.resize(read_rgb(data / n), (width, height), interpolation=cv2.INTER_AREA)
                       for n in ("aloeL.jpg", "aloeR.jpg"))
        pairs.append(("aloe", left, right))
    else:
        log.warning("opencv-doc data not found: verifying on random-texture pairs only")
    rng = np.random.default_rng(seed)
    for i in range(count):
        tex = cv2.resize(rng.uniform(0, 255, (height // 4 + 1, width // 4 + 9, 3)).astype(np.float32),
                         (width + 32, height), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
        shift = 4 + 4 * i
        pairs.append((f"texture{i}", tex[:, shift : shift + width].copy(), tex[:, :width].copy()))
    return pairs


def user_pairs(left_glob: str, right_glob: str, height: int, width: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The user's rectified pairs, resized to the export size; no pair is an error."""
    from calib.image_io import read_rgb
    from calib.stereo_calibration import pair_image_files

    pairs, unpaired = pair_image_files(left_glob, right_glob)
    for path in unpaired:
        log.warning("--calib-images: %s has no partner on the other side; not used", path)
    if not pairs:
        raise ExportError(f"--calib-images: no left/right pairs in '{left_glob}' / '{right_glob}'")
    out = []
    for lp, rp in pairs:
        left, right = read_rgb(lp), read_rgb(rp)
        if left.shape != right.shape:
            raise ExportError(f"--calib-images: {lp.name} and {rp.name} differ in size")
        out.append((lp.stem, *(cv2.resize(x, (width, height), interpolation=cv2.INTER_AREA) for x in (left, right))))
    return out


def calibration_feeds(height: int, width: int, images: tuple[str, str] | None = None,
                      limit: int | None = None) -> tuple[list[str], list[dict[str, np.ndarray]]]:
    """Names and ``{"left", "right"}`` input tensors of the verification pairs plus the user's pairs."""
    from m2s_export.runtime import to_input

    pairs = verification_pairs(height, width) + (user_pairs(*images, height, width) if images else [])
    if limit is not None:
        pairs = pairs[:limit]
    return [p[0] for p in pairs], [{"left": to_input(left, None), "right": to_input(right, None)} for _, left, right in pairs]


__all__ = ["calibration_feeds", "user_pairs", "verification_pairs"]
