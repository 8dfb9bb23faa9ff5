"""OpenCV StereoSGBM configured as a careful user runs it: the baseline beside every figure.

Fair means three things (``docs/evaluate.md`` states them with the figures):

- **The scene's search range**, rounded up to 16 (OpenCV's unit): the ground truth's maximum where
  there is GT, else the model's range in the camera's pixels or the camera's f·B / nearest depth.
  :class:`SearchRange` carries the number and where it came from, so every report can say it.
- **The left band answered**: SGBM searches ``[0, range)`` and so has no answer in the leftmost
  ``range`` columns. The pair is padded on the left by the range (edge pixels replicated) and the
  padding cropped off afterwards, so those columns get a disparity like every other one.
- **The usual parameters** (:data:`SGBM_PARAMETERS`): 5x5 blocks, 3-way SGBM, P1 = 8·3·5², P2 = 32·3·5²,
  uniqueness 10 %, left-right check of 1 px, speckle filter 100 px / 2 px, grey input.

:func:`sgbm_wls_disparity` adds the dense WLS post-filter many ROS users run (``cv2.ximgproc`` from
``opencv-contrib-python-headless``). OpenCV only (no torch): the robot side uses the same functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from calib.errors import DataError

SGBM_BLOCK = 5
SGBM_PARAMETERS = {"blockSize": SGBM_BLOCK, "P1": 8 * 3 * SGBM_BLOCK**2, "P2": 32 * 3 * SGBM_BLOCK**2,
                   "disp12MaxDiff": 1, "uniquenessRatio": 10, "speckleWindowSize": 100, "speckleRange": 2,
                   "mode": "SGBM_3WAY"}
WLS_PARAMETERS = {"lambda": 8000.0, "sigma_color": 1.5}  # OpenCV's disparity-filtering tutorial values


@dataclass(frozen=True)
class SearchRange:
    """SGBM's search range in px (a multiple of 16, at least 16) and what it was taken from."""

    px: int
    source: str

    @classmethod
    def covering(cls, max_disparity: float, source: str) -> SearchRange:
        """The smallest multiple of 16 that covers ``max_disparity`` px (at least 16)."""
        if not math.isfinite(max_disparity) or max_disparity < 0:
            raise DataError(f"SGBM search range from {source}: {max_disparity} px is not a disparity")
        return cls(max(16, int(math.ceil(max_disparity / 16.0)) * 16), source)

    @classmethod
    def from_ground_truth(cls, gt: np.ndarray) -> SearchRange:
        """The range that covers the pair's largest valid GT disparity (what a user who knows the scene sets)."""
        with np.errstate(invalid="ignore"):
            valid = np.isfinite(gt) & (gt > 0)
        if not valid.any():
            raise DataError("no valid ground-truth disparity to take SGBM's search range from")
        top = float(gt[valid].max())
        return cls.covering(top, f"ground truth maximum {top:.1f} px")


def _matcher(num: int) -> cv2.StereoSGBM:
    p = SGBM_PARAMETERS
    return cv2.StereoSGBM_create(minDisparity=0, numDisparities=num, blockSize=p["blockSize"], P1=p["P1"], P2=p["P2"],
                                 disp12MaxDiff=p["disp12MaxDiff"], uniquenessRatio=p["uniquenessRatio"],
                                 speckleWindowSize=p["speckleWindowSize"], speckleRange=p["speckleRange"],
                                 mode=cv2.STEREO_SGBM_MODE_SGBM_3WAY)


def _grey_padded(image: np.ndarray, pad: int) -> np.ndarray:
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    return cv2.copyMakeBorder(grey, 0, 0, pad, 0, cv2.BORDER_REPLICATE)


def _range_px(search: SearchRange | int | float) -> int:
    return search.px if isinstance(search, SearchRange) else SearchRange.covering(float(search), "the caller").px


def sgbm_disparity(left: np.ndarray, right: np.ndarray, search: SearchRange | int | float) -> np.ndarray:
    """Fair OpenCV SGBM (module docstring) on RGB (or grey) uint8 images: HxW float32 px, NaN where it gives
    no answer (occlusions, the uniqueness and left-right checks, speckles). ``search``: px, rounded up to 16."""
    num = _range_px(search)
    raw = _matcher(num).compute(_grey_padded(left, num), _grey_padded(right, num))[:, num:]
    disp = raw.astype(np.float32) / 16.0
    disp[raw < 0] = np.nan
    return disp


def sgbm_disparity_unpadded(left: np.ndarray, right: np.ndarray, max_disp: int = 192) -> np.ndarray:
    """The call the project made before the fair baseline: no padding, so no answer in the leftmost
    ``max_disp`` columns (``fill_invalid`` then wrote 0 px there). Kept only to show that difference
    (``tests/calib/test_sgbm.py``); never a baseline."""
    num = max(16, int(np.ceil(max_disp / 16)) * 16)
    num = min(num, (left.shape[1] // 16 - 1) * 16)
    if num < 16:
        return np.full(left.shape[:2], np.nan, np.float32)
    raw = _matcher(num).compute(_grey_padded(left, 0), _grey_padded(right, 0))
    disp = raw.astype(np.float32) / 16.0
    disp[raw < 0] = np.nan
    return disp


def has_wls() -> bool:
    """Whether this OpenCV has the contrib module the WLS row needs."""
    return hasattr(cv2, "ximgproc")


def sgbm_wls_disparity(left: np.ndarray, right: np.ndarray, search: SearchRange | int | float) -> np.ndarray:
    """Fair SGBM followed by OpenCV's WLS disparity filter (left and right matchers, guided by the left
    image; :data:`WLS_PARAMETERS`): dense HxW float32 px. Needs ``cv2.ximgproc``."""
    if not has_wls():
        raise DataError("SGBM+WLS needs OpenCV's contrib modules (cv2.ximgproc): pip install "
                        f"opencv-contrib-python-headless=={cv2.__version__} (it replaces opencv-python-headless)")
    num = _range_px(search)
    lg, rg = _grey_padded(left, num), _grey_padded(right, num)
    left_matcher = _matcher(num)
    right_matcher = cv2.ximgproc.createRightMatcher(left_matcher)
    wls = cv2.ximgproc.createDisparityWLSFilter(left_matcher)
    wls.setLambda(WLS_PARAMETERS["lambda"])
    wls.setSigmaColor(WLS_PARAMETERS["sigma_color"])
    guide = cv2.copyMakeBorder(left, 0, 0, num, 0, cv2.BORDER_REPLICATE)
    if guide.ndim == 3:
        guide = cv2.cvtColor(guide, cv2.COLOR_RGB2BGR)
    filtered = wls.filter(left_matcher.compute(lg, rg), guide, disparity_map_right=right_matcher.compute(rg, lg))
    disp = filtered[:, num:].astype(np.float32) / 16.0
    disp[(disp <= 0) | (disp > num)] = np.nan  # what WLS could not reach (0) or left saturated (2047.9 px)
    return disp


def fill_invalid(disp: np.ndarray) -> np.ndarray:
    """Invalid (NaN) pixels take the nearest valid value along the row from the left (the background side of
    an occlusion in a left-reference map), for a dense score; a row start without one takes the nearest
    valid value to its right. All NaN stays all NaN (nothing to fill from: never a made-up 0 px)."""
    out = disp.copy()
    bad = ~np.isfinite(out)
    if not bad.any() or bad.all():
        return out
    h, w = out.shape
    cols = np.arange(w)[None, :]
    rows = np.arange(h)[:, None].repeat(w, 1)
    left_idx = np.maximum.accumulate(np.where(~bad, cols, -1), axis=1)
    right_idx = np.minimum.accumulate(np.where(~bad, cols, w)[:, ::-1], axis=1)[:, ::-1]
    take = np.where(left_idx >= 0, left_idx, right_idx)
    fillable = bad & (take < w)
    out[fillable] = out[rows[fillable], take[fillable]]
    if np.isnan(out).any():  # rows with no answer at all: the nearest row's values are no better than none
        out[~np.isfinite(out)] = np.nan
    return out


def sgbm_right_view(left: np.ndarray, right: np.ndarray, search: SearchRange | int | float) -> np.ndarray:
    """Fair SGBM's disparity of the right view (on the mirrored, swapped pair), for the left-right consistency
    of the label-free figures; NaN where it gives no answer."""
    return np.ascontiguousarray(sgbm_disparity(right[:, ::-1], left[:, ::-1], search)[:, ::-1])


__all__ = ["SGBM_PARAMETERS", "SearchRange", "WLS_PARAMETERS", "fill_invalid", "has_wls", "sgbm_disparity",
           "sgbm_disparity_unpadded", "sgbm_right_view", "sgbm_wls_disparity"]
