"""``m2s-train synth``: images -> monocular depth -> disparity -> warp -> EA inpaint -> dataset."""

from __future__ import annotations

import glob
import hashlib
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
from calib.safe_files import (
    dumps_json,
    read_json,
    write_bytes_if_absent,
    write_json_atomic,
)
from m2s_train.config import check_fields, num, to_dict
from m2s_train.errors import ConfigError, DatasetError, SynthesisError
from m2s_train.synth.depth import DepthEstimator, create_depth_estimator
from m2s_train.synth.disparity import (
    CameraRange,
    DisparityScaling,
    inverse_depth_to_disparity,
)
from m2s_train.synth.inpaint import (
    EAMaskConfig,
    StableDiffusionInpainter,
    classical_fill,
    ea_fill,
    ea_inpaint_mask,
)
from m2s_train.synth.shards import FORMAT, ShardWriter, StereoSample, read_sample_meta
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
    edge_aware: bool = True  # False: the plain hole mask filled as it is (the ablation of the paper's EA step)
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
    camera: CameraRange = field(default_factory=CameraRange)  # set: camera-matched disparities instead of the draw
    max_gap: float = num(2.0, gt=0)  # warp: visible neighbours further apart leave a hole, px
    inpaint: InpaintConfig = field(default_factory=InpaintConfig)
    min_side: int = num(64, ge=16)  # smaller images are skipped
    max_side: int = num(1280, ge=16, le=16384)  # larger images are downscaled so the longer side fits

    def __post_init__(self) -> None:
        check_fields(self)
        if self.min_side < 16 or self.max_side < self.min_side:
            raise ValueError(f"need 16 <= min_side <= max_side, got {self.min_side}, {self.max_side}")


def image_root(spec: str) -> Path:
    """The folder ``--images`` names: the directory itself, or a glob's part before its first wildcard.

    Samples are identified by their image's path relative to it, so ``photos/``, ``./photos/*.jpg``
    and an absolute spelling of the same folder give the same dataset.
    """
    path = Path(spec)
    if path.is_dir():
        return _absolute(path)
    parts = []
    for part in path.parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    base = Path(*parts) if parts else Path(".")
    if base == path:  # a single file
        base = path.parent
    return _absolute(base)


def _absolute(path: str | os.PathLike) -> Path:
    """An absolute, normalised path that keeps symbolic links as they are: a folder of links to photos
    elsewhere is still that folder (resolving them would put every image outside its root)."""
    return Path(os.path.abspath(path))


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


def source_name(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as a POSIX string (the identity of a source image)."""
    try:
        return _absolute(path).relative_to(_absolute(root)).as_posix()
    except ValueError:
        raise ConfigError(f"{path} is not inside the image root {root}") from None


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
                    diffusion: StableDiffusionInpainter | None = None, min_disparity: float = 0.0) -> dict[str, np.ndarray]:
    """One stereo pair from an image and its relative inverse depth (the classical pipeline); the
    inverse depth is mapped onto ``[min_disparity, max_disparity]`` px."""
    inv_depth = sanitize_inverse_depth(np.asarray(inv_depth, np.float32))
    if inv_depth.shape != left.shape[:2]:
        raise SynthesisError(f"depth map is {inv_depth.shape[1]}x{inv_depth.shape[0]}, image {left.shape[1]}x{left.shape[0]}")
    disparity = inverse_depth_to_disparity(inv_depth, max_disparity, config.disparity.flying_pixel_threshold,
                                           min_disparity)
    warped = forward_warp(left, disparity, config.max_gap)
    method = "telea" if config.inpaint.method == "sd" else config.inpaint.method
    if config.inpaint.edge_aware:
        ea = ea_inpaint_mask(warped.hole, warped.right_disparity, config.inpaint.ea)
        right = ea_fill(warped.right, ea, warped.right_disparity, method, config.inpaint.radius, diffusion)
        mask = ea.mask
    else:  # naive: the holes alone, filled from whatever surrounds them (the foreground halo included)
        mask = warped.hole
        right = (diffusion(warped.right, mask) if diffusion is not None
                 else classical_fill(warped.right, mask, method, config.inpaint.radius))
    return {"left": left, "right": right, "disparity": disparity, "hole": warped.hole, "ea_mask": mask,
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


PREVIEW_MASKS = (("hole (filled by inpainting)", (255, 0, 0)), ("edge-aware additions", (255, 220, 0)),
                 ("occluded in the left view", (0, 0, 255)))


def preview_figure(path: Path, sample: StereoSample) -> Path:
    """The preview PNG of a sample: left, synthesized right, its exact disparity (px) and the masks, labelled."""
    from calib.figures import Panel, disparity_panel, image_panel, panel_figure

    masks = preview_image(sample)[:, 3 * sample.left.shape[1]:]
    meta = sample.meta if isinstance(getattr(sample, "meta", None), dict) else {}
    note = f", max disparity drawn {meta['max_disparity']:.0f} px" if "max_disparity" in meta else ""
    return panel_figure(path, f"synthesized pair {sample.sample_id}{note}",
                        [image_panel(sample.left, "left (the photo)"), image_panel(sample.right, "right (synthesized)"),
                         disparity_panel(sample.disparity, "disparity (exact, by construction)"),
                         Panel(masks, "masks", "mask", legend=PREVIEW_MASKS)], columns=2)


def sample_id_for(source: str) -> str:
    """A stable id from the source image's relative path: readable stem + a hash of the whole path,
    so adding or removing other images never renames a sample."""
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in source.rsplit(".", 1)[0])[-40:]
    return f"{stem}_{hashlib.sha1(source.encode()).hexdigest()[:8]}"


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


def _check_dataset_json(out: Path, config: SynthConfig) -> None:
    """Create ``dataset.json`` or check that it describes this config (every shard does this)."""
    info = {"format": FORMAT, "config": to_dict(config)}
    path = out / "dataset.json"
    write_bytes_if_absent(path, (dumps_json(info, indent=2, sort_keys=True) + "\n").encode())
    existing = read_json(path, "dataset description", DatasetError)
    if not isinstance(existing, dict) or existing.get("format") != FORMAT:
        found = existing.get("format") if isinstance(existing, dict) else None
        raise DatasetError(f"{out} holds a dataset of format {found!r}, not {FORMAT!r}; write to a new --out")
    # options added since the dataset was made read as their defaults, which reproduce what came before
    saved = _with_defaults(existing.get("config") or {}, to_dict(SynthConfig()))
    if saved != info["config"]:
        changed = _differences(saved, info["config"])
        raise DatasetError(f"{out} was synthesized with a different config (differs in: {', '.join(changed)}); "
                           "use the same config or write to a new --out")


def _with_defaults(saved: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``saved`` with the keys it lacks taken from ``defaults`` (recursively)."""
    out = dict(saved)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = _with_defaults(out[key], value)
    return out


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}")
    return out


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_synthesis(images: list[Path], out: str | os.PathLike, config: SynthConfig, *, shard: tuple[int, int] = (0, 1),
                  resume: bool = False, previews: int = 0, estimator: DepthEstimator | None = None,
                  progress: bool = True, limit: int | None = None, root: str | os.PathLike | None = None
                  ) -> dict[str, Any]:
    """Synthesize this shard's part of ``images`` into ``out``; returns a summary dict.

    Images are identified by their path relative to ``root`` (the ``--images`` folder, see
    :func:`image_root`; default: the folder that holds them all). Image ``k`` of the sorted list
    belongs to shard ``k % n``; its random draws depend only on the seed and the image bytes, so
    any sharding and any resume give the same samples. A resume also sets aside (into
    ``orphans/``) the samples of images that are gone or whose content changed, and redoes the
    latter.
    """
    if limit is not None and limit < 0:
        raise ConfigError(f"--limit must be >= 0, got {limit}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index, count = shard
    _check_dataset_json(out, config)
    writer = ShardWriter(out, index, count)
    root = _absolute(root) if root is not None else Path(os.path.commonpath([_absolute(p).parent for p in images]))
    sources = [(source_name(p, root), p) for p in images]
    ids = [sample_id_for(name) for name, _ in sources]
    if len(set(ids)) != len(ids):
        raise DataError(f"two images under {root} map to one sample id; rename one of them")
    mine = [(sid, name, p) for k, (sid, (name, p)) in enumerate(zip(ids, sources)) if k % count == index]
    if limit is not None:
        mine = mine[:limit]
    writer.remove_stale_temporaries(sid for sid, _, _ in mine)
    if resume:
        expected = set(ids)
        gone = [p.stem for p in writer.samples_dir.glob("*.npz") if p.stem not in expected]
        writer.set_aside(gone, "their source image is no longer in the image list")
        changed = [sid for sid, _, path in mine if writer.is_done(sid)
                   and read_sample_meta(writer.sample_path(sid)).get("source_sha256") != _file_sha256(path)]
        writer.set_aside(changed, "their source image changed since they were made; making them again")
        writer.reconcile([sid for sid, _, _ in mine])
    elif writer.listed_ids():
        raise DatasetError(f"{out} already holds this shard's samples ({writer.manifest.name}); pass --resume to "
                           "continue it or choose another --out")
    todo = [(sid, name, p) for sid, name, p in mine if not writer.is_done(sid)]
    estimator = estimator or depth_estimator_from_config(config.depth, config.seed)
    diffusion = None
    if config.inpaint.method == "sd":
        diffusion = StableDiffusionInpainter(config.inpaint.sd_model, device=config.depth.device,
                                             steps=config.inpaint.sd_steps, tile=config.inpaint.sd_tile, seed=config.seed)
    if config.inpaint.edge_aware:  # the names samples have always carried: sd:<model> / ea-<method>
        inpainter = f"sd:{config.inpaint.sd_model}" if diffusion else f"ea-{config.inpaint.method}"
    else:
        inpainter = f"naive-sd:{config.inpaint.sd_model}" if diffusion else f"naive-{config.inpaint.method}"
    skipped: list[dict[str, str]] = []
    written = 0
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), desc=f"synth shard {index}/{count}", unit="pair", disable=not progress)

    def skip(path: Path, exc: Exception) -> None:
        log.warning("skipping %s: %s", path, exc)
        skipped.append({"file": str(path), "reason": str(exc)})
        bar.update(1)

    batch = max(1, config.depth.batch_size)
    for start in range(0, len(todo), batch):
        loaded = []
        for sid, name, path in todo[start : start + batch]:
            try:
                raw = path.read_bytes()
                image = _fit_size(read_rgb(path), config)
                loaded.append((sid, name, path, image, hashlib.sha256(raw).hexdigest()))
            except (DataError, SynthesisError, OSError) as exc:
                skip(path, exc)
        if not loaded:
            continue
        depths = estimator.estimate_each([x[3] for x in loaded], [x[2].stem for x in loaded])
        for (sample_id, name, path, image, sha), inv in zip(loaded, depths):
            rng = np.random.default_rng([config.seed, int(sha[:16], 16)])
            max_disp = config.disparity.sample(rng)
            min_disp = 0.0
            if config.camera.enabled:  # the robot's camera and depth range instead of the draw
                min_disp, max_disp = config.camera.disparity_range(image.shape[1])
            try:
                if isinstance(inv, Exception):
                    raise inv
                pair = synthesize_pair(image, inv, max_disp, config, diffusion, min_disp)
            except SynthesisError as exc:
                skip(path, exc)
                continue
            h, w = image.shape[:2]
            meta = {
                "sample_id": sample_id, "source": name, "source_sha256": sha, "width": w, "height": h,
                "max_disparity": max_disp, "min_disparity": min_disp, "seed": config.seed,
                "depth_model": estimator.model_id,
                "inpainter": inpainter, "hole_fraction": float(pair["hole"].mean()),
                "ea_fraction": float(pair["ea_mask"].mean()),
            }
            if config.camera.enabled:
                meta["camera_range"] = {"focal_px_at_sample": config.camera.focal_px * w / config.camera.width,
                                        "baseline_m": config.camera.baseline_m, "min_depth_m": config.camera.min_depth,
                                        "max_depth_m": config.camera.max_depth, "disparity_px": [min_disp, max_disp]}
            sample = StereoSample(sample_id, meta=meta, **pair)
            writer.write(sample)
            if written < previews:
                preview_dir = out / "previews"
                preview_dir.mkdir(exist_ok=True)
                preview_figure(preview_dir / f"{sample_id}.png", sample)
            written += 1
            bar.update(1)
            bar.set_postfix(pairs_per_s=f"{written / (time.perf_counter() - t0):.2f}")
    bar.close()
    summary = {
        "out": str(out), "shard": f"{index}/{count}", "assigned": len(mine), "already_done": len(mine) - len(todo),
        "written": written, "skipped": skipped, "depth_model": estimator.model_id, "inpainter": inpainter,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_json_atomic(out / f"summary-{index:04d}-of-{count:04d}.json", summary)
    return summary
