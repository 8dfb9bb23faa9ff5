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


# -- confidence: sparsification ------------------------------------------------------------------------

DENSITIES = tuple(round(0.05 * k, 2) for k in range(1, 21))  # fraction of pixels kept: 5 %, 10 %, ..., 100 %
REPORT_DENSITIES = (0.5, 0.8, 0.95)  # bad-3 of the most confident pixels at these densities
BAD = 3.0  # px: the error that counts as bad (bad-3, the criterion the learned confidence predicts)


def _curves(order: np.ndarray, err: np.ndarray, densities: np.ndarray) -> dict[str, np.ndarray]:
    """EPE and bad-3 of the first ``k = ceil(x n)`` pixels of ``order``, for each density x."""
    n = err.size
    k = np.maximum(np.ceil(densities * n).astype(np.int64), 1)
    sorted_err = err[order]
    epe = np.cumsum(sorted_err, dtype=np.float64)[k - 1] / k
    bad = np.cumsum(sorted_err > BAD, dtype=np.float64)[k - 1] / k
    return {"epe": epe, "bad3": bad}


def _mean_over(curve: np.ndarray, x: np.ndarray, span: float) -> float:
    """Trapezoid area under ``curve`` over ``x`` divided by ``span`` (numpy 1.x has no ``trapezoid``)."""
    if x.size < 2:
        return float(curve[0])
    return float(np.sum((curve[1:] + curve[:-1]) * 0.5 * np.diff(x)) / span)


def sparsification(pred: Any, gt: Any, confidence: Any, mask: Any | None = None,
                   densities: tuple[float, ...] = DENSITIES) -> dict[str, Any] | None:
    """How well ``confidence`` ranks the errors of ``pred`` on the valid pixels of one image.

    For each density x, the EPE and bad-3 of the most confident x % of the pixels (ties broken by
    pixel order), next to the *oracle* (pixels sorted by their true error: the best any confidence
    can do) and *random* order (its expected curve is flat at the overall error). ``auc_*`` is the
    area under each curve over the densities, in the curve's units (EPE px / bad-3 fraction);
    ``gap_closed`` = (AUC_random - AUC_conf) / (AUC_random - AUC_oracle): 1 is the oracle, 0 no better
    than chance. A non-finite prediction is an error of +inf for bad-3 and is left out of EPE;
    a non-finite confidence counts as 0. None where no pixel is valid.
    """
    valid = _valid_errors(pred, gt, confidence, mask)
    if valid is None:
        return None
    return sparsification_of_errors(*valid, densities)


def _valid_errors(pred: Any, gt: Any, confidence: Any, mask: Any | None) -> tuple[np.ndarray, np.ndarray] | None:
    """Absolute errors (float64) and confidences (non-finite -> 0) of the valid, finite-prediction pixels."""
    p = _squeeze_hw("pred", _as_numpy(pred)).astype(np.float32)
    c = _squeeze_hw("confidence", _as_numpy(confidence)).astype(np.float32)
    if c.shape != p.shape:
        raise ShapeError(f"confidence {c.shape} and prediction {p.shape} differ")
    valid = valid_mask(gt, mask) & np.isfinite(p)
    if not valid.any():
        return None
    g = _squeeze_hw("gt", _as_numpy(gt)).astype(np.float32)
    return np.abs(p[valid] - g[valid]).astype(np.float64), np.nan_to_num(c[valid], nan=0.0, posinf=1.0, neginf=0.0)


def sparsification_of_errors(err: np.ndarray, conf: np.ndarray,
                             densities: tuple[float, ...] = DENSITIES) -> dict[str, Any]:
    """:func:`sparsification` of given per-pixel absolute errors (1-D, finite or +inf) and their
    confidences (1-D, finite), e.g. the valid pixels of a whole test set pooled."""
    err = np.asarray(err, np.float64)
    conf = np.asarray(conf)
    if err.shape != conf.shape or err.ndim != 1 or err.size == 0:
        raise ShapeError(f"errors {err.shape} and confidences {conf.shape} must be the same non-empty 1-D shape")
    x = np.asarray(densities, np.float64)
    curves = {"confidence": _curves(np.argsort(-conf, kind="stable"), err, x),
              "oracle": _curves(np.argsort(err, kind="stable"), err, x),
              "random": {"epe": np.full(x.size, err.mean()), "bad3": np.full(x.size, float(np.mean(err > BAD)))}}
    out: dict[str, Any] = {"densities": list(x), "pixels": int(err.size)}
    span = x[-1] - x[0] if x.size > 1 else 1.0
    for metric in ("epe", "bad3"):
        auc = {k: _mean_over(v[metric], x, span) for k, v in curves.items()}
        out[f"auc_{metric}"] = auc
        width = auc["random"] - auc["oracle"]
        out[f"gap_closed_{metric}"] = float((auc["random"] - auc["confidence"]) / width) if width > 0 else float("nan")
        out[f"curve_{metric}"] = {k: [float(v) for v in curves[k][metric]] for k in curves}
    for density in REPORT_DENSITIES:
        i = int(np.argmin(np.abs(x - density)))
        out[f"bad3_at_{round(100 * density)}"] = float(curves["confidence"]["bad3"][i])
    out["bad3_all"] = float(np.mean(err > BAD))
    return out


class SparsificationAccumulator:
    """Sparsification over images: each image's curves and figures, averaged over the images that have a
    valid pixel (mean of images, so a large image does not dominate).

    ``pooled=True`` also keeps every valid pixel's error and confidence (12 bytes a pixel: for test sets
    that fit in memory), and the summary gets ``pooled``: the sparsification of all pixels ranked
    together, i.e. "the most confident x % of the test set's pixels". The two differ where images
    differ in difficulty: averaged per image, an image the model gets mostly wrong keeps even the
    oracle's bad-3 at 50 % above 0, while pooled its pixels rank below the other images' good ones."""

    def __init__(self, pooled: bool = False) -> None:
        self.per_image: list[dict[str, Any]] = []
        self._pooled: list[tuple[np.ndarray, np.ndarray]] | None = [] if pooled else None

    def add(self, pred: Any, gt: Any, confidence: Any, mask: Any | None = None) -> dict[str, Any] | None:
        valid = _valid_errors(pred, gt, confidence, mask)
        if valid is None:
            return None
        result = sparsification_of_errors(*valid)
        self.per_image.append(result)
        if self._pooled is not None:
            self._pooled.append((valid[0].astype(np.float32), valid[1].astype(np.float32)))
        return result

    def summary(self) -> dict[str, Any] | None:
        if not self.per_image:
            return None
        rows = self.per_image
        out: dict[str, Any] = {"images": len(rows), "densities": rows[0]["densities"]}
        for metric in ("epe", "bad3"):
            out[f"auc_{metric}"] = {k: float(np.mean([r[f"auc_{metric}"][k] for r in rows])) for k in rows[0][f"auc_{metric}"]}
            auc = out[f"auc_{metric}"]
            width = auc["random"] - auc["oracle"]
            out[f"gap_closed_{metric}"] = float((auc["random"] - auc["confidence"]) / width) if width > 0 else float("nan")
            out[f"curve_{metric}"] = {k: list(np.mean([r[f"curve_{metric}"][k] for r in rows], 0))
                                      for k in rows[0][f"curve_{metric}"]}
        for key in [k for k in rows[0] if k.startswith("bad3_")]:
            out[key] = float(np.mean([r[key] for r in rows]))
        if self._pooled:
            out["pooled"] = sparsification_of_errors(np.concatenate([e for e, _ in self._pooled]),
                                                     np.concatenate([c for _, c in self._pooled]))
        return out


def sparsification_plot(summary: dict[str, Any], path: Any, title: str = "") -> None:
    """PNG of the sparsification curves (EPE and bad-3 vs density: confidence, oracle, random)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = 100 * np.asarray(summary["densities"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, metric, label in ((axes[0], "epe", "EPE (px)"), (axes[1], "bad3", "bad-3 (%)")):
        scale = 100.0 if metric == "bad3" else 1.0
        for name, style in (("confidence", "o-"), ("oracle", "--"), ("random", ":")):
            ax.plot(x, scale * np.asarray(summary[f"curve_{metric}"][name]), style,
                    label=f"{name} (AUC {scale * summary[f'auc_{metric}'][name]:.3g})")
        ax.set(xlabel="pixels kept, most confident first (%)", ylabel=label)
        ax.legend(fontsize=8)
    fig.suptitle(title or "sparsification")
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    plt.close(fig)


def confidence_map_rgb(confidence: Any) -> np.ndarray:
    """RGB uint8 visualisation of a confidence in [0, 1]: black (0) -> white (1), NaN red."""
    c = _squeeze_hw("confidence", _as_numpy(confidence)).astype(np.float32)
    grey = (np.clip(np.nan_to_num(c, nan=0.0), 0, 1) * 255 + 0.5).astype(np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    rgb[~np.isfinite(c)] = (255, 0, 0)
    return rgb


# -- label-free: how good a disparity is without ground truth ---------------------------------------------

RANGE_MARGIN_PX = 1.0  # a disparity within this of 0 or of the model's maximum sits at a range limit


def warp_right_to_left(right: np.ndarray, disparity: np.ndarray) -> np.ndarray:
    """The right image sampled at ``x - d`` for every left pixel (linear, rows kept): HxW[xC] float32, NaN
    where ``x - d`` falls outside the right image or ``d`` is not finite."""
    r = np.asarray(right, np.float32)
    d = _check_disparity(disparity, r.shape[:2])
    h, w = d.shape
    xs = np.arange(w, dtype=np.float32)[None, :] - d
    with np.errstate(invalid="ignore"):
        outside = ~(np.isfinite(xs) & (xs >= 0) & (xs <= w - 1))
    map_x = np.where(outside, 0, xs).astype(np.float32)
    map_y = np.repeat(np.arange(h, dtype=np.float32)[:, None], w, 1)
    warped = cv2.remap(r, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    warped[outside] = np.nan
    return warped


def _check_disparity(disparity: Any, shape: tuple[int, int]) -> np.ndarray:
    d = _squeeze_hw("disparity", _as_numpy(disparity)).astype(np.float32)
    if d.shape != tuple(shape):
        raise ShapeError(f"disparity {d.shape} and image {tuple(shape)} differ in size")
    return d


def visible_in_right(disparity: np.ndarray) -> np.ndarray:
    """Left pixels the disparity says the right camera sees: ``x - d`` inside the image and no pixel to the
    right landing at or left of it (z-buffer semantics, as the synthesis warp; HxW bool)."""
    d = np.asarray(disparity, np.float32)
    h, w = d.shape
    with np.errstate(invalid="ignore"):
        xs = np.where(np.isfinite(d), np.arange(w, dtype=np.float32)[None, :] - d, np.inf)
        # the smallest x_R of the pixels strictly to the right of each pixel (+inf at the right border)
        right_min = np.minimum.accumulate(xs[:, ::-1], axis=1)[:, ::-1]
        right_min = np.concatenate([right_min[:, 1:], np.full((h, 1), np.inf, np.float32)], axis=1)
        return np.isfinite(xs) & (xs >= 0) & (xs <= w - 1) & (xs < right_min)


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM of two grey float images in [0, 1] over 3x3 windows (monodepth's form), HxW."""
    c1, c2 = 0.01**2, 0.03**2
    blur = lambda x: cv2.blur(x, (3, 3), borderType=cv2.BORDER_REFLECT)  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def nan_mean(values: Any) -> float:
    """The mean of the finite values; NaN (quietly) when there is none."""
    a = np.asarray(values, np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


LABEL_FREE_FIGURES = ("photometric", "lr_consistency", "at_range_limit")  # the figures of label_free_metrics

TEXTURE_GRADIENT = 4.0 / 255.0  # a grey-level step that block matching (and SSIM) can lock onto
MIN_TEXTURED_FRACTION = 0.01  # fewer textured pixels than this: nothing to score a disparity by
IDENTICAL_VIEWS = 1.5 / 255.0  # mean |left - right| of the smoothed views below this: one scene on both topics
NOISE_SMOOTHING = 5  # px: the box both tests look through, so that sensor noise is not taken for texture


def unscorable_pair(left_grey: np.ndarray, right_grey: np.ndarray) -> str | None:
    """Why a pair (grey, [0, 1]) cannot score a disparity without ground truth, or None: texture-less
    views (an all-black or covered lens: any disparity reconstructs them) or identical views (a
    driver publishing the left image on both topics: disparity 0 everywhere reconstructs them). Both are
    judged on the views smoothed over :data:`NOISE_SMOOTHING` px, so that a dead camera's sensor noise
    (a black frame with noise of 3 grey levels) is neither texture nor a difference between the views."""
    size = (NOISE_SMOOTHING, NOISE_SMOOTHING)
    smooth = {name: cv2.blur(np.asarray(grey, np.float32), size) for name, grey in (("left", left_grey),
                                                                                      ("right", right_grey))}
    for name, grey in smooth.items():
        gx = np.abs(cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=1))
        textured = float((gx > TEXTURE_GRADIENT).mean())
        if textured < MIN_TEXTURED_FRACTION:
            return (f"the {name} image has no texture beyond noise ({100 * textured:.2f} % of its pixels show a "
                    f"horizontal step of {255 * TEXTURE_GRADIENT:.0f} grey levels once smoothed over "
                    f"{NOISE_SMOOTHING} px): black, saturated or a covered lens")
    diff = float(np.abs(smooth["left"] - smooth["right"]).mean())
    if diff < IDENTICAL_VIEWS:
        return (f"the left and right images are identical but for noise (mean difference {255 * diff:.2f} grey levels "
                f"once smoothed over {NOISE_SMOOTHING} px): the same image on both topics?")
    return None


def label_free_metrics(left: np.ndarray, right: np.ndarray, disparity: np.ndarray, right_disparity: np.ndarray | None = None,
                       max_disparity: float | None = None, lr_tolerance: float = 1.0) -> dict[str, Any]:
    """How good ``disparity`` (left reference, px) of a rectified RGB uint8 pair is, without ground truth.

    - ``photometric``: ``0.85 * (1 - SSIM) / 2 + 0.15 * L1`` (grey levels in [0, 1]) between the left
      image and the right one warped by the disparity, averaged over the pixels the disparity says
      are visible in the right view (monodepth's reconstruction error; lower is better);
    - ``lr_consistency``: with the right view's disparity (the model on the swapped, mirrored pair),
      the share of the checkable pixels it confirms within ``lr_tolerance`` px (higher is better);
    - ``at_range_limit``: the share of the pixels with a disparity that are within 1 px of 0 or of
      ``max_disparity`` (a model stuck at the ends of its range; lower is better).
    Returns the figures and the per-pixel maps (``photometric_map`` NaN where not visible). A pair that
    cannot score anything (:func:`unscorable_pair`: texture-less or identical views) gets NaN for
    ``photometric`` and ``lr_consistency`` and its reason in ``unscorable``: not a good score.
    """
    from calib.geometry import left_right_consistency

    l_grey = cv2.cvtColor(np.asarray(left, np.uint8), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    r_grey = cv2.cvtColor(np.asarray(right, np.uint8), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    d = _check_disparity(disparity, l_grey.shape)
    warped = warp_right_to_left(r_grey, d)
    visible = visible_in_right(d) & np.isfinite(warped)
    filled = np.where(visible, warped, l_grey)
    photo = 0.85 * np.clip((1.0 - ssim_map(l_grey, filled)) / 2.0, 0, 1) + 0.15 * np.abs(l_grey - filled)
    photo = np.where(visible, photo, np.nan).astype(np.float32)
    out: dict[str, Any] = {"photometric": float(np.nanmean(photo)) if visible.any() else float("nan"),
                           "visible_fraction": float(visible.mean()), "photometric_map": photo}
    finite = np.isfinite(d)  # NaN: no disparity given (masked), not a range problem
    with np.errstate(invalid="ignore"):
        limit = finite & (d <= RANGE_MARGIN_PX)
        if max_disparity is not None:
            limit |= finite & (d >= max_disparity - RANGE_MARGIN_PX)
    out["at_range_limit"] = float(limit.sum() / finite.sum()) if finite.any() else float("nan")
    if right_disparity is not None:
        consistent, checkable = left_right_consistency(d, right_disparity, lr_tolerance)
        out["lr_consistency"] = float(consistent.sum() / checkable.sum()) if checkable.any() else float("nan")
        out["lr_map"] = np.where(checkable, consistent, False)
    if (problem := unscorable_pair(l_grey, r_grey)) is not None:
        out.update(photometric=float("nan"), unscorable=problem)
        if "lr_consistency" in out:
            out["lr_consistency"] = float("nan")
    return out


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
