"""Forward warping of the left view to a novel right view with exact visibility.

For a rectified pair the right-view position of left pixel ``x`` is ``x_R = x - d(x)``. On
one row, left pixel ``x`` is hidden in the right view exactly when some pixel to its right
lands at or left of it (``min_{x' > x} x_R(x') <= x_R(x)``): such a pixel has a larger
disparity, i.e. it is nearer, so collisions resolve to the nearest surface (a z-buffer) with
one reversed running minimum instead of a scatter. The visible pixels of a row land in
strictly increasing order, so every right-view pixel is interpolated (sub-pixel, linearly)
between its two visible neighbours; where they are further apart than ``max_gap`` the pixel
is a disocclusion hole. Everything is vectorised over the whole image.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import cv2
import numpy as np

from calib.errors import ShapeError


class WarpResult(NamedTuple):
    """Outputs of :func:`forward_warp`.

    right: HxW[xC] warped image, same dtype as the input; holes are 0.
    hole: HxW bool, right-view pixels with no source (disocclusions and the out-of-view border).
    visible: HxW bool, left pixels that are seen in the right view inside the frame (the
        non-occluded mask of the left disparity).
    right_disparity: HxW float32 disparity of the right view, NaN in holes.
    """

    right: np.ndarray
    hole: np.ndarray
    visible: np.ndarray
    right_disparity: np.ndarray


@functools.cache
def _numba_kernel():
    """The compiled source-map kernel, or None where numba is not installed."""
    try:
        from m2s_train.synth._warp_numba import warp_maps
    except ImportError:
        return None
    return warp_maps


def forward_warp(image: np.ndarray, disparity: np.ndarray, max_gap: float = 2.0,
                 backend: str = "auto") -> WarpResult:
    """Warp the left image to the right view with ``x_R = x_L - d``.

    Args:
        image: HxW or HxWxC left image (uint8 or float).
        disparity: HxW left disparity in pixels, >= 0; NaN/inf/negative pixels are ignored.
        max_gap: visible neighbours further apart than this (right-view pixels) leave a hole
            between them instead of being interpolated (a depth discontinuity).
        backend: ``"numba"`` (one compiled pass per row, ~4x faster), ``"numpy"`` (whole-image
            array passes, no extra dependency), or ``"auto"``: numba when it is installed. Both
            compute the same source map bit for bit.

    Returns:
        :class:`WarpResult`.
    """
    disparity = np.asarray(disparity)
    if disparity.ndim != 2:
        raise ShapeError(f"disparity must be HxW, got shape {disparity.shape}")
    h, w = disparity.shape
    if image.shape[:2] != (h, w) or image.ndim not in (2, 3):
        raise ShapeError(f"image must be HxW or HxWxC with HxW = {h}x{w}, got shape {image.shape}")
    if max_gap < 1.0:
        raise ShapeError(f"max_gap must be >= 1 pixel, got {max_gap}")

    d = np.ascontiguousarray(disparity, dtype=np.float32)
    if backend == "auto":
        backend = "numba" if _numba_kernel() is not None else "numpy"
    if backend == "numba":
        kernel = _numba_kernel()
        if kernel is None:
            raise ShapeError("forward_warp(backend='numba') needs numba: pip install numba "
                             "(or use backend='numpy')")
        map_xy = np.empty((h, w, 2), np.float32)
        hole = np.empty((h, w), bool)
        visible = np.empty((h, w), bool)
        right_disp = np.empty((h, w), np.float32)
        kernel(d, np.float32(max_gap), map_xy, hole, visible, right_disp)
        right = cv2.remap(image, map_xy, None, cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return WarpResult(right.reshape(image.shape), hole, visible, right_disp)
    if backend != "numpy":
        raise ShapeError(f"forward_warp backend must be 'auto', 'numba' or 'numpy', got {backend!r}")
    map_x, visible = _maps_numpy(d, max_gap)
    xs = np.arange(w, dtype=np.float32)
    t = xs[None, :]
    hole = map_x < 0

    map_y = np.broadcast_to(np.arange(h, dtype=np.float32)[:, None], (h, w))
    right = cv2.remap(image, map_x, np.ascontiguousarray(map_y), cv2.INTER_LINEAR,
                      borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    right = right.reshape(image.shape)  # holes sample only the zero border (map_x = -2)
    # x_R = x_L - d is linear along the interpolated source, so the right-view disparity is exact.
    right_disp = map_x - t
    right_disp[hole] = np.nan
    return WarpResult(right, hole, visible, right_disp)


def _maps_numpy(d: np.ndarray, max_gap: float) -> tuple[np.ndarray, np.ndarray]:
    """The source column of every right-view pixel (-2 = hole) and the visible mask, in numpy."""
    h, w = d.shape
    with np.errstate(invalid="ignore"):
        usable = np.isfinite(d) & (d >= 0)
    xs = np.arange(w, dtype=np.float32)
    xt = np.where(usable, xs[None, :] - d, np.float32(np.inf))  # H,W landing positions x_R

    # Nearest-surface visibility: reversed running minimum over the pixels to the right.
    min_right = np.empty_like(xt)
    min_right[:, -1] = np.inf
    np.minimum.accumulate(xt[:, :0:-1], axis=1, out=min_right[:, -2::-1])
    visible_src = xt < min_right

    # Visible samples, row-major, hence sorted by (row, x_R). Sample 0 is a sentinel so
    # that every look-up below is in range; real samples are 1..n.
    per_row = np.count_nonzero(visible_src, axis=1).astype(np.int32)
    n = int(per_row.sum())
    row_end = np.cumsum(per_row, dtype=np.int32) + 1  # exclusive end index of each row's samples
    row_start = row_end - per_row
    nonempty_end = row_end[per_row > 0] - 1  # last sample of each non-empty row
    s_xt = np.empty(n + 1, np.float32)
    s_xt[0] = -np.inf
    s_xt[1:] = xt[visible_src]
    s_col = np.empty(n + 1, np.float32)
    s_col[0] = -1.0
    s_col[1:] = np.broadcast_to(xs, (h, w))[visible_src]
    # gap to the next visible sample of the same row (inf for the last one of a row)
    s_gap = np.empty(n + 1, np.float32)
    np.subtract(s_xt[1:], s_xt[:-1], out=s_gap[:-1])
    s_gap[nonempty_end] = np.inf
    s_gap[0] = np.inf
    s_next_col = np.empty(n + 1, np.float32)
    s_next_col[:-1] = s_col[1:]
    s_next_col[nonempty_end] = -1.0
    s_next_col[0] = -1.0
    # The common case, interpolation between adjacent source pixels of one surface, is
    # handled for all pixels at once; "span" is NaN where a sample has no such neighbour.
    s_span = np.where((s_gap <= max_gap) & (s_next_col == s_col + 1), s_gap, np.float32(np.nan))

    # For every right-view pixel t: the last visible sample with x_R <= t, i.e. ceil(x_R) <= t ("prev").
    # Samples are sorted by slot = row * (w + 1) + ceil(x_R) + 1 and numbered 1..n, so the last one
    # with slot <= k is simply the count of samples with slot <= k: a histogram and a running sum.
    row_key = (np.arange(h, dtype=np.int32) * (w + 1) + 1)[:, None]
    slot = (np.clip(np.ceil(xt), -1, w - 1).astype(np.int32) + row_key)[visible_src]
    counts = np.bincount(slot, minlength=h * (w + 1))
    prev = np.cumsum(counts, dtype=np.int32).reshape(h, w + 1)[:, 1:]  # H,W (may point into an earlier row)
    prev_ok = prev >= row_start[:, None]

    t = xs[None, :]
    off = t - np.take(s_xt, prev)
    map_x = off / np.take(s_span, prev)
    map_x += np.take(s_col, prev)
    good = prev_ok & np.isfinite(map_x)
    np.copyto(map_x, np.float32(-2.0), where=~good)  # -2: fully outside, so remap gives 0 there

    # The rest (discontinuities, skipped occluded pixels, row starts): the sample within half a
    # pixel, linear interpolation only between adjacent source pixels, else a hole.
    rows_f, cols_f = np.nonzero(~good)
    p = prev[rows_f, cols_f]
    p_ok = prev_ok[rows_f, cols_f]
    tt = cols_f.astype(np.float32)
    x_p, c_p, g_p, cn_p = (np.take(a, p) for a in (s_xt, s_col, s_gap, s_next_col))
    o_p = tt - x_p
    interp = p_ok & (g_p <= max_gap)
    fix = np.full(rows_f.size, -2.0, dtype=np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):  # rows without samples see the sentinel
        fix[interp] = np.where(o_p / g_p < 0.5, c_p, cn_p)[interp]
        loose = p_ok & ~interp
        fix[loose & (o_p <= 0.5)] = c_p[loose & (o_p <= 0.5)]
        take_next = loose & (o_p > 0.5) & (cn_p >= 0) & (x_p + g_p - tt <= 0.5)
    fix[take_next] = cn_p[take_next]
    # before the first sample of a row: that sample, if within half a pixel
    first = row_start[rows_f]
    has_first = (first < row_end[rows_f]) & ~p_ok
    first_c = np.clip(first, 0, n)
    take_first = has_first & (s_xt[first_c] - tt <= 0.5)
    fix[take_first] = s_col[first_c][take_first]
    map_x[rows_f, cols_f] = fix
    visible = visible_src & (xt >= -0.5) & (xt <= w - 0.5)
    return map_x, visible
