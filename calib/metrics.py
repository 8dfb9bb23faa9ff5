"""Disparity accuracy metrics: the one implementation used by training, evaluation and replay.

All metrics are computed on *valid* pixels: finite GT > 0 (and inside an optional mask / max
disparity). Definitions:
- EPE: mean |d_pred - d_gt| in px;
- D1 (KITTI): fraction of pixels with error > 3 px **and** > 5 % of the GT disparity;
- bad-t: fraction with error > t px, for t in 1, 2, 3.
Inputs are numpy arrays or torch tensors (converted on the CPU; no torch import here).
A non-finite prediction on a valid pixel counts as an error of +inf (bad everywhere, EPE inf).
Where there is no valid pixel, every metric is NaN (``null`` in JSON), never 0: nothing was measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from calib.errors import ShapeError

THRESHOLDS = (1.0, 2.0, 3.0)


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def _squeeze_hw(name: str, x: np.ndarray) -> np.ndarray:
    """HxW from HxW, 1xHxW or 1x1xHxW (leading singleton dims only: a 1xW image stays 2-D)."""
    while x.ndim > 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 2:
        raise ShapeError(f"{name} must be HxW (leading singleton dims allowed), got shape {x.shape}")
    return x


def valid_mask(gt: Any, mask: Any | None = None, max_disp: float | None = None) -> np.ndarray:
    """Pixels with usable ground truth: finite, > 0, optionally < max_disp and inside ``mask``."""
    g = _squeeze_hw("gt", _as_numpy(gt)).astype(np.float32)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(g) & (g > 0)
        if max_disp is not None:
            valid &= g < max_disp
    if mask is not None:
        m = _squeeze_hw("mask", _as_numpy(mask)).astype(bool)
        if m.shape != g.shape:
            raise ShapeError(f"mask {m.shape} and gt {g.shape} differ")
        valid &= m
    return valid


@dataclass
class ErrorCounts:
    """Sums over pixels, so images can be aggregated pixel-weighted (KITTI) or per image."""

    pixels: int = 0
    abs_error_sum: float = 0.0
    d1: int = 0
    bad: dict[float, int] = field(default_factory=lambda: {t: 0 for t in THRESHOLDS})

    def add(self, other: ErrorCounts) -> None:
        self.pixels += other.pixels
        self.abs_error_sum += other.abs_error_sum
        self.d1 += other.d1
        for t in self.bad:
            self.bad[t] += other.bad[t]

    def summary(self) -> dict[str, float]:
        """EPE, D1, bad-t and the pixel count; every rate is NaN when no pixel was valid."""
        if not self.pixels:
            return {"epe": float("nan"), "d1": float("nan"), "pixels": 0,
                    **{f"bad{t:g}": float("nan") for t in self.bad}}
        n = self.pixels
        out = {"epe": self.abs_error_sum / n, "d1": self.d1 / n, "pixels": n}
        out.update({f"bad{t:g}": self.bad[t] / n for t in self.bad})
        return out


def error_counts(pred: Any, gt: Any, mask: Any | None = None, max_disp: float | None = None) -> ErrorCounts:
    p = _squeeze_hw("pred", _as_numpy(pred)).astype(np.float32)
    g = _squeeze_hw("gt", _as_numpy(gt)).astype(np.float32)
    if p.shape != g.shape:
        raise ShapeError(f"prediction {p.shape} and ground truth {g.shape} differ; resize the prediction "
                         "(and scale its values by the width ratio) first")
    valid = valid_mask(g, mask, max_disp)
    err = np.abs(p[valid] - g[valid])
    err[~np.isfinite(err)] = np.inf
    return ErrorCounts(
        pixels=int(valid.sum()),
        abs_error_sum=float(err.sum(dtype=np.float64)),
        d1=int(np.count_nonzero((err > 3.0) & (err > 0.05 * g[valid]))),
        bad={t: int(np.count_nonzero(err > t)) for t in THRESHOLDS},
    )


def disparity_metrics(pred: Any, gt: Any, mask: Any | None = None, noc_mask: Any | None = None,
                      max_disp: float | None = None) -> dict[str, float]:
    """EPE, D1, bad-1/2/3 on valid pixels; with ``noc_mask`` also ``noc_*`` and ``occ_*`` splits."""
    out = error_counts(pred, gt, mask, max_disp).summary()
    if noc_mask is not None:
        noc = _squeeze_hw("noc_mask", _as_numpy(noc_mask)).astype(bool)
        base = np.ones_like(noc) if mask is None else _squeeze_hw("mask", _as_numpy(mask)).astype(bool)
        for prefix, m in (("noc", base & noc), ("occ", base & ~noc)):
            out.update({f"{prefix}_{k}": v for k, v in error_counts(pred, gt, m, max_disp).summary().items()})
    return out


class MetricAccumulator:
    """Aggregate over images: pixel-weighted (``pixel``) and the mean of per-image values (``image``)."""

    def __init__(self) -> None:
        self.total = ErrorCounts()
        self.per_image: list[dict[str, float]] = []

    def add(self, pred: Any, gt: Any, mask: Any | None = None, max_disp: float | None = None, **extra: Any) -> dict[str, float]:
        counts = error_counts(pred, gt, mask, max_disp)
        self.total.add(counts)
        row = {**counts.summary(), **extra}
        self.per_image.append(row)
        return row

    def summary(self) -> dict[str, Any]:
        keys = ["epe", "d1", *(f"bad{t:g}" for t in THRESHOLDS)]
        rows = [r for r in self.per_image if r["pixels"]]
        image_mean = {k: float(np.mean([r[k] for r in rows])) if rows else float("nan") for k in keys}
        return {"images": len(self.per_image), "pixel": self.total.summary(), "image": image_mean}


def error_map_rgb(pred: Any, gt: Any, max_error: float = 3.0) -> np.ndarray:
    """RGB uint8 visualisation of |pred - gt|: 0..``max_error`` px blue -> red, no GT black."""
    p = _squeeze_hw("pred", _as_numpy(pred)).astype(np.float32)
    g = _squeeze_hw("gt", _as_numpy(gt)).astype(np.float32)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(g) & (g > 0)
    err = np.nan_to_num(np.abs(p - g), nan=max_error, posinf=max_error)
    scaled = np.clip(err / max_error * 255, 0, 255).astype(np.uint8)
    colour = cv2.applyColorMap(scaled, cv2.COLORMAP_JET)[:, :, ::-1].copy()
    colour[~valid] = 0
    return colour
