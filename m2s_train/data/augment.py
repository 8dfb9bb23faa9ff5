"""Stereo augmentations that keep disparity exact.

Random crop (same window in both views), photometric jitter drawn independently per view
(brightness, contrast, saturation, gamma: real rigs differ in exposure and response), and no
horizontal flip: flipping a pair would need the views swapped and a right-reference disparity.

Off by default (the CPU recipe's ablation measures them: ``benchmarks/ablate_pretrain.py``), as
RAFT-Stereo and IGEV train: a random spatial scale of the whole pair before the crop (disparity scaled by the horizontal
factor, so it stays exact; an optional stretch makes the two axes differ) and occlusion patches on
the right view (the eraser: patches of the right image's mean colour, so the left pixels behind them
have no match and the network learns to fill from context).
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
    # spatial scale of the whole pair before the crop: factor 2**u, u uniform in scale_log2; with
    # probability stretch_prob the vertical factor gets an extra 2**v, v uniform in stretch_log2
    scale_prob: float = num(0.0, ge=0, le=1)
    scale_log2: tuple[float, float] = num((-0.2, 0.4), ge=-2, le=2)
    stretch_prob: float = num(0.0, ge=0, le=1)
    stretch_log2: tuple[float, float] = num((-0.2, 0.2), ge=-1, le=1)
    # occlusion patches on the right view: with probability eraser_prob, 1..eraser_max patches whose
    # sides are uniform in eraser_size x the crop's height
    eraser_prob: float = num(0.0, ge=0, le=1)
    eraser_max: int = num(2, ge=1)
    eraser_size: tuple[float, float] = num((0.15, 0.5), gt=0, le=1)

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("gamma", "scale_log2", "stretch_log2", "eraser_size"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name} must be [low, high] with low <= high, got {list(getattr(self, name))}")

    @property
    def spatial(self) -> bool:
        """Whether the pair may be resized (not for data whose extra maps would need their own rule)."""
        return self.scale_prob > 0


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


def random_scale(rng: np.random.Generator, config: AugmentConfig, left: np.ndarray, right: np.ndarray,
                 disparity: np.ndarray, noc: np.ndarray) -> list[np.ndarray]:
    """With probability ``scale_prob``, the pair resized by 2**u (x) and 2**u * 2**v (y, with the stretch).

    Images are resampled linearly; disparity and the non-occluded mask by nearest neighbour (a label is
    never blended across a depth edge; NaN = unknown stays unknown), disparity multiplied by the
    horizontal factor the grid really got. With a crop, the crop is taken here: the window that the crop
    would cut from the resized pair is cut from the original and resized alone (the same result, without
    resizing the whole image), and the factor is floored so that the window fits in the image.
    """
    h, w = disparity.shape
    scaled = rng.random() < config.scale_prob
    sx = 2.0 ** rng.uniform(*config.scale_log2) if scaled else 1.0
    sy = sx * (2.0 ** rng.uniform(*config.stretch_log2) if scaled and rng.random() < config.stretch_prob else 1.0)
    arrays = [left, right, disparity.astype(np.float32), noc.astype(np.uint8)]
    if config.crop is None:
        size = (max(1, round(w * sx)), max(1, round(h * sy)))
    else:
        ch, cw = config.crop
        sx, sy = max(sx, cw / w), max(sy, ch / h)
        wh, ww = min(h, max(1, round(ch / sy))), min(w, max(1, round(cw / sx)))
        y0, x0 = int(rng.integers(0, h - wh + 1)), int(rng.integers(0, w - ww + 1))
        arrays = [a[y0 : y0 + wh, x0 : x0 + ww] for a in arrays]
        size = (cw, ch)
    if not scaled and config.crop is not None and arrays[0].shape[:2] == (size[1], size[0]):
        out = arrays
    else:
        fx = size[0] / arrays[0].shape[1]
        out = [cv2.resize(a, size, interpolation=cv2.INTER_LINEAR if i < 2 else cv2.INTER_NEAREST)
               for i, a in enumerate(arrays)]
        out[2] = out[2] * np.float32(fx)
    out[3] = out[3].astype(bool)
    return out


def eraser(rng: np.random.Generator, config: AugmentConfig, right: np.ndarray) -> np.ndarray:
    """With probability ``eraser_prob``, 1..``eraser_max`` rectangles of the right view set to its mean colour."""
    if config.eraser_prob <= 0 or rng.random() >= config.eraser_prob:
        return right
    h, w = right.shape[:2]
    out = right.copy()
    mean = right.reshape(-1, right.shape[-1]).mean(0).astype(right.dtype)
    for _ in range(int(rng.integers(1, config.eraser_max + 1))):
        dy, dx = (max(1, int(rng.uniform(*config.eraser_size) * h)) for _ in range(2))
        y0, x0 = int(rng.integers(0, max(1, h - dy + 1))), int(rng.integers(0, max(1, w - dx + 1)))
        out[y0 : y0 + dy, x0 : x0 + dx] = mean
    return out
