"""Compiled (numba) form of :func:`calib.geometry.fill_outputs`: one pass over the frame.

Computes exactly what the numpy path computes (tested bit for bit), in float32 throughout:
the shifted disparity, the depth with its validity and range, and the back-projected
(optionally coloured) points, row by row while the row is in cache, instead of ~15 whole-image
numpy passes. Imported only through ``geometry._numba_fill``.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, fastmath=False, error_model="numpy")  # x/0 -> inf, as numpy
def fill(disp, doffs, fb, lo, hi, col_factor, row_factor, stride, colors,
         disp_out, depth_out, points, rgb):  # pragma: no cover - compiled
    """Unwanted outputs are passed as arrays with a zero-length first axis. ``colors`` is the
    full-resolution image (read at every ``stride``-th pixel), so that one compiled version
    serves every stride."""
    h, w = disp.shape
    nan = np.float32(np.nan)
    inf = np.float32(np.inf)
    zero = np.float32(0.0)
    want_disp = disp_out.shape[0] > 0
    want_depth = depth_out.shape[0] > 0
    want_points = points.shape[0] > 0
    want_rgb = rgb.shape[0] > 0
    with_colors = colors.shape[0] > 0
    z = np.empty(w, np.float32)  # the row's depth for the points: NaN when invalid or out of range
    zd = np.empty(w, np.float32)  # the row's depth image: NaN without a measurement, -inf/+inf out of range
    for i in range(h):
        for j in range(w):
            d = disp[i, j]
            s = d + doffs
            zj = fb / s
            measured = d > zero and s > zero and s < inf
            if not measured:
                zd[j] = nan
                z[j] = nan
            elif zj < lo:
                zd[j] = -inf
                z[j] = nan
            elif zj > hi:
                zd[j] = inf
                z[j] = nan
            else:
                zd[j] = zj
                z[j] = zj if zj < inf else nan  # fb / 1e-30 overflows: far, but not a point
        if want_disp:
            for j in range(w):
                d = disp[i, j]
                s = d + doffs
                disp_out[i, j] = s if d > zero and s > zero else nan
        if want_depth:
            for j in range(w):
                depth_out[i, j] = zd[j]
        if i % stride or not (want_points or want_rgb):
            continue
        pi = i // stride
        if want_points:
            fy = row_factor[pi]
            for pj in range(points.shape[1]):
                zj = z[pj * stride]
                points[pi, pj, 0] = zj * col_factor[pj]
                points[pi, pj, 1] = zj * fy
                points[pi, pj, 2] = zj
        if want_rgb and with_colors:
            row = colors[i, ::stride]  # the image row, at every stride-th pixel
            for pj in range(rgb.shape[1]):
                rgb[pi, pj] = ((np.uint32(row[pj, 0]) << np.uint32(16)) | (np.uint32(row[pj, 1]) << np.uint32(8))
                               | np.uint32(row[pj, 2]))
        elif want_rgb:
            for pj in range(rgb.shape[1]):
                rgb[pi, pj] = np.uint32(0)
