"""Temporal filter of a disparity stream: edge-preserving, confidence-aware, in the spirit of the
RealSense SDK's temporal filter.

Per pixel, with the filtered state ``s`` (disparity), its confidence ``c_s`` and the frames since
its last measurement ``age``, and the new measurement ``d`` with confidence ``c``:

- ``d`` within ``delta`` px of ``s``: a confidence-weighted running average,
  ``s <- (a c d + (1 - a) c_s s) / (a c + (1 - a) c_s)`` and ``c_s <- a c + (1 - a) c_s``, with
  ``a = alpha`` (equal confidences give a plain exponential average with factor ``alpha``; a
  confident new value moves the state faster than an unsure one);
- ``d`` farther than ``delta`` from ``s`` (an edge moved, the scene changed, or an ambiguous pixel
  flipped to another match): the state resets to ``d`` at once when ``d`` is at least as confident
  as the state (``c >= c_s``; always without a confidence: the RealSense behaviour), else only once
  the jump has lasted ``confirm`` frames in a row. Nothing is smeared across depth edges, a real
  change shows within ``confirm`` frames, and a low-confidence pixel that flips between two matches
  from frame to frame keeps its state instead of flickering with it;
- no state yet: the state is ``d``;
- no measurement (NaN or <= 0: invalid, or masked by the confidence threshold): the state is held for
  ``persistence`` frames, then the pixel is invalid (NaN) too.

The compiled pass (numba, one loop over the pixels) and the numpy pass give the same bits
(tested); numpy is the fallback without numba. The state lives in the filter: :meth:`reset`
after a jump in time (a bag that loops, a camera restart).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TemporalConfig:
    # defaults chosen on a noisy static sequence (benchmarks/bench_confidence.py): flicker 2.8x lower, EPE -0.4 %
    alpha: float = 0.3  # weight of the new measurement (RealSense's smoothing alpha)
    delta: float = 2.0  # px: a larger change is a jump (RealSense's smoothing delta)
    persistence: int = 2  # frames a pixel without a measurement keeps its last value (0: none)
    confirm: int = 3  # frames a less confident jump must last before the state follows it (1: at once)

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"temporal alpha must be in (0, 1], got {self.alpha}")
        if not self.delta > 0:
            raise ValueError(f"temporal delta must be > 0 px, got {self.delta}")
        if self.persistence < 0:
            raise ValueError(f"temporal persistence must be >= 0 frames, got {self.persistence}")
        if self.confirm < 1:
            raise ValueError(f"temporal confirm must be >= 1 frame, got {self.confirm}")


def _numba_step():
    try:
        from m2s_stereo._temporal_numba import step
    except ImportError:
        return None
    return step


def temporal_backend() -> str:
    return "numba" if _numba_step() is not None else "numpy"


def step_numpy(d: np.ndarray, c: np.ndarray, state: np.ndarray, conf: np.ndarray, age: np.ndarray, jumps: np.ndarray,
               alpha: float, delta: float, persistence: int, confirm: int) -> None:
    """One frame, in place on ``state``/``conf``/``age``/``jumps`` (float32, float32, int32, int32 HxW); see
    the module doc."""
    a = np.float32(alpha)
    big = np.iinfo(np.int32).max - 1
    with np.errstate(invalid="ignore"):
        valid = (d > 0) & (d < np.inf)  # NaN, <= 0 and inf: no measurement (DESIGN: disparity <= 0 is invalid)
    had = np.isfinite(state)
    with np.errstate(invalid="ignore"):
        close = valid & had & (np.abs(d - state) <= np.float32(delta))
        jump = valid & had & ~close
        jumps_now = np.where(jump, np.minimum(jumps + 1, big), 0)
        follow = jump & ((c >= conf) | (jumps_now >= confirm))  # the state takes the jump
        wn = a * c
        wo = (np.float32(1) - a) * conf
        total = wn + wo
        blended = np.where(total > 0, (wn * d + wo * state) / np.where(total > 0, total, np.float32(1)), d)
    hold = ~valid & had & (age < persistence)
    take = (valid & ~had) | follow
    new_state = np.where(close, blended, np.where(take, d, np.where(hold | jump, state, np.float32(np.nan))))
    new_conf = np.where(close, total, np.where(take, c, np.where(hold | jump, conf, np.float32(0))))
    np.copyto(jumps, np.where(follow, 0, jumps_now).astype(np.int32))
    np.copyto(age, np.where(valid, 0, np.minimum(age + 1, big)).astype(np.int32))
    np.copyto(state, new_state.astype(np.float32))
    np.copyto(conf, new_conf.astype(np.float32))


class TemporalFilter:
    """The filter with its state; :meth:`__call__` takes a frame's disparity (NaN or <= 0 = no measurement) and
    confidence (None: 1 everywhere) and returns the filtered disparity (a new array)."""

    def __init__(self, config: TemporalConfig = TemporalConfig(), backend: str = "auto") -> None:
        if backend not in ("auto", "numba", "numpy"):
            raise ValueError(f"temporal filter backend must be auto, numba or numpy, got {backend!r}")
        kernel = _numba_step() if backend in ("auto", "numba") else None
        if backend == "numba" and kernel is None:
            raise ValueError("temporal filter backend 'numba' needs numba: pip install numba")
        self.config = config
        self._kernel = kernel
        self.backend = "numba" if kernel is not None else "numpy"
        self.state: np.ndarray | None = None
        self.conf: np.ndarray | None = None
        self.age: np.ndarray | None = None
        self.jumps: np.ndarray | None = None

    def reset(self) -> None:
        self.state = self.conf = self.age = self.jumps = None

    def __call__(self, disparity: np.ndarray, confidence: np.ndarray | None = None) -> np.ndarray:
        d = np.ascontiguousarray(disparity, dtype=np.float32)
        if d.ndim != 2:
            raise ValueError(f"disparity must be HxW, got shape {d.shape}")
        c = np.ones_like(d) if confidence is None else np.ascontiguousarray(confidence, dtype=np.float32)
        if c.shape != d.shape:
            raise ValueError(f"confidence {c.shape} and disparity {d.shape} differ in size")
        if self.state is None or self.state.shape != d.shape:  # first frame, or the size changed
            self.state = np.full(d.shape, np.nan, np.float32)
            self.conf = np.zeros(d.shape, np.float32)
            self.age = np.zeros(d.shape, np.int32)
            self.jumps = np.zeros(d.shape, np.int32)
        cfg = self.config
        if self._kernel is not None:
            self._kernel(d, c, self.state, self.conf, self.age, self.jumps, np.float32(cfg.alpha), np.float32(cfg.delta),
                         np.int32(cfg.persistence), np.int32(cfg.confirm))
        else:
            step_numpy(d, c, self.state, self.conf, self.age, self.jumps, cfg.alpha, cfg.delta, cfg.persistence,
                       cfg.confirm)
        return self.state.copy()

    def warm_up(self) -> str:
        """Compile (or load the cached) kernel now, not on the first frame; returns the backend."""
        if self._kernel is not None:
            z = np.zeros((2, 2), np.float32)
            self._kernel(z, z + 1, np.full((2, 2), np.nan, np.float32), z.copy(), np.zeros((2, 2), np.int32),
                         np.zeros((2, 2), np.int32), np.float32(0.5), np.float32(1.0), np.int32(1), np.int32(2))
        return self.backend


__all__ = ["TemporalConfig", "TemporalFilter", "step_numpy", "temporal_backend"]
