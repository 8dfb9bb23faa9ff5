"""OpenCV StereoSGBM as the baseline every evaluation reports beside the model (with and without GT).

OpenCV only (no torch): the robot side (``m2s-eval-bag``) and training's evaluation use the same one.
"""

from __future__ import annotations

import cv2
import numpy as np


def sgbm_disparity(left: np.ndarray, right: np.ndarray, max_disp: int = 192, block: int = 5) -> np.ndarray:
    """OpenCV StereoSGBM (3-way, the usual P1/P2) on RGB uint8 images; NaN where it gives no answer."""
    num = max(16, int(np.ceil(max_disp / 16)) * 16)
    # OpenCV needs the search range to fit inside the image (it fails to allocate otherwise)
    num = min(num, (left.shape[1] // 16 - 1) * 16)
    if num < 16:
        return np.full(left.shape[:2], np.nan, np.float32)
    sgbm = cv2.StereoSGBM_create(minDisparity=0, numDisparities=num, blockSize=block, P1=8 * 3 * block**2,
                                 P2=32 * 3 * block**2, disp12MaxDiff=1, uniquenessRatio=10, speckleWindowSize=100,
                                 speckleRange=2, mode=cv2.STEREO_SGBM_MODE_SGBM_3WAY)
    raw = sgbm.compute(cv2.cvtColor(left, cv2.COLOR_RGB2GRAY), cv2.cvtColor(right, cv2.COLOR_RGB2GRAY))
    disp = raw.astype(np.float32) / 16.0
    disp[raw < 0] = np.nan
    return disp


def fill_invalid(disp: np.ndarray) -> np.ndarray:
    """Invalid (NaN) pixels take the nearest valid value along the row from the left (dense for fair EPE)."""
    out = disp.copy()
    bad = ~np.isfinite(out)
    if not bad.any():
        return out
    h, w = out.shape
    idx = np.where(~bad, np.arange(w)[None, :], 0)
    np.maximum.accumulate(idx, axis=1, out=idx)
    out[bad] = out[np.arange(h)[:, None].repeat(w, 1)[bad], idx[bad]]
    out[~np.isfinite(out)] = 0.0
    return out


def sgbm_right_view(left: np.ndarray, right: np.ndarray, max_disp: int = 192) -> np.ndarray:
    """SGBM's disparity of the right view (on the mirrored, swapped pair), for the left-right consistency
    of the label-free figures; NaN where it gives no answer."""
    return np.ascontiguousarray(sgbm_disparity(right[:, ::-1], left[:, ::-1], max_disp)[:, ::-1])


__all__ = ["fill_invalid", "sgbm_disparity", "sgbm_right_view"]
