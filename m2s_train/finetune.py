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
from m2s_train.s2dkd import (
    AlignConfig,
    DistillationDataset,
    S2DKDConfig,
    TeacherCache,
    fill_teacher_cache,
    s2dkd_loss,
)
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

    extra = {k: v for k, v in to_dict(config).items() if k != "train"}
    return train(tc, Path(out), resume=resume, overwrite=overwrite, device=device, progress=progress, loss_fn=loss_fn,
                 dataset=dataset, stop_after=stop_after, extra_config=extra)
