"""Compiled (numba) form of :func:`m2s_stereo.temporal.step_numpy`: one pass over the pixels, the
same float32 arithmetic in the same order (tested bit for bit). Imported only through
``temporal._numba_step``."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, fastmath=False, error_model="numpy")
def step(d, c, state, conf, age, jumps, alpha, delta, persistence, confirm):  # pragma: no cover - compiled
    h, w = d.shape
    one = np.float32(1.0)
    zero = np.float32(0.0)
    nan = np.float32(np.nan)
    big = np.int32(2147483646)
    for i in range(h):
        for j in range(w):
            x = d[i, j]
            s = state[i, j]
            valid = x > zero and x < np.inf  # NaN, <= 0 and inf: no measurement
            had = s == s and abs(s) < np.inf
            if valid and had and abs(x - s) <= delta:  # the same surface: confidence-weighted average
                wn = alpha * c[i, j]
                wo = (one - alpha) * conf[i, j]
                total = wn + wo
                if total > zero:
                    state[i, j] = (wn * x + wo * s) / total
                else:
                    state[i, j] = x
                conf[i, j] = total
                jumps[i, j] = 0
            elif valid and had:  # a jump: taken at once when as confident as the state, else once confirmed
                n = min(jumps[i, j] + 1, big)
                if c[i, j] >= conf[i, j] or n >= confirm:
                    state[i, j] = x
                    conf[i, j] = c[i, j]
                    jumps[i, j] = 0
                else:
                    jumps[i, j] = n
            elif valid:  # no state yet
                state[i, j] = x
                conf[i, j] = c[i, j]
                jumps[i, j] = 0
            else:
                if not (had and age[i, j] < persistence):
                    state[i, j] = nan
                    conf[i, j] = zero
                jumps[i, j] = 0
            if valid:
                age[i, j] = 0
            else:
                age[i, j] = min(age[i, j] + 1, big)
