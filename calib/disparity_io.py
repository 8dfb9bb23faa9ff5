"""Disparity ground-truth files: PFM (SceneFlow, Middlebury, ETH3D), 16-bit KITTI PNG, ``.npy``.

numpy + OpenCV only, so the robot side (bag tools, replay) reads GT without the training stack.
Invalid pixels are NaN in every returned map.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from calib.errors import DataError
from calib.safe_files import load_npy


def read_pfm(path: str | os.PathLike) -> np.ndarray:
    """A PFM file (SceneFlow, Middlebury, ETH3D) as float32 HxW, rows top to bottom; inf stays inf."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            header = f.readline().strip()
            if header not in (b"Pf", b"PF"):
                raise DataError(f"{path}: not a PFM file (header {header[:8]!r})")
            dims = f.readline()
            while dims.startswith(b"#"):
                dims = f.readline()
            w, h = (int(v) for v in dims.split())
            scale = float(f.readline().strip())
            channels = 3 if header == b"PF" else 1
            data = np.fromfile(f, dtype="<f4" if scale < 0 else ">f4", count=w * h * channels)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read PFM {path}: {exc}") from None
    if data.size != w * h * channels:
        raise DataError(f"{path}: truncated PFM ({data.size} of {w * h * channels} values)")
    image = data.reshape(h, w, channels)[::-1, :, 0]
    return np.ascontiguousarray(image, dtype=np.float32)


def read_kitti_disparity(path: str | os.PathLike) -> np.ndarray:
    """KITTI 16-bit PNG disparity: value / 256 px, 0 = no label -> NaN."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.dtype != np.uint16:
        raise DataError(f"{path}: expected a 16-bit KITTI disparity PNG")
    disp = raw.astype(np.float32) / 256.0
    disp[raw == 0] = np.nan
    return disp


def read_disparity(path: str | os.PathLike) -> np.ndarray:
    """Disparity by file type: ``.pfm``, 16-bit ``.png`` (KITTI encoding), ``.npy``; invalid -> NaN."""
    path = Path(path)
    if path.suffix == ".pfm":
        disp = read_pfm(path)
    elif path.suffix == ".png":
        disp = read_kitti_disparity(path)
    elif path.suffix == ".npy":
        disp = load_npy(path, "disparity", DataError).astype(np.float32)
    else:
        raise DataError(f"{path}: unknown disparity format (use .pfm, 16-bit .png or .npy)")
    disp = np.where(np.isfinite(disp) & (disp > 0), disp, np.nan).astype(np.float32)
    return disp


__all__ = ["read_disparity", "read_kitti_disparity", "read_pfm"]
