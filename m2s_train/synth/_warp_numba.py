"""Compiled (numba) form of the forward warp's source map: one pass per row, same maths.

It computes exactly what ``warp._maps_numpy`` computes (tested bit for bit), in float32
throughout, but keeps a row's visible samples in a small buffer and walks them with a pointer
instead of ~15 whole-image numpy passes. Imported only through ``warp._numba_kernel``.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, fastmath=False)
def warp_maps(d, max_gap, map_xy, hole, visible, right_disp):  # pragma: no cover - compiled
    h, w = d.shape
    inf = np.float32(np.inf)
    nan = np.float32(np.nan)
    half = np.float32(0.5)
    xt = np.empty(w, np.float32)
    vis = np.empty(w, np.bool_)
    s_xt = np.empty(w, np.float32)  # the row's visible samples: landing position, source column
    s_col = np.empty(w, np.float32)
    s_key = np.empty(w, np.int64)  # ceil(landing position) clipped to the row
    lo = np.float32(-0.5)
    hi = np.float32(w - 0.5)
    last = np.float32(w - 1)
    for r in range(h):
        for x in range(w):
            v = d[r, x]
            if np.isfinite(v) and v >= 0:
                xt[x] = np.float32(x) - v
            else:
                xt[x] = inf
        # nearest surface: visible iff left of every landing position further right
        m = inf
        for x in range(w - 1, -1, -1):
            vis[x] = xt[x] < m
            visible[r, x] = vis[x] and xt[x] >= lo and xt[x] <= hi
            if xt[x] < m:
                m = xt[x]
        n = 0
        for x in range(w):
            if vis[x]:
                s_xt[n] = xt[x]
                s_col[n] = np.float32(x)
                c = np.ceil(xt[x])
                if c > last:
                    c = last
                if c < -1:
                    c = np.float32(-1)
                s_key[n] = np.int64(c)
                n += 1
        cnt = 0  # samples with key <= t
        for t in range(w):
            while cnt < n and s_key[cnt] <= t:
                cnt += 1
            tf = np.float32(t)
            mx = np.float32(-2.0)
            if cnt > 0:
                p = cnt - 1
                xp = s_xt[p]
                cp = s_col[p]
                if p + 1 < n:
                    gp = s_xt[p + 1] - xp
                    cnp = s_col[p + 1]
                else:
                    gp = inf
                    cnp = np.float32(-1.0)
                off = tf - xp
                done = False
                if gp <= max_gap and cnp == cp + np.float32(1.0):
                    mx = off / gp + cp  # between adjacent source pixels of one surface
                    done = np.isfinite(mx)
                if not done:
                    mx = np.float32(-2.0)
                    if gp <= max_gap:  # occluded pixels skipped in between: the nearer sample
                        mx = cp if off / gp < half else cnp
                    elif off <= half:
                        mx = cp
                    elif cnp >= 0 and xp + gp - tf <= half:
                        mx = cnp
            elif n > 0 and s_xt[0] - tf <= half:  # before the row's first sample
                mx = s_col[0]
            map_xy[r, t, 0] = mx
            map_xy[r, t, 1] = np.float32(r)
            hole[r, t] = mx < 0
            right_disp[r, t] = nan if mx < 0 else mx - tf
