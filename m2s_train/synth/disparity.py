"""Monocular inverse depth -> disparity, as in MfS (Watson et al., ECCV 2020).

Relative inverse depth is normalised to [0, 1] and scaled by a per-sample maximum disparity
drawn uniformly from a range (occasionally slightly above the network's maximum, for
robustness). Before warping, "flying pixels" on depth edges (where a monocular network blends
foreground and background) take the value of their nearest non-edge neighbour, so every pixel
belongs to one surface and the warp leaves clean disocclusions.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from calib.checks import check_depth_range
from calib.errors import CalibrationError
from m2s_train.config import check_fields, num
from m2s_train.errors import ShapeError, SynthesisError


@dataclass(frozen=True)
class DisparityScaling:
    """How a sample's maximum disparity is drawn (pixels at the image's own resolution).

    ``min_max_disparity``/``max_max_disparity``: uniform range of the sampled maximum.
    ``overshoot_prob``: probability of drawing in ``(max_max_disparity, overshoot_max]`` instead.
    """

    min_max_disparity: float = num(40.0, gt=0)
    max_max_disparity: float = num(196.0, gt=0)
    overshoot_prob: float = num(0.01, ge=0, le=1)
    overshoot_max: float = num(230.0, gt=0)
    flying_pixel_threshold: float = num(3.0, gt=0)

    def __post_init__(self) -> None:
        check_fields(self)
        if not 0 < self.min_max_disparity <= self.max_max_disparity <= self.overshoot_max:
            raise ShapeError(
                "disparity scaling needs 0 < min_max_disparity <= max_max_disparity <= overshoot_max, got "
                f"{self.min_max_disparity}, {self.max_max_disparity}, {self.overshoot_max}"
            )
        if not 0 <= self.overshoot_prob <= 1:
            raise ShapeError(f"overshoot_prob must be in [0, 1], got {self.overshoot_prob}")

    def sample(self, rng: np.random.Generator) -> float:
        if rng.random() < self.overshoot_prob:
            return float(rng.uniform(self.max_max_disparity, self.overshoot_max))
        return float(rng.uniform(self.min_max_disparity, self.max_max_disparity))


@dataclass(frozen=True)
class CameraRange:
    """Camera-matched disparities: the robot's camera and working depth range instead of the generic draw.

    A sample's relative inverse depth, normalised to [0, 1], is mapped affinely onto
    ``[f B / max_depth, f B / min_depth]`` px (the farthest point of the image at ``max_depth``,
    the nearest at ``min_depth``), with the focal length scaled to the synthesis resolution
    (``f * width_synth / width``). Monocular networks give inverse depth up to an unknown scale and
    shift, so an affine map onto the camera's range is the model; the range actually used is
    recorded per sample.
    """

    focal_px: float = num(0.0, ge=0)  # the camera's focal length at its own resolution (0: not set)
    baseline_m: float = num(0.0, ge=0)
    width: int = num(0, ge=0)  # the camera's image width, px
    min_depth: float = num(0.0, ge=0)  # metres
    max_depth: float = num(0.0, ge=0)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.enabled:
            if not 0 < self.min_depth < self.max_depth:
                raise ShapeError(f"the depth range needs 0 < MIN < MAX metres, got {self.min_depth} {self.max_depth}")
            if not (self.focal_px > 0 and self.baseline_m > 0 and self.width > 0):
                raise ShapeError(f"a camera range needs a positive focal length, baseline and width, got "
                                 f"{self.focal_px} px, {self.baseline_m} m, {self.width} px")
            try:  # a near end wider than the image: every pair would be skipped, the dataset empty
                check_depth_range(self.min_depth, self.max_depth, fb=self.focal_px * self.baseline_m, width=self.width)
            except CalibrationError as exc:
                raise ShapeError(str(exc)) from None

    @property
    def enabled(self) -> bool:
        return self.max_depth > 0 or self.min_depth > 0

    def disparity_range(self, width: int) -> tuple[float, float]:
        """(far, near) disparity in px for an image ``width`` px wide (the camera's, resized)."""
        fb = self.focal_px * width / self.width * self.baseline_m
        return fb / self.max_depth, fb / self.min_depth


def normalize_inverse_depth(inv_depth: np.ndarray) -> np.ndarray:
    """Relative inverse depth -> [0, 1] (min -> 0, max -> 1), float32.

    Raises :class:`SynthesisError` on non-finite values or a constant map (no depth structure,
    nothing to learn stereo from).
    """
    inv_depth = np.asarray(inv_depth)
    if inv_depth.ndim != 2:
        raise ShapeError(f"inverse depth must be HxW, got shape {inv_depth.shape}")
    finite = np.isfinite(inv_depth)
    if not finite.all():
        raise SynthesisError(f"inverse depth has {int((~finite).sum())} NaN/inf pixels")
    lo, hi = float(inv_depth.min()), float(inv_depth.max())
    if not hi - lo > 1e-6 * max(abs(hi), 1.0):
        raise SynthesisError(f"inverse depth is constant ({lo:.6g}): no depth structure to synthesise stereo from")
    return ((inv_depth - lo) / (hi - lo)).astype(np.float32)


def remove_flying_pixels(disparity: np.ndarray, threshold: float = 3.0) -> np.ndarray:
    """Replace pixels on strong disparity edges with their nearest non-edge neighbour's value.

    An edge pixel is one whose Sobel gradient magnitude (3x3, normalised to pixels per pixel)
    exceeds ``threshold``. Returns a new float32 array; non-edge pixels are unchanged.
    """
    disparity = np.asarray(disparity, dtype=np.float32)
    gx = cv2.Sobel(disparity, cv2.CV_32F, 1, 0, ksize=3, scale=1 / 8)
    gy = cv2.Sobel(disparity, cv2.CV_32F, 0, 1, ksize=3, scale=1 / 8)
    edges = np.hypot(gx, gy) > threshold
    if not edges.any() or edges.all():
        return disparity.copy()
    # Label every pixel with its nearest non-edge pixel (distance transform over edge pixels).
    _, labels = cv2.distanceTransformWithLabels(
        edges.astype(np.uint8), cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL
    )
    nonedge = ~edges
    value_of_label = np.zeros(int(labels.max()) + 1, dtype=np.float32)
    value_of_label[labels[nonedge]] = disparity[nonedge]
    return value_of_label[labels]


def inverse_depth_to_disparity(inv_depth: np.ndarray, max_disparity: float,
                               flying_pixel_threshold: float | None = 3.0, min_disparity: float = 0.0) -> np.ndarray:
    """Normalised inverse depth mapped to ``[min_disparity, max_disparity]`` pixels, flying pixels removed."""
    if not np.isfinite(max_disparity) or max_disparity <= 0:
        raise ShapeError(f"max_disparity must be positive, got {max_disparity}")
    if not 0 <= min_disparity < max_disparity:
        raise ShapeError(f"min_disparity must be in [0, max_disparity), got {min_disparity}")
    disparity = np.float32(min_disparity) + normalize_inverse_depth(inv_depth) * np.float32(max_disparity - min_disparity)
    if flying_pixel_threshold is not None:
        disparity = remove_flying_pixels(disparity, flying_pixel_threshold)
    return disparity
