"""``m2s-train finetune`` / ``cache-mono``: sparse-label fine-tuning with S2DKD (see :mod:`m2s_train.s2dkd`)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m2s_train.checkpoints import check_run_dir
from m2s_train.config import to_dict
from m2s_train.data.stereo_datasets import build_dataset, check_labels
from m2s_train.errors import ConfigError
from calib.safe_files import read_json, write_json_atomic
from m2s_train.s2dkd import (
    TEACHER_MISSING,
    TEACHER_OK,
    TEACHER_REJECTED,
    TEACHER_RESIZED,
    AlignConfig,
    DistillationDataset,
    S2DKDConfig,
    TeacherCache,
    fill_teacher_cache,
    s2dkd_loss,
)
from m2s_train.synth.depth import SegmentPlaneDepthPrior
from m2s_train.synth.pipeline import DepthConfig, depth_estimator_from_config
from m2s_train.train import TrainConfig, train, training_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneConfig:
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4, steps=50_000, freeze_bn=True))
    s2dkd: S2DKDConfig = field(default_factory=S2DKDConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)  # the monocular teacher
    teacher_cache: str = "teacher_cache"
    sparsify: str | None = None  # "lidar-like": KITTI-like labels from dense GT


def teacher_cache(config: FinetuneConfig, base: Any, progress: bool = True) -> tuple[TeacherCache, dict[str, int]]:
    """The teacher cache of ``config``, filled for every left image of ``base`` (safe to interrupt and rerun)."""
    estimator = depth_estimator_from_config(config.depth)
    if isinstance(estimator, SegmentPlaneDepthPrior):
        log.warning("the S2DKD teacher is the offline segment-plane depth prior (procedural depth, not monocular depth): "
                    "no Depth Anything weights were given. Pass --depth-model DIR (docs/finetune.md says where the "
                    "weights come from), --depth-dir with precomputed maps, or --no-s2dkd")
    cache = TeacherCache(config.teacher_cache, estimator.model_id)
    counts = fill_teacher_cache(base, cache, estimator, progress=progress)
    log.info("teacher cache %s: %d cached, %d computed", cache.dir, counts["cached"], counts["computed"])
    return cache, counts


def cache_mono(config: FinetuneConfig, progress: bool = True) -> dict[str, Any]:
    """``m2s-train cache-mono``: fill the teacher cache for the fine-tuning datasets."""
    cache, counts = teacher_cache(config, build_dataset("+".join(config.train.datasets)), progress)
    return {"cache": str(cache.dir), "model_id": cache.model_id, **counts}


def run_finetune(config: FinetuneConfig, out: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
                 device: str = "auto", progress: bool = True, stop_after: int | None = None) -> dict[str, Any]:
    tc = config.train
    augment = tc.augmentation()
    if augment.spatial:
        raise ConfigError("train.augment.scale_prob must be 0 for fine-tuning: the spatial scale is not defined for "
                          "the teacher maps and sparse labels S2DKD crops alongside the pair")
    check_run_dir(Path(out), resume=resume, overwrite=overwrite, init=tc.init)  # before the (slow) teacher cache
    base = build_dataset("+".join(tc.datasets))
    max_disp = training_model(tc)[1].max_disp
    check_labels(base, max_disp, progress)  # labels that cannot train anything: refused before any step
    cache = teacher_cache(config, base, progress)[0] if config.s2dkd.enabled else None
    dataset = DistillationDataset(base, cache, augment, max_disp,
                                  sparsify=config.sparsify, align=config.align, seed=tc.seed)

    def loss_fn(output, batch, model_cfg):
        return s2dkd_loss(output, batch, model_cfg, config.s2dkd)

    teachers = check_teachers(dataset, progress) if config.s2dkd.enabled else None
    extra = {k: v for k, v in to_dict(config).items() if k != "train"}
    summary = train(tc, Path(out), resume=resume, overwrite=overwrite, device=device, progress=progress,
                    loss_fn=loss_fn, dataset=dataset, stop_after=stop_after, extra_config=extra)
    if teachers is not None:  # beside the run's own summary, where a reader of the run looks
        summary["teachers"] = teachers
        path = Path(out) / "train_summary.json"
        if path.is_file():
            write_json_atomic(path, {**read_json(path, "training summary"), "teachers": teachers})
    return summary


def check_teachers(dataset: DistillationDataset, progress: bool = True) -> dict[str, Any]:
    """How many training images have a usable teacher (aligned to their labels); S2DKD with none is refused,
    and images without one (rejected by the alignment, or missing) are named with their share: they train on
    the sparse labels alone."""
    from tqdm import tqdm

    status_names = {TEACHER_OK: "ok", TEACHER_RESIZED: "ok", TEACHER_MISSING: "missing", TEACHER_REJECTED: "rejected"}
    counts = {"ok": 0, "missing": 0, "rejected": 0}
    for i in tqdm(range(len(dataset)), desc="teachers", unit="img", disable=not progress):
        left, _, disp, _ = dataset.base.load(i)
        counts[status_names[dataset.teacher_for(left, disp)[1]]] += 1
    n = len(dataset)
    without = counts["missing"] + counts["rejected"]
    if n and without == n:
        raise ConfigError(f"S2DKD was asked for, but none of the {n} training images has a usable teacher "
                          f"({counts['rejected']} rejected by the alignment to the labels: too few labels or a residual "
                          f"above align.max_residual; {counts['missing']} missing from the cache): fix the teacher "
                          "(--depth-model) or train on the sparse labels alone (--no-s2dkd)")
    if without:
        log.warning("%d of %d training images (%.0f %%) have no usable teacher (%d rejected by the alignment, %d "
                    "missing) and train on their sparse labels alone", without, n, 100 * without / n,
                    counts["rejected"], counts["missing"])
    model_id = dataset.cache.model_id if dataset.cache is not None else None
    return {**counts, "images": n, "without_teacher_share": without / n if n else 0.0, "teacher_model": model_id,
            "procedural_prior": model_id == SegmentPlaneDepthPrior.model_id}
