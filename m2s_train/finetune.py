"""``m2s-train finetune`` / ``cache-mono``: sparse-label fine-tuning with S2DKD (see :mod:`m2s_train.s2dkd`)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m2s_train.config import to_dict
from m2s_train.data.augment import AugmentConfig
from m2s_train.data.stereo_datasets import build_dataset
from m2s_train.models import model_config
from m2s_train.s2dkd import (
    AlignConfig,
    DistillationDataset,
    S2DKDConfig,
    TeacherCache,
    fill_teacher_cache,
    s2dkd_loss,
)
from m2s_train.synth.depth import create_depth_estimator
from m2s_train.synth.pipeline import DepthConfig
from m2s_train.train import TrainConfig, train

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneConfig:
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4, steps=50_000, freeze_bn=True))
    s2dkd: S2DKDConfig = field(default_factory=S2DKDConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)  # the monocular teacher
    teacher_cache: str = "teacher_cache"
    sparsify: str | None = None  # "lidar-like": KITTI-like labels from dense GT


def _teacher_cache(config: FinetuneConfig, base: Any, progress: bool) -> TeacherCache | None:
    if not config.s2dkd.enabled:
        return None
    d = config.depth
    estimator = create_depth_estimator(d.backend, model=d.model, precomputed_dir=d.precomputed_dir,
                                       precomputed_kind=d.precomputed_kind, device=d.device, fp16=d.fp16,
                                       batch_size=d.batch_size)
    cache = TeacherCache(config.teacher_cache, estimator.model_id)
    counts = fill_teacher_cache(base, cache, estimator, progress=progress)
    log.info("teacher cache %s: %d cached, %d computed", cache.dir, counts["cached"], counts["computed"])
    return cache


def cache_mono(config: FinetuneConfig, progress: bool = True) -> dict[str, Any]:
    """Fill the teacher cache for the fine-tuning datasets (safe to interrupt and rerun)."""
    base = build_dataset("+".join(config.train.datasets))
    d = config.depth
    estimator = create_depth_estimator(d.backend, model=d.model, precomputed_dir=d.precomputed_dir,
                                       precomputed_kind=d.precomputed_kind, device=d.device, fp16=d.fp16,
                                       batch_size=d.batch_size)
    cache = TeacherCache(config.teacher_cache, estimator.model_id)
    return {"cache": str(cache.dir), "model_id": estimator.model_id, **fill_teacher_cache(base, cache, estimator, progress)}


def run_finetune(config: FinetuneConfig, out: str | os.PathLike, *, resume: bool = False, device: str = "auto",
                 progress: bool = True, stop_after: int | None = None) -> dict[str, Any]:
    tc = config.train
    base = build_dataset("+".join(tc.datasets))
    cache = _teacher_cache(config, base, progress)
    max_disp = model_config(tc.model, **tc.model_overrides).max_disp
    dataset = DistillationDataset(base, cache, AugmentConfig(crop=tuple(tc.crop)), max_disp,
                                  sparsify=config.sparsify, align=config.align, seed=tc.seed)

    def loss_fn(output, batch, model_cfg):
        return s2dkd_loss(output, batch, model_cfg, config.s2dkd)

    extra = {k: v for k, v in to_dict(config).items() if k != "train"}
    return train(tc, Path(out), resume=resume, device=device, progress=progress, loss_fn=loss_fn, dataset=dataset,
                 stop_after=stop_after, extra_config=extra)
