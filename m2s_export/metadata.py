"""Metadata every exported model carries: in ONNX ``metadata_props`` and in a JSON sidecar.

The runtime reads it to pre-process exactly like the exporter (input size, layout, value
range) and to refuse files it does not understand. Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from calib.safe_files import read_json, write_json_atomic
from m2s_export.errors import RuntimeBackendError

FORMAT = "m2s-stereo-v1"
INPUT_SPEC = "float32 NCHW RGB in [0, 1]; normalisation (mean/std in model_config) is inside the graph"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """``model.onnx`` -> ``model.onnx.json``; ``model.engine`` -> ``model.engine.json``."""
    p = Path(model_path)
    return p.with_name(p.name + ".json")


def write_sidecar(model_path: str | os.PathLike, meta: dict[str, Any]) -> Path:
    path = sidecar_path(model_path)
    write_json_atomic(path, meta, sort_keys=True)
    return path


def read_sidecar(model_path: str | os.PathLike) -> dict[str, Any] | None:
    path = sidecar_path(model_path)
    if not path.is_file():
        return None
    meta = read_json(path, "model sidecar", RuntimeBackendError)
    if not isinstance(meta, dict):
        raise RuntimeBackendError(f"{path} is not a model sidecar (expected a JSON object); re-export the model")
    return meta


def to_onnx_props(meta: dict[str, Any]) -> dict[str, str]:
    """Flat string key/values for ONNX ``metadata_props`` (nested values JSON-encoded)."""
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in meta.items()}


def from_onnx_props(props: dict[str, str], where: str) -> dict[str, Any]:
    """Parse ``metadata_props`` written by :func:`to_onnx_props`; refuses ONNX files from other tools."""
    if props.get("format") != FORMAT:
        raise RuntimeBackendError(
            f"{where} was not exported by m2s-export (no '{FORMAT}' metadata): its inputs, size and value range "
            "are unknown. Export it with 'm2s-export --checkpoint CKPT --onnx OUT.onnx --height H --width W'"
        )
    out: dict[str, Any] = {}
    for k, v in props.items():
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    for key in ("input_height", "input_width"):
        if not isinstance(out.get(key), int) or out[key] <= 0:
            raise RuntimeBackendError(f"{where}: metadata '{key}' missing or invalid ({out.get(key)!r})")
    return out
