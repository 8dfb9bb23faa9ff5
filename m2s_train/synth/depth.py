"""Monocular depth behind one interface.

Every backend returns *relative inverse depth* (larger = nearer, arbitrary scale and shift),
float32 HxW at the input image's resolution:

- :class:`DepthAnythingEstimator`: Depth Anything V2 through transformers, from a local
  directory or the Hugging Face cache only (never downloads), batched, CUDA + fp16 when present;
- :class:`PrecomputedDepthEstimator`: reads ``<stem>.npy`` / 16-bit ``<stem>.png`` files of depth
  or inverse depth that the user computed elsewhere;
- :class:`SegmentPlaneDepthPrior`: an offline stand-in for machines without weights: a random
  plane per segment of a colour over-segmentation, so depth discontinuities (and therefore
  occlusions) fall on the image's own colour edges, as in real scenes.
"""

from __future__ import annotations

import hashlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from calib.safe_files import load_npy
from m2s_train.errors import ConfigError, SynthesisError

log = logging.getLogger(__name__)


class DepthEstimator(ABC):
    """Relative inverse depth for a batch of RGB uint8 HxWx3 images."""

    #: identifies the model in dataset metadata and teacher caches
    model_id: str = "unknown"

    @abstractmethod
    def estimate(self, images: Sequence[np.ndarray], names: Sequence[str]) -> list[np.ndarray]:
        """One HxW float32 relative inverse-depth map per image (``names`` are file stems)."""

    def estimate_each(self, images: Sequence[np.ndarray], names: Sequence[str]) -> list[np.ndarray | SynthesisError]:
        """Like :meth:`estimate`, but an image the backend cannot handle (e.g. its precomputed map is
        missing) gives its :class:`SynthesisError` in its place instead of failing the whole batch."""
        try:
            return list(self.estimate(images, names))
        except SynthesisError as exc:
            if len(images) == 1:
                return [exc]
        return [self.estimate_each([image], [name])[0] for image, name in zip(images, names)]


def _torch_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class DepthAnythingEstimator(DepthEstimator):
    """Depth Anything (V1/V2) via ``transformers.DepthAnythingForDepthEstimation``.

    Args:
        model: local directory, or a Hugging Face id already in the local cache.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1`` ...
        fp16: half precision; ``None`` means on CUDA only.
        batch_size: images per forward pass (images of one size are batched together).
    """

    def __init__(self, model: str, device: str = "auto", fp16: bool | None = None, batch_size: int = 4) -> None:
        import torch
        from transformers import AutoImageProcessor, DepthAnythingForDepthEstimation

        self.device = _torch_device(device)
        self.fp16 = (self.device.startswith("cuda")) if fp16 is None else fp16
        self.batch_size = max(1, int(batch_size))
        self.model_id = str(model)
        try:
            self.processor = AutoImageProcessor.from_pretrained(model, local_files_only=True)
            self.model = DepthAnythingForDepthEstimation.from_pretrained(model, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise SynthesisError(
                f"cannot load Depth Anything model '{model}' from a local path or the Hugging Face cache "
                f"({str(exc).splitlines()[0]}). Download it on a machine with internet, e.g. "
                "'huggingface-cli download depth-anything/Depth-Anything-V2-Small-hf --local-dir models/da2-small', "
                "then pass --depth-model models/da2-small (or use --depth-backend segment-prior offline)"
            ) from None
        self.model.to(self.device, dtype=torch.float16 if self.fp16 else torch.float32).eval()

    def estimate(self, images: Sequence[np.ndarray], names: Sequence[str]) -> list[np.ndarray]:
        import torch
        import torch.nn.functional as F

        out: list[np.ndarray | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(image.shape[:2], []).append(i)
        dtype = torch.float16 if self.fp16 else torch.float32
        for (h, w), indices in by_size.items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                inputs = self.processor(images=[images[i] for i in chunk], return_tensors="pt")
                pixels = inputs["pixel_values"].to(self.device, dtype=dtype)
                with torch.inference_mode():
                    pred = self.model(pixel_values=pixels).predicted_depth  # B,h',w'
                pred = F.interpolate(pred[:, None].float(), size=(h, w), mode="bicubic", align_corners=False)
                for i, p in zip(chunk, pred[:, 0].cpu().numpy()):
                    out[i] = p.astype(np.float32)
        return [o for o in out if o is not None]


class PrecomputedDepthEstimator(DepthEstimator):
    """Reads precomputed maps ``<directory>/<stem>.npy`` (float) or ``<stem>.png`` (16-bit).

    Args:
        kind: ``inverse_depth`` (larger = nearer) or ``depth`` (converted with 1/z; z <= 0 is invalid).
    """

    KINDS = ("inverse_depth", "depth")

    def __init__(self, directory: str | Path, kind: str = "inverse_depth") -> None:
        if kind not in self.KINDS:
            raise ConfigError(f"precomputed depth kind must be one of {', '.join(self.KINDS)}, got '{kind}'")
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise SynthesisError(f"precomputed depth directory {self.directory} does not exist")
        self.kind = kind
        self.model_id = f"precomputed:{kind}:{self.directory.name}"

    def _load(self, name: str) -> np.ndarray:
        for ext in (".npy", ".png"):
            path = self.directory / f"{name}{ext}"
            if path.is_file():
                break
        else:
            raise SynthesisError(f"no precomputed depth {name}.npy or {name}.png in {self.directory}")
        if path.suffix == ".npy":
            array = load_npy(path, "precomputed depth map", SynthesisError)
        else:
            array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if array is None:
                raise SynthesisError(f"cannot decode {path}")
        array = np.asarray(array, dtype=np.float32)
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if array.ndim != 2:
            raise SynthesisError(f"{path}: depth must be HxW, got shape {array.shape}")
        return array

    def estimate(self, images: Sequence[np.ndarray], names: Sequence[str]) -> list[np.ndarray]:
        out = []
        for image, name in zip(images, names):
            m = self._load(name)
            if m.shape != image.shape[:2]:
                m = cv2.resize(m, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
            if self.kind == "depth":
                with np.errstate(divide="ignore", invalid="ignore"):
                    m = np.where(m > 0, 1.0 / m, np.nan).astype(np.float32)
            out.append(m)
        return out


class SegmentPlaneDepthPrior(DepthEstimator):
    """Procedural depth whose discontinuities follow the image's colour segments.

    The image is over-segmented (k-means on Lab colour at low resolution, split into connected
    regions, specks folded into their neighbours); each region gets a random slanted plane in inverse depth on top of a
    scene-wide ramp (lower rows nearer, like a ground plane). Deterministic for a given seed
    and image. Not a depth estimator: a prior that gives the stereo network realistic
    occlusion geometry when no monocular weights are available offline.
    """

    model_id = "segment-plane-prior-v1"

    def __init__(self, seed: int = 0, segments: int = 24, work_width: int = 160) -> None:
        self.seed = int(seed)
        self.segments = int(segments)
        self.work_width = int(work_width)

    def _labels(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        h, w = image.shape[:2]
        sw = min(self.work_width, w)
        sh = max(2, round(h * sw / w))
        small = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (3, 3), 0)
        lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB).astype(np.float32)
        # Colour only: segment borders are then colour edges; connected components split each
        # colour class into regions, so separate objects of one colour get their own planes.
        features = lab.reshape(-1, 3)
        k = max(2, min(self.segments, sw * sh // 16))
        cv2.setRNGSeed(int(rng.integers(0, 2**31 - 1)))
        criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
        _, clusters, _ = cv2.kmeans(features, k, None, criteria, 2, cv2.KMEANS_PP_CENTERS)
        clusters = clusters.reshape(sh, sw)
        labels = np.zeros((sh, sw), np.int32)
        next_label = 0
        for c in range(k):  # split clusters into connected regions (k iterations, vectorised inside)
            n, comp = cv2.connectedComponents((clusters == c).astype(np.uint8), connectivity=4)
            mask = comp > 0
            labels[mask] = comp[mask] - 1 + next_label
            next_label += n - 1
        # Fold specks (< 0.3 % of the image) into their nearest large region: planes per speck
        # would put depth edges inside textures instead of on object boundaries.
        sizes = np.bincount(labels.ravel(), minlength=next_label)
        small = sizes[labels] < max(4, 0.003 * sh * sw)
        if small.any() and not small.all():
            _, nearest = cv2.distanceTransformWithLabels(small.astype(np.uint8), cv2.DIST_L2, 3,
                                                         labelType=cv2.DIST_LABEL_PIXEL)
            label_of = np.zeros(int(nearest.max()) + 1, np.int32)
            label_of[nearest[~small]] = labels[~small]
            labels = label_of[nearest]
        return labels, next_label

    def estimate(self, images: Sequence[np.ndarray], names: Sequence[str]) -> list[np.ndarray]:
        out = []
        for image, name in zip(images, names):
            name_key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
            rng = np.random.default_rng([self.seed, name_key, image.shape[0], image.shape[1]])
            labels, n = self._labels(image, rng)
            sh, sw = labels.shape
            yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
            yn, xn = yy / max(sh - 1, 1), xx / max(sw - 1, 1)
            base = rng.uniform(0.1, 0.8, n).astype(np.float32)  # per-segment nearness
            gx = rng.normal(0, 0.15, n).astype(np.float32)
            gy = rng.normal(0, 0.15, n).astype(np.float32)
            ramp = 0.6 * yn  # lower rows nearer
            inv = ramp + base[labels] + gx[labels] * (xn - 0.5) + gy[labels] * (yn - 0.5)
            h, w = image.shape[:2]
            out.append(cv2.resize(inv.astype(np.float32), (w, h), interpolation=cv2.INTER_NEAREST))
        return out


BACKENDS = ("auto", "depth-anything", "precomputed", "segment-prior")


def create_depth_estimator(backend: str, *, model: str | None = None, precomputed_dir: str | None = None,
                           precomputed_kind: str = "inverse_depth", device: str = "auto",
                           fp16: bool | None = None, batch_size: int = 4, seed: int = 0) -> DepthEstimator:
    """The depth backend by name; ``auto`` uses Depth Anything when ``model`` is given, else the prior."""
    if backend not in BACKENDS:
        raise ConfigError(f"depth backend must be one of {', '.join(BACKENDS)}, got '{backend}'")
    if backend == "auto":
        backend = "depth-anything" if model else "precomputed" if precomputed_dir else "segment-prior"
        if backend == "segment-prior":
            log.warning("no Depth Anything weights given (--depth-model): using the offline segment-plane "
                        "depth prior; synthesized geometry is procedural, not monocular depth")
    if backend == "depth-anything":
        if not model:
            raise ConfigError("depth backend 'depth-anything' needs a model path or cached id (depth.model / --depth-model)")
        return DepthAnythingEstimator(model, device=device, fp16=fp16, batch_size=batch_size)
    if backend == "precomputed":
        if not precomputed_dir:
            raise ConfigError("depth backend 'precomputed' needs depth.precomputed_dir / --depth-dir")
        return PrecomputedDepthEstimator(precomputed_dir, precomputed_kind)
    return SegmentPlaneDepthPrior(seed=seed)
