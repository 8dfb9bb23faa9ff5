"""Read and write ROS ``camera_info`` YAML files (the ``camera_calibration_parsers`` format).

The format, as written by ``camera_calibration`` and read by ``camera_info_manager``::

    image_width: 640
    image_height: 480
    camera_name: left
    camera_matrix: {rows: 3, cols: 3, data: [...]}
    distortion_model: plumb_bob
    distortion_coefficients: {rows: 1, cols: 5, data: [...]}
    rectification_matrix: {rows: 3, cols: 3, data: [...]}
    projection_matrix: {rows: 3, cols: 4, data: [...]}

Floats are written with Python's shortest round-trip repr, so write -> read is lossless.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from calib.errors import CalibrationError

_MATRICES = {
    # yaml key: (rows, cols or None for "any length")
    "camera_matrix": (3, 3),
    "distortion_coefficients": (1, None),
    "rectification_matrix": (3, 3),
    "projection_matrix": (3, 4),
}


def _matrix(doc: dict[str, Any], key: str, where: str) -> np.ndarray:
    rows, cols = _MATRICES[key]
    entry = doc.get(key)
    if not isinstance(entry, dict) or "data" not in entry:
        raise CalibrationError(f"{where}: missing or malformed '{key}' (expected rows/cols/data)")
    try:
        data = np.asarray(entry["data"], dtype=np.float64).ravel()
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"{where}: '{key}.data' is not a list of numbers ({exc})") from None
    r = int(entry.get("rows", rows))
    c = int(entry.get("cols", data.size if cols is None else cols))
    if r != rows or (cols is not None and c != cols) or r * c != data.size:
        raise CalibrationError(
            f"{where}: '{key}' must be {rows}x{cols if cols is not None else 'N'}, "
            f"got rows={r} cols={c} with {data.size} values"
        )
    if not np.all(np.isfinite(data)):
        raise CalibrationError(f"{where}: '{key}' contains NaN or inf")
    return data.reshape(r, c) if cols is not None else data


def parse_camera_info_yaml(text: str, where: str = "<camera_info>") -> dict[str, Any]:
    """Parse camera_info YAML text into a dict of numpy arrays and scalars.

    Returns keys ``width, height, camera_name, distortion_model, K (3x3), D (N,), R (3x3), P (3x4)``.
    """
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CalibrationError(f"{where}: not valid YAML ({exc})") from None
    if not isinstance(doc, dict):
        raise CalibrationError(f"{where}: expected a camera_info mapping, got {type(doc).__name__}")
    for key in ("image_width", "image_height"):
        if not isinstance(doc.get(key), int) or doc[key] <= 0:
            raise CalibrationError(f"{where}: '{key}' must be a positive integer, got {doc.get(key)!r}")
    return {
        "width": doc["image_width"],
        "height": doc["image_height"],
        "camera_name": str(doc.get("camera_name", "")),
        "distortion_model": str(doc.get("distortion_model", "plumb_bob")),
        "K": _matrix(doc, "camera_matrix", where),
        "D": _matrix(doc, "distortion_coefficients", where),
        "R": _matrix(doc, "rectification_matrix", where),
        "P": _matrix(doc, "projection_matrix", where),
    }


def read_camera_info_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a camera_info YAML file; see :func:`parse_camera_info_yaml`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise CalibrationError(f"cannot read camera_info file {path}: {exc.strerror}") from None
    return parse_camera_info_yaml(text, where=str(path))


def _block(m: np.ndarray, rows: int, cols: int) -> dict[str, Any]:
    return {"rows": rows, "cols": cols, "data": [float(x) for x in np.asarray(m, np.float64).ravel()]}


def format_camera_info_yaml(
    *,
    width: int,
    height: int,
    camera_name: str,
    distortion_model: str,
    K: np.ndarray,
    D: np.ndarray,
    R: np.ndarray,
    P: np.ndarray,
) -> str:
    """camera_info YAML text, keys in the order ROS tools write them."""
    d = np.asarray(D, np.float64).ravel()
    doc = {
        "image_width": int(width),
        "image_height": int(height),
        "camera_name": camera_name,
        "camera_matrix": _block(K, 3, 3),
        "distortion_model": distortion_model,
        "distortion_coefficients": _block(d, 1, d.size),
        "rectification_matrix": _block(R, 3, 3),
        "projection_matrix": _block(P, 3, 4),
    }
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=1000)
