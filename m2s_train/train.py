"""Training loop shared by pre-training and fine-tuning: DDP via torchrun, resumable bit for bit.

Launch: ``m2s-train pretrain --config ...`` on one device, or
``torchrun --nproc-per-node N -m m2s_train.cli pretrain ...`` for N processes (gloo on CPU,
NCCL on CUDA). Rank 0 alone logs and writes checkpoints.

Reproducibility: the sample order is a seeded permutation per epoch (``DistributedSampler``
with ``num_replicas = world size``), augmentations are seeded by (seed, epoch, index), and a
checkpoint holds weights, optimizer, scheduler, grad scaler, step and RNG state; resuming
skips the batches already consumed in the current epoch, so a run killed after step k and
resumed reaches the same weights at step n as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from calib.safe_files import write_json_atomic
from m2s_train.checkpoints import (
    find_resume_checkpoint,
    latest_checkpoint,
    check_run_dir,
    discard_old_run,
    save_checkpoint,
)
from m2s_train.config import check_fields, num, to_dict
from m2s_train.data.augment import AugmentConfig
from m2s_train.data.stereo_datasets import beyond_range_share, build_dataset
from m2s_train.errors import ConfigError
from m2s_train.losses import sequence_loss
from m2s_train.models import create_model, load_model, model_config
from m2s_train.models.published import derived_card, read_card
from m2s_train.models.registry import check_state_fits, checkpoint_model_config

log = logging.getLogger(__name__)
RANGE_WARNING_SHARE = 0.01  # more labelled pixels than this beyond max_disp: the training is told

CONFIDENCE_PREFIX = "confidence_head."  # parameters of the learned confidence head (m2s_train.models.igev)


@dataclass(frozen=True)
class TrainConfig:
    model: str | None = None  # registered model; None: the --init checkpoint's, else igev-rt
    model_overrides: dict[str, Any] = field(default_factory=dict)
    # checkpoint directory to start from: its weights, and its model config (padding, range, ... as its
    # weights were trained), with a learned confidence head added when it has none
    init: str | None = None
    datasets: list[str] = field(default_factory=lambda: ["synth:data/synth"])
    crop: list[int] = num(factory=lambda: [256, 512], ge=32)  # height, width
    # augmentation settings beyond the crop (m2s_train.data.augment.AugmentConfig fields: photometric
    # jitter, spatial scale, occlusion patches); {} keeps its defaults
    augment: dict[str, Any] = field(default_factory=dict)
    batch_size: int = num(4, ge=1)  # per process
    steps: int = num(200_000, ge=1)
    lr: float = num(2e-4, gt=0)
    weight_decay: float = num(1e-5, ge=0)
    pct_start: float = num(0.01, gt=0, lt=1)  # one-cycle warm-up fraction
    grad_clip: float = num(1.0, gt=0)
    gamma: float = num(0.9, gt=0, le=1)  # sequence-loss decay
    train_iters: int | None = num(None, ge=1)  # None: the model config's train_iters
    mixed_precision: bool = True  # on CUDA only (bfloat16 where supported, else float16 + scaler)
    freeze_bn: bool = False
    seed: int = num(0, ge=0)
    num_workers: int = num(2, ge=0)
    checkpoint_every: int = num(1000, ge=1)
    keep_checkpoints: int = num(3, ge=1)  # newest checkpoints kept; older ones are deleted
    log_every: int = num(50, ge=1)
    image_every: int = num(1000, ge=1)

    def __post_init__(self) -> None:
        check_fields(self)
        if len(self.crop) != 2:
            raise ValueError(f"crop must be [height, width], got {self.crop}")
        self.augmentation()  # names a wrong augment key or value now, not at the first batch

    def augmentation(self) -> AugmentConfig:
        """The augmentation of the training samples: ``crop`` and the ``augment`` settings."""
        if "crop" in self.augment:
            raise ValueError("augment.crop: the crop is the top-level 'crop' setting")
        known = {f.name for f in dataclasses.fields(AugmentConfig)}
        unknown = sorted(set(self.augment) - known)
        if unknown:
            raise ValueError(f"augment.{unknown[0]} is not an augmentation setting; known: {', '.join(sorted(known - {'crop'}))}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in self.augment.items()}
        try:
            return AugmentConfig(crop=tuple(self.crop), **values)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"augment: {exc}") from None


DEFAULT_MODEL = "igev-rt"


def training_model(config: TrainConfig) -> tuple[str, Any]:
    """The registered name and config of the model a run trains.

    Without ``init``: ``config.model`` (default igev-rt) with ``model_overrides``. With ``init``: the init
    checkpoint's model and saved config (what its weights were trained with, e.g. an imported model's
    centred padding), a learned confidence head switched on (it starts fresh and learns from the data),
    then ``model_overrides``; ``config.model`` naming another model is refused.
    """
    if config.init is None:
        name = config.model or DEFAULT_MODEL
        return name, model_config(name, **config.model_overrides)
    name, init_config = checkpoint_model_config(config.init)
    if config.model is not None and config.model != name:
        raise ConfigError(f"--init {config.init} holds a '{name}' model but --model (or the config's model) says "
                          f"'{config.model}': leave it out (the checkpoint decides) or start from a '{config.model}' "
                          "checkpoint")
    changes = {"confidence_head": True, **{k: v for k, v in config.model_overrides.items() if v is not None}}
    try:
        return name, dataclasses.replace(init_config, **changes)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model_overrides on the --init model '{name}': {exc}") from None


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on CUDA, gloo otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    dev = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local, dev)


class EpochBatches:
    """Deterministic batches: a seeded permutation per epoch, this rank's share, resumable mid-epoch."""

    def __init__(self, dataset: Any, config: TrainConfig, info: DistInfo) -> None:
        self.dataset = dataset
        self.sampler = DistributedSampler(dataset, num_replicas=info.world, rank=info.rank, shuffle=True,
                                          seed=config.seed, drop_last=True)
        self.batch = config.batch_size
        self.per_epoch = len(self.sampler) // self.batch
        if self.per_epoch < 1:
            raise ConfigError(f"dataset has {len(dataset)} samples: fewer than batch_size x processes "
                              f"({self.batch} x {info.world}); lower batch_size or add data")
        self.workers = config.num_workers

    def _set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        for ds in getattr(self.dataset, "datasets", [self.dataset]):
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)

    def iterate(self, start_step: int) -> Iterator[dict[str, Any]]:
        epoch, offset = divmod(start_step, self.per_epoch)
        while True:
            self._set_epoch(epoch)
            indices = list(self.sampler)[offset * self.batch : self.per_epoch * self.batch]
            batches = [indices[i : i + self.batch] for i in range(0, len(indices), self.batch)]
            loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.workers,
                                persistent_workers=False, pin_memory=False)
            yield from loader
            epoch, offset = epoch + 1, 0


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def rank_divergence(model: torch.nn.Module) -> float:
    """Largest |w - w_rank0| over all parameters and ranks (0.0 when DDP kept the replicas equal)."""
    worst = torch.zeros((), dtype=torch.float64)
    for p in model.parameters():
        ref = p.detach().clone()
        dist.broadcast(ref, src=0)
        worst = torch.maximum(worst, (p.detach() - ref).abs().max().double().cpu())
    worst = worst.to(next(model.parameters()).device)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)


def train(config: TrainConfig, out: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
          device: str = "auto", progress: bool = True,
          loss_fn: Callable[..., tuple[torch.Tensor, dict[str, float]]] | None = None,
          dataset: Any | None = None, stop_after: int | None = None,
          extra_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume) training; returns a summary. ``stop_after`` ends the run early (tests, kill simulation).

    ``out`` holding a run is refused unless ``resume`` (continue from its newest intact
    checkpoint, see :mod:`m2s_train.checkpoints`) or ``overwrite`` (delete the old run's own files once
    the new run's init and data have loaded).
    ``loss_fn(output, batch, model_config)`` replaces the sequence loss (fine-tuning plugs S2DKD
    here); ``extra_config`` (its settings) is saved with checkpoints and checked on resume too.
    """
    out = Path(out)
    info = setup_distributed(device)
    check_run_dir(out, resume=resume, overwrite=overwrite, init=config.init)  # deletes nothing
    name, model_config_ = training_model(config)
    config = dataclasses.replace(config, model=name)  # what train.json records and a resume compares
    torch.manual_seed(config.seed)  # same initial weights on every rank
    model = create_model(name, model_config_)
    card = None
    if config.init:
        source = load_model(config.init).state_dict()
        # a checkpoint without a confidence head (older, or imported) starts a fresh head (it learns from the data)
        check_state_fits(model, source, config.init, may_lack=(CONFIDENCE_PREFIX,))
        model.load_state_dict(source, strict=False)
        card = derived_card(read_card(config.init), config.init, config.datasets, loss_fn is not None)
    model.to(info.device)
    model_cfg = model.config

    if dataset is None:
        dataset = build_dataset("+".join(config.datasets), config.augmentation(), seed=config.seed)
    batches = EpochBatches(dataset, config, info)
    if overwrite:  # the old run goes only now that the new one's weights and data have loaded
        discard_old_run(out, main=info.main)
    out_of_range = beyond_range_share(dataset, model_cfg.max_disp) if info.main else None
    if out_of_range and out_of_range["share"] > RANGE_WARNING_SHARE:
        log.warning("%.1f %% of the labelled pixels (%d sampled pairs) are at or beyond the model's maximum disparity "
                    "%g px and are left out of the loss: the model never learns those near surfaces. Choose a model "
                    "with a larger max_disp, synthesize at a smaller size (--max-side), or a narrower --depth-range",
                    100 * out_of_range["share"], out_of_range["pairs"], model_cfg.max_disp)

    clip_groups = [[p for n, p in model.named_parameters() if n.startswith(CONFIDENCE_PREFIX) == head]
                   for head in (False, True)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, eps=1e-8)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=config.steps + 100,
                                                    pct_start=config.pct_start, cycle_momentum=False,
                                                    anneal_strategy="linear")
    amp = config.mixed_precision and info.device.type == "cuda"
    amp_dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)

    full_config = {**to_dict(config), **({"extra": extra_config} if extra_config else {})}
    step = 0
    checkpoint = find_resume_checkpoint(out, main=info.main) if resume else None
    if resume and checkpoint is None:
        log.warning("--resume: no checkpoint in %s, starting from step 0", out)
    if checkpoint is not None:
        # a setting added since the checkpoint was saved is compared at its default (e.g. augment: {})
        saved = {**to_dict(TrainConfig()), **checkpoint.config}
        if saved != full_config:
            changed = sorted(k for k in set(saved) | set(full_config) if saved.get(k) != full_config.get(k))
            raise ConfigError(f"{checkpoint.path} was trained with another config (differs in: {', '.join(changed)}); "
                              "resume with the same config or start a new --out")
        model.load_state_dict(checkpoint.model.state_dict())
        state = checkpoint.state
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["cpu"])
        if "cuda" in state["rng"] and info.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], info.device)
        step = int(state["step"])
        log.info("resumed from %s at step %d", checkpoint.path, step)

    if info.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
    model.train()
    if config.freeze_bn:
        _unwrap(model).freeze_bn()

    writer = None
    if info.main:
        out.mkdir(parents=True, exist_ok=True)
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tensorboard"), purge_step=step)
        except ImportError:
            log.warning("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")

    iters = config.train_iters or model_cfg.train_iters
    end = config.steps if stop_after is None else min(config.steps, stop_after)
    bar = tqdm(total=config.steps, initial=step, desc="train", unit="step", disable=not (progress and info.main),
               dynamic_ncols=True)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    stream = batches.iterate(step)
    while step < end:
        batch = next(stream)
        left = batch["left"].to(info.device, non_blocking=True)
        right = batch["right"].to(info.device, non_blocking=True)
        gt = batch["disparity"].to(info.device)
        valid = batch["valid"].to(info.device)
        with torch.autocast(info.device.type, dtype=amp_dtype, enabled=amp):
            output = model(left, right, iters=iters)
        output = type(output)(*(o.float() if torch.is_tensor(o) else [t.float() for t in o] for o in output))
        if loss_fn is None:
            loss, stats = sequence_loss(output, gt, valid, model_cfg.max_disp, config.gamma)
        else:
            loss, stats = loss_fn(output, batch, model_cfg)
        if not math.isfinite(stats["loss"]):
            raise ConfigError(f"loss became {stats['loss']} at step {step + 1}; lower --lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        for group in clip_groups:  # the confidence head apart: its gradients never rescale the disparity path's
            torch.nn.utils.clip_grad_norm_(group, config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        step += 1
        history.append({"step": step, **stats})
        if info.main:
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.3f}", epe=f"{stats['epe']:.2f}")
            if writer is not None and (step % config.log_every == 0 or step == end):
                for key, value in stats.items():
                    writer.add_scalar(f"train/{key}", value, step)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
            if writer is not None and step % config.image_every == 0:
                disp = output.disparity[0].detach().clamp(min=0)
                writer.add_image("train/disparity", disp / disp.max().clamp(min=1e-6), step)
            if step % config.checkpoint_every == 0 or step == config.steps:
                save_checkpoint(out, step, _unwrap(model), optimizer, scheduler, scaler, full_config,
                                _rng_state(info.device), config.keep_checkpoints, card=card)
    bar.close()
    if writer is not None:
        writer.close()
    divergence = rank_divergence(_unwrap(model)) if info.world > 1 else 0.0
    seconds = time.perf_counter() - t0
    final = latest_checkpoint(out) if info.main else None
    summary = {"steps": step, "seconds": round(seconds, 2), "world_size": info.world, "device": str(info.device),
               "max_weight_difference_across_ranks": divergence,
               "first_loss": history[0]["loss"] if history else None, "last_loss": history[-1]["loss"] if history else None,
               "checkpoint": str(final) if final else None,
               **({"labels_beyond_max_disp": out_of_range} if out_of_range else {})}
    if info.main:
        write_json_atomic(out / "train_summary.json", {**summary, "config": full_config})
    return summary

