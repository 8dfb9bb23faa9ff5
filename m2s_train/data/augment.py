"""Stereo augmentations that keep disparity exact.

Random crop (same window in both views), photometric jitter drawn independently per view
(brightness, contrast, saturation, gamma: real rigs differ in exposure and response), and no
horizontal flip: flipping a pair would need the views swapped and a right-reference disparity.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from m2s_train.config import check_fields, num
from m2s_train.errors import ShapeError


@dataclass(frozen=True)
class AugmentConfig:
    crop: tuple[int, int] | None = num((256, 512), ge=1)  # (height, width); None keeps the full image
    brightness: float = num(0.3, ge=0, lt=1)  # factor drawn from [1 - b, 1 + b]
    contrast: float = num(0.3, ge=0, lt=1)
    saturation: float = num(0.3, ge=0, le=1)
    gamma: tuple[float, float] = num((0.8, 1.2), gt=0)
    asymmetric_prob: float = num(0.2, ge=0, le=1)  # probability that the right view gets its own draw

    def __post_init__(self) -> None:
        check_fields(self)


def pad_to(size: tuple[int, int], *arrays: np.ndarray) -> list[np.ndarray]:
    """Pad at the bottom/right to at least ``size`` = (h, w): floats with NaN (no GT), others with 0."""
    h, w = arrays[0].shape[:2]
    ph, pw = max(0, size[0] - h), max(0, size[1] - w)
    if not (ph or pw):
        return list(arrays)
    out = []
    for a in arrays:
        fill = np.nan if np.issubdtype(a.dtype, np.floating) else 0
        widths = ((0, ph), (0, pw)) + ((0, 0),) * (a.ndim - 2)
        out.append(np.pad(a, widths, constant_values=fill))
    return out


def random_crop(rng: np.random.Generator, size: tuple[int, int], *arrays: np.ndarray) -> list[np.ndarray]:
    """The same random ``size`` = (h, w) window of every array (HxW[xC]); smaller samples are
    padded first (:func:`pad_to`: images black, disparity NaN = no ground truth)."""
    if any(a.shape[:2] != arrays[0].shape[:2] for a in arrays):
        raise ShapeError(f"arrays to crop differ in size: {[a.shape for a in arrays]}")
    arrays = tuple(pad_to(size, *arrays))
    h, w = arrays[0].shape[:2]
    ch, cw = size
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    return [a[y0 : y0 + ch, x0 : x0 + cw] for a in arrays]


def _jitter_params(rng: np.random.Generator, c: AugmentConfig) -> tuple[float, float, float, float]:
    return (rng.uniform(1 - c.brightness, 1 + c.brightness), rng.uniform(1 - c.contrast, 1 + c.contrast),
            rng.uniform(1 - c.saturation, 1 + c.saturation), rng.uniform(*c.gamma))


def _apply_jitter(image: np.ndarray, params: tuple[float, float, float, float]) -> np.ndarray:
    b, c, s, g = params
    x = image.astype(np.float32) / 255.0
    x = x * b
    mean = x.mean()
    x = (x - mean) * c + mean
    gray = cv2.cvtColor(np.clip(x, 0, 1), cv2.COLOR_RGB2GRAY)[:, :, None]
    x = (x - gray) * s + gray
    x = np.clip(x, 0, 1) ** g
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


def color_jitter(rng: np.random.Generator, left: np.ndarray, right: np.ndarray, config: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """Photometric jitter; with probability ``asymmetric_prob`` the right view gets its own parameters."""
    params_left = _jitter_params(rng, config)
    params_right = _jitter_params(rng, config) if rng.random() < config.asymmetric_prob else params_left
    return _apply_jitter(left, params_left), _apply_jitter(right, params_right)
