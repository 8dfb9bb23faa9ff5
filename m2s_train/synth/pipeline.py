"""``m2s-train synth``: images -> monocular depth -> disparity -> warp -> EA inpaint -> dataset."""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from calib.errors import DataError
from calib.image_io import read_rgb
from m2s_train.config import check_fields, num, to_dict
from m2s_train.errors import ConfigError, DatasetError, SynthesisError
from m2s_train.synth.depth import DepthEstimator, create_depth_estimator
from m2s_train.synth.disparity import DisparityScaling, inverse_depth_to_disparity
from m2s_train.synth.inpaint import EAMaskConfig, StableDiffusionInpainter, ea_fill, ea_inpaint_mask
from m2s_train.synth.shards import FORMAT, ShardWriter, StereoSample, write_bytes_atomic
from m2s_train.synth.warp import forward_warp

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass(frozen=True)
class DepthConfig:
    backend: str = "auto"  # auto | depth-anything | precomputed | segment-prior
    model: str | None = None  # Depth Anything directory or cached HF id
    precomputed_dir: str | None = None
    precomputed_kind: str = "inverse_depth"  # inverse_depth | depth
    device: str = "auto"
    fp16: bool | None = None  # None: fp16 on CUDA only
    batch_size: int = num(4, ge=1)

    def __post_init__(self) -> None:
        check_fields(self)


def depth_estimator_from_config(config: DepthConfig, seed: int = 0) -> DepthEstimator:
    """The depth backend a :class:`DepthConfig` describes (synthesis and the S2DKD teacher share it)."""
    return create_depth_estimator(config.backend, model=config.model, precomputed_dir=config.precomputed_dir,
                                  precomputed_kind=config.precomputed_kind, device=config.device, fp16=config.fp16,
                                  batch_size=config.batch_size, seed=seed)


@dataclass(frozen=True)
class InpaintConfig:
    method: str = "telea"  # telea | ns | sd
    radius: int = num(3, ge=1, le=64)  # classical inpainting radius, px (cost grows with its square)
    ea: EAMaskConfig = field(default_factory=EAMaskConfig)
    sd_model: str | None = None  # Stable Diffusion inpainting weights (local), for method 'sd'
    sd_steps: int = num(20, ge=1)
    sd_tile: int = num(512, ge=64)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.method not in ("telea", "ns", "sd"):
            raise ValueError(f"inpaint.method must be telea, ns or sd, got '{self.method}'")
        if self.method == "sd" and not self.sd_model:
            raise ValueError("inpaint.method 'sd' needs inpaint.sd_model (a local diffusers directory)")


@dataclass(frozen=True)
class SynthConfig:
    seed: int = 0
    depth: DepthConfig = field(default_factory=DepthConfig)
    disparity: DisparityScaling = field(default_factory=DisparityScaling)
    max_gap: float = num(2.0, gt=0)  # warp: visible neighbours further apart leave a hole, px
    inpaint: InpaintConfig = field(default_factory=InpaintConfig)
    min_side: int = num(64, ge=16)  # smaller images are skipped
    max_side: int = num(1280, ge=16, le=16384)  # larger images are downscaled so the longer side fits

    def __post_init__(self) -> None:
        check_fields(self)
        if self.min_side < 16 or self.max_side < self.min_side:
            raise ValueError(f"need 16 <= min_side <= max_side, got {self.min_side}, {self.max_side}")


def list_images(spec: str) -> list[Path]:
    """Image files of a directory (recursive) or a glob, sorted; clear error when none."""
    path = Path(spec)
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    else:
        files = [Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file()]
    if not files:
        raise DataError(f"no images found at '{spec}' (a directory or a quoted glob like 'photos/*.jpg')")
    return sorted(files)


def _fit_size(image: np.ndarray, config: SynthConfig) -> np.ndarray:
    h, w = image.shape[:2]
    if min(h, w) < config.min_side:
        raise SynthesisError(f"image is {w}x{h}, smaller than min_side={config.min_side}")
    scale = config.max_side / max(h, w)
    if scale < 1:
        image = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    return image


def sanitize_inverse_depth(inv: np.ndarray, max_invalid_fraction: float = 0.2) -> np.ndarray:
    """Fill a few NaN/inf pixels from their nearest valid neighbour; too many is an error."""
    bad = ~np.isfinite(inv)
    if not bad.any():
        return inv
    fraction = float(bad.mean())
    if fraction > max_invalid_fraction:
        raise SynthesisError(f"depth map has {fraction:.0%} NaN/inf pixels (more than {max_invalid_fraction:.0%})")
    _, nearest = cv2.distanceTransformWithLabels(bad.astype(np.uint8), cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL)
    value_of = np.zeros(int(nearest.max()) + 1, np.float32)
    value_of[nearest[~bad]] = inv[~bad]
    return value_of[nearest]


def synthesize_pair(left: np.ndarray, inv_depth: np.ndarray, max_disparity: float, config: SynthConfig,
                    diffusion: StableDiffusionInpainter | None = None) -> dict[str, np.ndarray]:
    """One stereo pair from an image and its relative inverse depth (the classical pipeline)."""
    inv_depth = sanitize_inverse_depth(np.asarray(inv_depth, np.float32))
    if inv_depth.shape != left.shape[:2]:
        raise SynthesisError(f"depth map is {inv_depth.shape[1]}x{inv_depth.shape[0]}, image {left.shape[1]}x{left.shape[0]}")
    disparity = inverse_depth_to_disparity(inv_depth, max_disparity, config.disparity.flying_pixel_threshold)
    warped = forward_warp(left, disparity, config.max_gap)
    ea = ea_inpaint_mask(warped.hole, warped.right_disparity, config.inpaint.ea)
    method = "telea" if config.inpaint.method == "sd" else config.inpaint.method
    right = ea_fill(warped.right, ea, warped.right_disparity, method, config.inpaint.radius, diffusion)
    return {"left": left, "right": right, "disparity": disparity, "hole": warped.hole, "ea_mask": ea.mask,
            "visible": warped.visible}


def preview_image(sample: StereoSample) -> np.ndarray:
    """left | right | disparity (turbo) | masks (red: hole, yellow: EA additions, blue: occluded in left)."""
    d = sample.disparity
    scale = 255.0 / max(float(np.nanmax(d)), 1e-6)
    colour = cv2.cvtColor(cv2.applyColorMap(np.clip(d * scale, 0, 255).astype(np.uint8), cv2.COLORMAP_TURBO),
                          cv2.COLOR_BGR2RGB)
    masks = np.zeros_like(sample.left)
    masks[sample.ea_mask & ~sample.hole] = (255, 220, 0)
    masks[sample.hole] = (255, 0, 0)
    masks[~sample.visible] = np.maximum(masks[~sample.visible], (0, 0, 255))
    return np.hstack([sample.left, sample.right, colour, masks])


def sample_id_for(index: int, path: Path) -> str:
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in path.stem)[:48]
    return f"{index:06d}_{stem}"


def shard_from_env(shard: str | None) -> tuple[int, int]:
    """``--shard i/n``, else torchrun's RANK/WORLD_SIZE, else 0/1."""
    if shard:
        try:
            i, n = (int(x) for x in shard.split("/"))
        except ValueError:
            raise ConfigError(f"--shard must look like 0/4, got '{shard}'") from None
    else:
        i, n = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= i < n:
        raise ConfigError(f"shard index must be in [0, {n}), got {i}")
    return i, n


def _check_dataset_json(out: Path, config: SynthConfig, resume: bool) -> None:
    info = {"format": FORMAT, "config": to_dict(config)}
    path = out / "dataset.json"
    if path.is_file():
        existing = json.loads(path.read_text())
        if not resume and any((out / "samples").glob("*.npz")):
            raise DatasetError(f"{out} already holds a dataset; pass --resume to continue it or choose another --out")
        if existing.get("config") != info["config"]:
            raise DatasetError(f"{out} was synthesized with a different config; resume with the same config "
                               "or write to a new --out")
        return
    write_bytes_atomic(path, (json.dumps(info, indent=2, sort_keys=True) + "\n").encode())


def run_synthesis(images: list[Path], out: str | os.PathLike, config: SynthConfig, *, shard: tuple[int, int] = (0, 1),
                  resume: bool = False, previews: int = 0, estimator: DepthEstimator | None = None,
                  progress: bool = True, limit: int | None = None) -> dict[str, Any]:
    """Synthesize this shard's part of ``images`` into ``out``; returns a summary dict.

    Image ``k`` of the sorted list belongs to shard ``k % n``; its random draws depend only on
    the seed and the image bytes, so any sharding and any resume give the same samples.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index, count = shard
    if index == 0:
        _check_dataset_json(out, config, resume)
    writer = ShardWriter(out, index, count)
    mine = [(k, p) for k, p in enumerate(images) if k % count == index]
    if limit is not None:
        mine = mine[:limit]
    order = [sample_id_for(k, p) for k, p in mine]
    if resume:
        writer.reconcile(order)
    elif writer.listed_ids():
        raise DatasetError(f"{writer.manifest} exists; pass --resume to continue")
    todo = [(k, p) for k, p in mine if not writer.is_done(sample_id_for(k, p))]
    estimator = estimator or depth_estimator_from_config(config.depth, config.seed)
    diffusion = None
    if config.inpaint.method == "sd":
        diffusion = StableDiffusionInpainter(config.inpaint.sd_model, device=config.depth.device,
                                             steps=config.inpaint.sd_steps, tile=config.inpaint.sd_tile, seed=config.seed)
    inpainter = f"sd:{config.inpaint.sd_model}" if diffusion else f"ea-{config.inpaint.method}"
    skipped: list[dict[str, str]] = []
    written = 0
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), desc=f"synth shard {index}/{count}", unit="pair", disable=not progress)
    batch = max(1, config.depth.batch_size)
    for start in range(0, len(todo), batch):
        loaded = []
        for k, path in todo[start : start + batch]:
            try:
                raw = path.read_bytes()
                image = _fit_size(read_rgb(path), config)
                loaded.append((k, path, image, hashlib.sha256(raw).hexdigest()))
            except (DataError, SynthesisError, OSError) as exc:
                log.warning("skipping %s: %s", path, exc)
                skipped.append({"file": str(path), "reason": str(exc)})
                bar.update(1)
        if not loaded:
            continue
        depths = estimator.estimate([x[2] for x in loaded], [x[1].stem for x in loaded])
        for (k, path, image, sha), inv in zip(loaded, depths):
            sample_id = sample_id_for(k, path)
            rng = np.random.default_rng([config.seed, int(sha[:16], 16)])
            max_disp = config.disparity.sample(rng)
            try:
                pair = synthesize_pair(image, inv, max_disp, config, diffusion)
            except SynthesisError as exc:
                log.warning("skipping %s: %s", path, exc)
                skipped.append({"file": str(path), "reason": str(exc)})
                bar.update(1)
                continue
            h, w = image.shape[:2]
            meta = {
                "sample_id": sample_id, "source": str(path), "source_sha256": sha, "width": w, "height": h,
                "max_disparity": max_disp, "seed": config.seed, "depth_model": estimator.model_id,
                "inpainter": inpainter, "hole_fraction": float(pair["hole"].mean()),
                "ea_fraction": float(pair["ea_mask"].mean()),
            }
            sample = StereoSample(sample_id, meta=meta, **pair)
            writer.write(sample)
            if written < previews:
                preview_dir = out / "previews"
                preview_dir.mkdir(exist_ok=True)
                cv2.imwrite(str(preview_dir / f"{sample_id}.png"), cv2.cvtColor(preview_image(sample), cv2.COLOR_RGB2BGR))
            written += 1
            bar.update(1)
            bar.set_postfix(pairs_per_s=f"{written / (time.perf_counter() - t0):.2f}")
    bar.close()
    summary = {
        "out": str(out), "shard": f"{index}/{count}", "assigned": len(mine), "already_done": len(mine) - len(todo),
        "written": written, "skipped": skipped, "depth_model": estimator.model_id, "inpainter": inpainter,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_bytes_atomic(out / f"summary-{index:04d}-of-{count:04d}.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary
