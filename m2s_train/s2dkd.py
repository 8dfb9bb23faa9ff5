"""Stage B: fine-tuning on sparse labels with Sparse-to-Dense Knowledge Distillation (S2DKD).

Our formulation after the Mono2Stereo paper (its code is not public); every term is switchable
for ablations. Per training image:

1. **Teacher**: relative inverse depth ``m`` from a monocular model, computed once and cached
   (:class:`TeacherCache`, keyed by the image content hash and the model id).
2. **Alignment**: scale ``s`` and shift ``t`` with ``s*m + t ~= d_gt`` on the pixels that have
   sparse GT, by iteratively re-weighted least squares with Huber weights and a final
   least-squares refit on the inliers (within 3 robust standard deviations), robust to LiDAR
   outliers and moving objects. A teacher is rejected (counted, not used) with fewer than
   ``min_labels`` labels, a non-positive scale, or a median absolute residual above
   ``max_residual`` px. Aligned teacher ``d_m = clamp(s*m + t, 0, max_disp)``.
3. **Loss** = sparse sequence loss on GT pixels
   + ``lambda_kd`` * KL(target || p) on the 1/4-resolution candidate distribution ``p`` (the
     softmax the initial disparity is regressed from), target = Laplacian centred at ``d_m / 4``
     with width ``width`` candidates, on pixels without GT (and with ``all_pixels_weight`` on
     pixels with GT);
   + ``lambda_grad`` * L1 between the x/y gradients of the final prediction and of ``d_m``, so
     edges follow the teacher rather than the blurred, sparse labels;
   + ``lambda_dense`` * the KL between every iteration's full-resolution prediction and ``d_m``,
     both read as Laplacian distributions of scale ``dense_width`` px (:func:`laplacian_kl`), on the
     same pixels and weights as the 1/4-resolution term: the teacher's information reaches the
     final disparity, not only the initial one.
   The target is a constant: gradients reach the network only through its own prediction.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from calib.safe_files import load_npy, write_bytes_atomic, write_text_atomic
from m2s_train.config import check_fields, num
from m2s_train.errors import ConfigError
from m2s_train.losses import gt_valid_mask, sequence_loss
from m2s_train.models.igev import StereoOutput

log = logging.getLogger(__name__)


# -- alignment ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class AlignConfig:
    min_labels: int = num(50, ge=2)
    max_residual: float = num(3.0, gt=0)  # px, median absolute residual after the fit
    iterations: int = num(10, ge=1)
    huber: float = num(1.0, gt=0)  # px, IRLS Huber threshold

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class Alignment:
    scale: float
    shift: float
    ok: bool
    labels: int
    residual: float  # median absolute residual, px
    reason: str = ""


def align_scale_shift(mono: np.ndarray, gt: np.ndarray, config: AlignConfig = AlignConfig()) -> Alignment:
    """Robust fit of ``s * mono + t`` to the finite, positive pixels of ``gt`` (IRLS, Huber)."""
    if mono.shape != gt.shape:
        raise ConfigError(f"teacher {mono.shape} and GT {gt.shape} differ in size")
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(gt) & (gt > 0) & np.isfinite(mono)
    n = int(valid.sum())
    if n < config.min_labels:
        return Alignment(0.0, 0.0, False, n, float("inf"), f"only {n} labelled pixels (< {config.min_labels})")
    x = mono[valid].astype(np.float64)
    y = gt[valid].astype(np.float64)
    a = np.stack([x, np.ones_like(x)], 1)
    w = np.ones_like(x)
    s = t = 0.0
    for _ in range(config.iterations):
        sw = np.sqrt(w)
        sol, *_ = np.linalg.lstsq(a * sw[:, None], y * sw, rcond=None)
        s, t = float(sol[0]), float(sol[1])
        r = np.abs(a @ sol - y)
        w = np.where(r <= config.huber, 1.0, config.huber / np.maximum(r, 1e-12))
    # Final least-squares refit on the inliers (Huber still gives outliers some weight).
    r = np.abs(s * x + t - y)
    inliers = r <= max(3.0 * 1.4826 * float(np.median(r)), config.huber)
    if inliers.sum() >= max(config.min_labels, 2):
        s, t = (float(v) for v in np.linalg.lstsq(a[inliers], y[inliers], rcond=None)[0])
    residual = float(np.median(np.abs(s * x + t - y)))
    if not s > 0:
        return Alignment(s, t, False, n, residual, f"non-positive scale {s:.3g} (teacher inverted or unrelated)")
    if residual > config.max_residual:
        return Alignment(s, t, False, n, residual, f"median residual {residual:.2f} px > {config.max_residual}")
    return Alignment(s, t, True, n, residual)


# -- sparse labels from dense GT -----------------------------------------------------------------

def sparsify_lidar_like(disparity: np.ndarray, rng: np.random.Generator, beams: int = 64,
                        sky_fraction: float = 0.3, keep: float = 0.7) -> np.ndarray:
    """KITTI-like sparse labels from a dense map: up to ``beams`` scan lines (at least 4 rows
    apart, slightly jittered) below the top ``sky_fraction`` of the image, each keeping a random
    ``keep`` fraction of its points and half as many on the row below (a beam's footprint).
    Others become NaN. About 18 % density at KITTI's 375 rows and on small crops alike.
    """
    h, w = disparity.shape
    top = int(h * sky_fraction)
    beams = max(2, min(beams, (h - top) // 4))
    rows = np.linspace(top, h - 1, beams) + rng.uniform(-1.0, 1.0, beams)
    rows = np.unique(np.clip(np.round(rows), top, h - 1).astype(int))
    mask = np.zeros((h, w), bool)
    mask[rows] = rng.random((rows.size, w)) < keep
    below = np.clip(rows + 1, 0, h - 1)
    mask[below] |= rng.random((rows.size, w)) < keep * 0.5
    out = np.full_like(disparity, np.nan, dtype=np.float32)
    out[mask] = disparity[mask]
    return out


def sparsify_scan(disparity: np.ndarray, rng: np.random.Generator, density: float = 0.05, sky_fraction: float = 0.3,
                  keep: float = 0.6) -> np.ndarray:
    """A single LiDAR sweep as KITTI's depth-completion data has it: about ``density`` of the pixels
    (4-6 % for a 64-beam scanner projected into a KITTI image), on scan lines below the top
    ``sky_fraction``, each line keeping a random ``keep`` share of its pixels, lines spaced so the
    density comes out (about 8 rows apart by default, jittered by a row): the vertical gaps between
    beams stay unlabelled whatever the crop, unlike ``lidar-like`` (18 %, lines 4 rows apart).
    Others become NaN."""
    h, w = disparity.shape
    top = int(h * sky_fraction)
    spacing = max(2.0, keep * (1.0 - sky_fraction) / density)
    rows = np.arange(top + spacing / 2, h, spacing)
    rows = rows + rng.uniform(-1.0, 1.0, rows.size)
    rows = np.unique(np.clip(np.round(rows), top, h - 1).astype(int))
    mask = np.zeros((h, w), bool)
    mask[rows] = rng.random((rows.size, w)) < keep
    out = np.full_like(disparity, np.nan, dtype=np.float32)
    out[mask] = disparity[mask]
    return out


SPARSIFY = {"lidar-like": sparsify_lidar_like, "scan": sparsify_scan}


# -- teacher cache ---------------------------------------------------------------------------------

class TeacherCache:
    """Relative inverse depth per image, ``<root>/<model key>/<image hash>.npy``; writes are atomic,
    so an interrupted ``cache-mono`` resumes where it stopped."""

    def __init__(self, root: str | os.PathLike, model_id: str) -> None:
        self.model_id = model_id
        key = hashlib.sha256(model_id.encode()).hexdigest()[:12]
        self.dir = Path(root) / key
        self.dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.dir / "model_id.txt", model_id + "\n")

    @staticmethod
    def image_key(image: np.ndarray) -> str:
        return hashlib.sha256(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()[:24]

    def path(self, image: np.ndarray) -> Path:
        return self.dir / f"{self.image_key(image)}.npy"

    def get(self, image: np.ndarray) -> np.ndarray | None:
        path = self.path(image)
        if not path.is_file():
            return None
        try:
            entry = load_npy(path, "teacher cache entry", ConfigError)
        except ConfigError as exc:
            log.warning("%s: recomputing", exc)
            return None
        if (problem := unusable_teacher(entry)) is not None:
            log.warning("teacher cache entry %s is unusable (%s): recomputing", path, problem)
            return None
        return entry

    def put(self, image: np.ndarray, inv_depth: np.ndarray) -> None:
        path = self.path(image)
        buf = io.BytesIO()
        np.save(buf, np.asarray(inv_depth, np.float32), allow_pickle=False)
        write_bytes_atomic(path, buf.getvalue())


TEACHER_LIMIT = 1e6  # |relative inverse depth| beyond this is a broken value (3e38: an overflow), not a scene


def unusable_teacher(entry: np.ndarray) -> str | None:
    """Why a cached teacher map cannot teach anything (then it is recomputed), or None."""
    if entry.ndim != 2 or min(entry.shape) < 1:
        return f"shape {entry.shape}, not an HxW map"
    finite = np.isfinite(entry)
    if not finite.any():
        return "every value is NaN or inf"
    if float(np.abs(entry[finite]).max()) > TEACHER_LIMIT:
        return f"{int((np.abs(entry[finite]) > TEACHER_LIMIT).sum())} value(s) beyond {TEACHER_LIMIT:g}"
    return None


def fill_teacher_cache(dataset: Any, cache: TeacherCache, estimator: Any, progress: bool = True) -> dict[str, int]:
    """Run ``estimator`` on every left image of ``dataset`` that the cache lacks."""
    from tqdm import tqdm

    done = computed = 0
    for i in tqdm(range(len(dataset)), desc="teacher cache", unit="img", disable=not progress):
        left = dataset.load(i)[0]
        if cache.get(left) is not None:
            done += 1
            continue
        inv = estimator.estimate([left], [f"{i:06d}"])[0]
        cache.put(left, inv)
        computed += 1
    return {"cached": done, "computed": computed}


# -- fine-tuning dataset ------------------------------------------------------------------------------

TEACHER_OK, TEACHER_MISSING, TEACHER_REJECTED, TEACHER_RESIZED = 0, 1, 2, 3


class DistillationDataset(torch.utils.data.Dataset):
    """Wraps a GT dataset (with ``load(i)``): optional sparsification, aligned teacher as an extra map.

    Items gain ``teacher`` (1xHxW aligned teacher disparity, 0 where invalid), ``teacher_valid``
    (1xHxW bool) and ``teacher_status`` (TEACHER_* code; rejected teachers are all-invalid).
    """

    def __init__(self, base: Any, cache: TeacherCache | None, augment: Any, max_disp: float, *,
                 sparsify: str | None = None, align: AlignConfig = AlignConfig(), seed: int = 0) -> None:
        if sparsify is not None and sparsify not in SPARSIFY:
            raise ConfigError(f"--sparsify must be one of {', '.join(SPARSIFY)}, got '{sparsify}'")
        self.base, self.cache, self.augment, self.max_disp = base, cache, augment, max_disp
        self.sparsify, self.align, self.seed = sparsify, align, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def teacher_for(self, left: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, int, Alignment | None]:
        h, w = gt.shape
        invalid = np.full((h, w), np.nan, np.float32)
        mono = self.cache.get(left) if self.cache is not None else None
        if mono is None:
            return invalid, TEACHER_MISSING, None
        status = TEACHER_OK
        if mono.shape != (h, w):
            mono = cv2.resize(mono.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
            status = TEACHER_RESIZED
        fit = align_scale_shift(mono, gt, self.align)
        if not fit.ok:
            return invalid, TEACHER_REJECTED, fit
        aligned = np.clip(fit.scale * mono + fit.shift, 0, self.max_disp).astype(np.float32)
        aligned[~np.isfinite(mono)] = np.nan  # NaNs in the teacher stay masked
        return aligned, status, fit

    def __getitem__(self, index: int) -> dict[str, object]:
        from m2s_train.data.stereo_datasets import make_item

        left, right, disp, noc = self.base.load(index)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.sparsify:
            disp = SPARSIFY[self.sparsify](disp, np.random.default_rng([self.seed, index]))  # fixed labels per image
        teacher, status, _ = self.teacher_for(left, disp)
        item = make_item(left, right, disp, noc, f"{index}", self.augment, rng, extras={"teacher": teacher})
        t = item.pop("teacher")
        item["teacher_valid"] = torch.isfinite(t) & (t > 0)
        item["teacher"] = torch.nan_to_num(t, nan=0.0)
        item["teacher_status"] = status
        return item


# -- the loss ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class S2DKDConfig:
    enabled: bool = True
    lambda_kd: float = num(0.5, ge=0)
    lambda_grad: float = num(0.5, ge=0)
    width: float = num(1.0, gt=0)  # Laplacian width b of the target distribution, in 1/4-resolution candidates
    all_pixels_weight: float = num(0.1, ge=0)  # KL weight on pixels that do have GT (0: unlabelled pixels only)
    gamma: float = num(0.9, gt=0, le=1)
    # full-resolution distillation of every iteration's prediction (0: off): see laplacian_kl
    lambda_dense: float = num(0.0, ge=0)
    dense_width: float = num(1.0, gt=0)  # px, Laplacian scale b of both distributions

    def __post_init__(self) -> None:
        check_fields(self)


def laplacian_target(teacher_q: torch.Tensor, candidates: int, width: float) -> torch.Tensor:
    """B,1,h,w disparity in candidate units -> B,D,h,w distribution exp(-|k - d| / width), normalised."""
    k = torch.arange(candidates, device=teacher_q.device, dtype=teacher_q.dtype).view(1, -1, 1, 1)
    return torch.softmax(-(k - teacher_q).abs() / width, dim=1)


def kl_distillation(prob: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted mean over pixels of KL(target || prob); ``target`` is treated as a constant."""
    target = target.detach()
    kl = (target * (torch.log(target.clamp(min=1e-12)) - torch.log(prob.clamp(min=1e-12)))).sum(1, keepdim=True)
    return (kl * weight).sum() / weight.sum().clamp(min=1e-6)


def laplacian_kl(pred: torch.Tensor, teacher: torch.Tensor, width: float) -> torch.Tensor:
    """KL(Laplace(teacher, b) || Laplace(pred, b)) per pixel, in closed form: ``|Δ|/b + exp(-|Δ|/b) - 1``
    with ``Δ = pred - teacher``. The prediction read as a distribution of scale ``b`` px matched to the
    teacher's: quadratic for small differences, linear (a bounded gradient, 1/b) for large ones, so
    a teacher that is wrong somewhere pulls no harder there than an L1 label would."""
    z = (pred - teacher.detach()).abs() / width
    return z + torch.exp(-z) - 1.0


def dense_distillation(iterations: list[torch.Tensor], teacher: torch.Tensor, weight: torch.Tensor, width: float,
                       gamma: float) -> torch.Tensor:
    """:func:`laplacian_kl` of every iteration's full-resolution prediction, weighted like the sequence
    loss (``gamma`` decay, normalised the same way), averaged over ``weight`` (B,1,H,W)."""
    n = len(iterations)
    decay = gamma ** (15.0 / (n - 1)) if n > 1 else 1.0
    total = teacher.new_zeros(())
    norm = weight.sum().clamp(min=1e-6)
    for i, pred in enumerate(iterations):
        total = total + decay ** (n - i - 1) * (laplacian_kl(pred, teacher, width) * weight).sum() / norm
    return total


def gradient_loss(pred: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """L1 between x and y finite differences of ``pred`` and ``teacher`` where both neighbours are valid."""
    total = pred.new_zeros(())
    count = pred.new_zeros(())
    for dim in (3, 2):
        n = pred.shape[dim] - 1
        dp = pred.narrow(dim, 1, n) - pred.narrow(dim, 0, n)
        dt = teacher.narrow(dim, 1, n) - teacher.narrow(dim, 0, n)
        m = (valid.narrow(dim, 1, n) & valid.narrow(dim, 0, n)).to(pred.dtype)
        total = total + ((dp - dt.detach()).abs() * m).sum()
        count = count + m.sum()
    return total / count.clamp(min=1.0)


def s2dkd_loss(output: StereoOutput, batch: dict[str, Any], model_config: Any,
               config: S2DKDConfig = S2DKDConfig()) -> tuple[torch.Tensor, dict[str, float]]:
    """Sparse sequence loss + lambda_kd * KL distillation + lambda_grad * gradient loss (see module doc)."""
    device = output.disparity.device
    gt = batch["disparity"].to(device)
    valid = batch["valid"].to(device)
    loss, stats = sequence_loss(output, gt, valid, model_config.max_disp, config.gamma)
    stats = {**stats, "sparse": stats["loss"], "kd": 0.0, "grad": 0.0, "dense": 0.0}
    if not config.enabled or "teacher" not in batch:
        return loss, stats
    teacher = batch["teacher"].to(device)
    t_valid = batch["teacher_valid"].to(device)
    status = batch["teacher_status"]
    stats["teacher_rejected"] = float((torch.as_tensor(status) == TEACHER_REJECTED).sum())
    stats["teacher_missing"] = float((torch.as_tensor(status) == TEACHER_MISSING).sum())
    if not t_valid.any():
        return loss, stats
    # 1/4 resolution: the teacher averaged over each 4x4 block (only where the whole block is valid)
    h4, w4 = output.init_prob.shape[-2:]
    pad_h, pad_w = 4 * h4 - teacher.shape[-2], 4 * w4 - teacher.shape[-1]
    t_pad = F.pad(teacher * t_valid, (0, pad_w, 0, pad_h))
    v_pad = F.pad(t_valid.float(), (0, pad_w, 0, pad_h))
    t_q = F.avg_pool2d(t_pad, 4) / F.avg_pool2d(v_pad, 4).clamp(min=1e-6) / 4.0
    v_q = F.avg_pool2d(v_pad, 4) > 0.999
    labelled = F.max_pool2d(F.pad(gt_valid_mask(gt, valid, model_config.max_disp).float(), (0, pad_w, 0, pad_h)), 4) > 0
    weight = v_q.float() * torch.where(labelled, config.all_pixels_weight, 1.0)
    target = laplacian_target(t_q, output.init_prob.shape[1], config.width)
    kd = kl_distillation(output.init_prob, target, weight)
    grad = gradient_loss(output.disparity, teacher, t_valid)
    loss = loss + config.lambda_kd * kd + config.lambda_grad * grad
    stats.update({"loss": float(loss.detach()), "kd": float(kd.detach()), "grad": float(grad.detach())})
    if config.lambda_dense > 0:
        labelled_full = gt_valid_mask(gt, valid, model_config.max_disp)
        weight_full = t_valid.float() * torch.where(labelled_full, config.all_pixels_weight, 1.0)
        dense = dense_distillation(output.iterations, teacher, weight_full, config.dense_width, config.gamma)
        loss = loss + config.lambda_dense * dense
        stats.update({"loss": float(loss.detach()), "dense": float(dense.detach())})
    return loss, stats
