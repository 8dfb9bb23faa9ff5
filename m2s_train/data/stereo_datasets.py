"""Stereo datasets with ground truth: SceneFlow, KITTI 2012/2015, Middlebury, ETH3D, generic folders,
the synthesized format, and the real Aloe pair of opencv-doc.

Every dataset yields the same dict (see :func:`make_item`) and checks its layout when built,
naming what is missing. ``build_dataset("kitti2015:/data/kitti")`` makes one from a spec;
``a+b`` concatenates.
"""

from __future__ import annotations

import bisect
import importlib.util
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from calib.disparity_io import read_disparity, read_kitti_disparity, read_pfm
from calib.image_io import read_rgb
from m2s_train.data.augment import AugmentConfig, color_jitter, eraser, random_crop, random_scale
from m2s_train.errors import DatasetError

log = logging.getLogger(__name__)

__all__ = ["MIN_LABELS", "beyond_range_share", "build_dataset", "check_labels", "label_census", "make_item", "read_disparity",
           "read_kitti_disparity", "read_pfm"]


def make_item(left: np.ndarray, right: np.ndarray, disparity: np.ndarray, noc: np.ndarray | None, sample_id: str,
              augment: AugmentConfig | None, rng: np.random.Generator,
              extras: dict[str, np.ndarray] | None = None) -> dict[str, object]:
    """The dict every dataset returns.

    ``left``/``right``: 3xHxW float32 in [0, 1]; ``disparity``: 1xHxW float32 px, 0 where unknown;
    ``valid``: 1xHxW bool (finite GT > 0; NaN/inf are masked, never propagated); ``noc``: 1xHxW bool
    (non-occluded, = valid where unknown); ``sample_id``: str. ``extras`` (HxW float maps aligned
    with the left image, e.g. a teacher) are cropped with the same window and returned as 1xHxW.
    """
    if left.shape != right.shape:
        raise DatasetError(f"{sample_id}: left {left.shape[1]}x{left.shape[0]} and right "
                           f"{right.shape[1]}x{right.shape[0]} differ in size")
    if disparity.shape != left.shape[:2]:
        raise DatasetError(f"{sample_id}: disparity {disparity.shape[::-1]} does not match the images {left.shape[1::-1]}")
    noc = np.ones(disparity.shape, bool) if noc is None else noc
    names = list(extras or {})
    maps = [extras[k] for k in names] if extras else []
    for name, m in zip(names, maps):
        if m.shape != disparity.shape:
            raise DatasetError(f"{sample_id}: {name} map {m.shape[::-1]} does not match the images {left.shape[1::-1]}")
    if augment is not None:
        if augment.spatial:
            if maps:
                raise DatasetError(f"{sample_id}: the spatial scale augmentation is not defined for datasets with "
                                   f"extra maps ({', '.join(names)}); set augment.scale_prob to 0")
            left, right, disparity, noc = random_scale(rng, augment, left, right, disparity, noc)  # and crops
        elif augment.crop is not None:
            left, right, disparity, noc, *maps = random_crop(rng, augment.crop, left, right, disparity, noc, *maps)
        left, right = color_jitter(rng, left, right, augment)
        right = eraser(rng, augment, right)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(disparity) & (disparity > 0)
    disp = np.where(valid, disparity, 0).astype(np.float32)
    return {
        "left": torch.from_numpy(np.ascontiguousarray(left)).permute(2, 0, 1).float().div_(255.0),
        "right": torch.from_numpy(np.ascontiguousarray(right)).permute(2, 0, 1).float().div_(255.0),
        "disparity": torch.from_numpy(disp)[None],
        "valid": torch.from_numpy(valid)[None],
        "noc": torch.from_numpy(np.ascontiguousarray(noc) & valid)[None],
        "sample_id": sample_id,
        **{name: torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None] for name, m in zip(names, maps)},
    }


@dataclass(frozen=True)
class PairFiles:
    left: Path
    right: Path
    disparity: Path | None
    noc: Path | None = None
    sample_id: str = ""


class StereoPairs(Dataset):
    """Pairs of image files with disparity files; ``scale`` < 1 downsamples (Middlebury half/quarter)."""

    def __init__(self, pairs: Sequence[PairFiles], name: str, augment: AugmentConfig | None = None, seed: int = 0,
                 scale: float = 1.0) -> None:
        if not pairs:
            raise DatasetError(f"{name}: no stereo pairs found")
        self.pairs = list(pairs)
        self.name = name
        self.augment = augment
        self.seed = seed
        self.scale = scale
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.pairs)

    def read_gt(self, pair: PairFiles) -> np.ndarray:
        return read_disparity(pair.disparity)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        p = self.pairs[index]
        left, right = read_rgb(p.left), read_rgb(p.right)
        disp = self.read_gt(p) if p.disparity else np.full(left.shape[:2], np.nan, np.float32)
        noc = None
        if p.noc is not None:
            mask = cv2.imread(str(p.noc), cv2.IMREAD_GRAYSCALE)
            if mask is None:
                raise DatasetError(f"cannot read non-occlusion mask {p.noc}")
            noc = mask > 127
        if self.scale != 1.0:
            h, w = left.shape[:2]
            size = (round(w * self.scale), round(h * self.scale))
            left = cv2.resize(left, size, interpolation=cv2.INTER_AREA)
            right = cv2.resize(right, size, interpolation=cv2.INTER_AREA)
            disp = cv2.resize(disp, size, interpolation=cv2.INTER_NEAREST) * np.float32(size[0] / w)
            noc = None if noc is None else cv2.resize(noc.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
        return left, right, disp, noc

    def __getitem__(self, index: int) -> dict[str, object]:
        left, right, disp, noc = self.load(index)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return make_item(left, right, disp, noc, self.pairs[index].sample_id or f"{self.name}/{index}", self.augment, rng)


def _require(root: Path, *subdirs: str, hint: str) -> None:
    missing = [s for s in subdirs if not (root / s).exists()]
    if missing:
        raise DatasetError(f"{root}: missing {', '.join(missing)} ({hint})")


def sceneflow_pairs(root: Path, passes: str = "frames_finalpass") -> list[PairFiles]:
    """FlyingThings3D / Driving / Monkaa: <root>/<pass>/.../left/XXXX.png + <root>/disparity/.../left/XXXX.pfm."""
    _require(root, passes, "disparity", hint="expected the SceneFlow layout <root>/frames_finalpass and <root>/disparity")
    pairs = []
    for left in sorted((root / passes).rglob("left/*.png")):
        rel = left.relative_to(root / passes)
        disp = (root / "disparity" / rel).with_suffix(".pfm")
        right = left.parent.parent / "right" / left.name
        if right.is_file() and disp.is_file():
            pairs.append(PairFiles(left, right, disp, sample_id=str(rel)))
    return pairs


def kitti_pairs(root: Path, year: int) -> list[PairFiles]:
    """KITTI training split with sparse GT (occluded-included maps; non-occluded used as the noc mask)."""
    sub = {2015: ("image_2", "image_3", "disp_occ_0", "disp_noc_0"), 2012: ("colored_0", "colored_1", "disp_occ", "disp_noc")}[year]
    base = root / "training" if (root / "training").is_dir() else root
    _require(base, sub[0], sub[1], sub[2], hint=f"expected KITTI {year} training/{'/'.join(sub[:3])}")
    pairs = []
    for disp in sorted((base / sub[2]).glob("*_10.png")):
        left, right = base / sub[0] / disp.name, base / sub[1] / disp.name
        if not (left.is_file() and right.is_file()):
            raise DatasetError(f"KITTI {year}: {disp.name} has GT but no image pair in {sub[0]}/{sub[1]}")
        pairs.append(PairFiles(left, right, disp, sample_id=f"kitti{year}/{disp.stem}"))
    return pairs


def two_view_pairs(root: Path, name: str) -> list[PairFiles]:
    """Middlebury (2014/2021/MiddEval3) and ETH3D two-view: scene folders with im0/im1 and disp0[GT].pfm."""
    pairs = []
    for im0 in sorted(root.rglob("im0.png")):
        scene = im0.parent
        candidates = [scene / "disp0GT.pfm", scene / "disp0.pfm",
                      root.parent / f"{root.name}_gt" / scene.name / "disp0GT.pfm"]
        disp = next((c for c in candidates if c.is_file()), None)
        if disp is None or not (scene / "im1.png").is_file():
            continue
        noc = disp.parent / "mask0nocc.png"
        pairs.append(PairFiles(im0, scene / "im1.png", disp, noc if noc.is_file() else None, f"{name}/{scene.name}"))
    if not pairs:
        raise DatasetError(f"{root}: no scene folders with im0.png, im1.png and disp0GT.pfm/disp0.pfm ({name} layout)")
    return pairs


def folder_pairs(root: Path) -> list[PairFiles]:
    """Generic: <root>/left/NAME.*, <root>/right/NAME.*, <root>/disparity/NAME.(pfm|png|npy). Without a
    disparity/ folder the pairs have no GT (label-free evaluation; training refuses them)."""
    _require(root, "left", "right", hint="expected left/, right/ (and disparity/) folders with matching names")
    has_gt = (root / "disparity").is_dir()
    pairs = []
    for left in sorted(p for p in (root / "left").iterdir() if p.is_file()):
        rights = sorted((root / "right").glob(left.stem + ".*"))
        disps = sorted((root / "disparity").glob(left.stem + ".*")) if has_gt else [None]
        if not rights or not disps:
            raise DatasetError(f"{root}: {left.name} lacks a right image or a disparity with the same name")
        pairs.append(PairFiles(left, rights[0], disps[0], sample_id=f"folder/{left.stem}"))
    return pairs


def aloe_pairs() -> list[PairFiles]:
    """Middlebury Aloe from Debian opencv-doc (GT disparity PNG in px, 0 = unknown)."""
    from calib.example_data import require_opencv_examples

    data = require_opencv_examples()
    return [PairFiles(data / "aloeL.jpg", data / "aloeR.jpg", data / "aloeGT.png", sample_id="aloe")]


class AloeDataset(StereoPairs):
    """The real Aloe pair; its GT is an 8-bit PNG in pixels (not KITTI's /256 encoding)."""

    def __init__(self, augment: AugmentConfig | None = None, seed: int = 0, scale: float = 1.0) -> None:
        super().__init__(aloe_pairs(), "aloe", augment, seed, scale)

    def read_gt(self, pair: PairFiles) -> np.ndarray:
        gt = cv2.imread(str(pair.disparity), cv2.IMREAD_UNCHANGED)
        if gt is None:
            raise DatasetError(f"cannot read {pair.disparity}")
        return np.where(gt > 0, gt.astype(np.float32), np.nan).astype(np.float32)


def motorcycle_pairs() -> list[PairFiles]:
    """Middlebury 2014 Motorcycle as scikit-image ships it: 741x500, 1/4 of the full size, GT disparity up to
    ~60 px in ``motorcycle_disp.npz`` (NaN = unknown). A second real pair, used to validate choices so that
    Aloe stays a test pair."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("the Motorcycle pair comes with scikit-image: pip install scikit-image "
                           "(it is in the 'training' extra)")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    files = [data / n for n in ("motorcycle_left.png", "motorcycle_right.png", "motorcycle_disp.npz")]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DatasetError(f"scikit-image's data folder {data} lacks {', '.join(missing)}")
    return [PairFiles(*files, sample_id="motorcycle")]


class MotorcycleDataset(StereoPairs):
    """The real Motorcycle pair of scikit-image; its GT is a float array in an .npz (NaN or inf = unknown)."""

    def __init__(self, augment: AugmentConfig | None = None, seed: int = 0, scale: float = 1.0) -> None:
        super().__init__(motorcycle_pairs(), "motorcycle", augment, seed, scale)

    def read_gt(self, pair: PairFiles) -> np.ndarray:
        try:
            with np.load(pair.disparity, allow_pickle=False) as data:
                gt = np.asarray(data[data.files[0]], np.float32)
        except (OSError, ValueError, IndexError) as exc:
            raise DatasetError(f"cannot read {pair.disparity}: {exc}") from None
        return np.where(np.isfinite(gt) & (gt > 0), gt, np.nan).astype(np.float32)


class Concat(ConcatDataset):
    """Concatenated datasets that keep ``load(i)`` and ``set_epoch``."""

    def load(self, index: int):
        d = bisect.bisect_right(self.cumulative_sizes, index)
        start = self.cumulative_sizes[d - 1] if d else 0
        return self.datasets[d].load(index - start)

    def set_epoch(self, epoch: int) -> None:
        for ds in self.datasets:
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)


MIN_LABELS = 64  # an image with fewer usable labelled pixels teaches the sparse loss nothing


def label_census(dataset: Dataset, max_disp: float, progress: bool = False) -> dict[str, Any]:
    """Count every image's usable labels (finite, > 0 and below ``max_disp`` px) from its GT files
    alone (no image is decoded): ``{"per_image": [...], "beyond_range": n, "images": n}``."""
    from tqdm import tqdm

    parts = dataset.datasets if isinstance(dataset, Concat) else [dataset]
    per_image: list[int] = []
    beyond = 0
    for part in parts:
        pairs = getattr(part, "pairs", None)
        if pairs is None:  # a dataset that is not built from label files: nothing to count here
            continue
        scale = float(getattr(part, "scale", 1.0))
        for pair in tqdm(pairs, desc="checking labels", unit="image", disable=not progress):
            if not pair.disparity:
                per_image.append(0)
                continue
            gt = part.read_gt(pair) * np.float32(scale)
            labelled = np.isfinite(gt) & (gt > 0)
            usable = labelled & (gt < max_disp)
            beyond += int(labelled.sum() - usable.sum())
            per_image.append(int(usable.sum()))
    return {"per_image": per_image, "beyond_range": beyond, "images": len(per_image)}


def check_labels(dataset: Dataset, max_disp: float, progress: bool = False) -> dict[str, Any]:
    """Refuse a dataset whose labels cannot train anything (all missing, NaN, zero, or beyond the model's
    ``max_disp``; or a few pixels per image); warn about the images among them that have none."""
    census = label_census(dataset, max_disp, progress)
    counts = census["per_image"]
    if not counts:
        return census
    poor = sum(c < MIN_LABELS for c in counts)
    if poor == len(counts):
        beyond = (f"; {census['beyond_range']} labelled pixels are at or beyond the model's maximum disparity "
                  f"{max_disp:g} px" if census["beyond_range"] else "")
        raise DatasetError(f"no image has labels to train on: each of the {len(counts)} image(s) has fewer than "
                           f"{MIN_LABELS} usable labelled pixels ({sum(counts)} in all){beyond}; check the disparity "
                           "files (0 or NaN = no label; KITTI PNGs are value / 256 px)")
    if poor:
        log.warning("%d of %d image(s) have fewer than %d usable labelled pixels: the sparse loss learns nothing "
                    "from them", poor, len(counts), MIN_LABELS)
    return census


def beyond_range_share(dataset: Dataset, max_disp: float, samples: int = 32) -> dict[str, Any] | None:
    """The share of the labelled pixels at or beyond ``max_disp`` px (they are dropped from the loss) on up to
    ``samples`` evenly spaced pairs (unaugmented), or None for a dataset that cannot ``load`` its pairs."""
    base = getattr(dataset, "base", dataset)  # the S2DKD wrapper trains on its base dataset's labels
    if not hasattr(base, "load") or not len(base):
        return None
    idx = np.unique(np.linspace(0, len(base) - 1, min(samples, len(base))).round().astype(int))
    labelled = beyond = 0
    for i in idx:
        disp = np.asarray(base.load(int(i))[2], np.float32)
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(disp) & (disp > 0)
            labelled += int(ok.sum())
            beyond += int((ok & (disp >= max_disp)).sum())
    return {"pairs": int(idx.size), "labelled": labelled, "beyond": beyond,
            "share": beyond / labelled if labelled else 0.0, "max_disp": float(max_disp)}


_SCALES = {"full": 1.0, "half": 0.5, "quarter": 0.25}


def build_dataset(spec: str, augment: AugmentConfig | None = None, seed: int = 0) -> Dataset:
    """``kind:path[:resolution]`` (resolution full|half|quarter), joined with ``+``.

    Kinds: synth, sceneflow, kitti2012, kitti2015, middlebury, eth3d, folder; and the real pairs
    ``aloe[:half]`` (opencv-doc) and ``motorcycle[:half]`` (scikit-image), which take no path.
    """
    parts = [p for p in spec.split("+") if p]
    if len(parts) > 1:
        return Concat([build_dataset(p, augment, seed) for p in parts])
    match = re.fullmatch(r"(\w+)(?::(.*?))?(?::(full|half|quarter))?", spec.strip())
    if not match:
        raise DatasetError(f"dataset spec '{spec}' must look like kind:path[:half]")
    kind, path, res = match.group(1), match.group(2), match.group(3) or "full"
    scale = _SCALES[res]
    if kind in ("aloe", "motorcycle"):
        if path is not None and path not in _SCALES:
            raise DatasetError(f"'{spec}': {kind} is a built-in pair and takes no path, only a resolution "
                               f"({kind}, {kind}:half or {kind}:quarter)")
        real = AloeDataset if kind == "aloe" else MotorcycleDataset
        return real(augment, seed, scale if path is None else _SCALES[path])
    if not path:
        raise DatasetError(f"dataset '{kind}' needs a path: {kind}:/path/to/data")
    root = Path(path)
    if not root.exists():
        raise DatasetError(f"dataset path {root} does not exist")
    if kind == "synth":
        from m2s_train.data.synthetic import SynthStereoDataset

        return SynthStereoDataset(root, augment, seed)
    builders = {
        "sceneflow": lambda: sceneflow_pairs(root),
        "kitti2012": lambda: kitti_pairs(root, 2012),
        "kitti2015": lambda: kitti_pairs(root, 2015),
        "middlebury": lambda: two_view_pairs(root, "middlebury"),
        "eth3d": lambda: two_view_pairs(root, "eth3d"),
        "folder": lambda: folder_pairs(root),
    }
    if kind not in builders:
        raise DatasetError(f"unknown dataset kind '{kind}'; use one of synth, aloe, motorcycle, {', '.join(builders)}")
    return StereoPairs(builders[kind](), kind, augment, seed, scale)
