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


def own_hash_key(model_path: str | os.PathLike) -> str:
    """The sidecar key holding the sha256 of the file it describes: ``onnx_sha256`` for an ONNX,
    ``engine_sha256`` for an engine (whose ``onnx_sha256`` is the ONNX it was built from)."""
    return "onnx_sha256" if Path(model_path).suffix == ".onnx" else "engine_sha256"


def first_upper(text: str) -> str:
    """``text`` with its first letter capitalised and nothing else touched (``str.capitalize`` lower-cased the
    paths in the rebuild hints: /home/Jetson/IGEV.onnx came out as /home/jetson/igev.onnx)."""
    return text[:1].upper() + text[1:]


def rebuild_hint(model_path: str | os.PathLike, sidecar: dict[str, Any] | None = None) -> str:
    p = Path(model_path)
    if p.suffix == ".onnx":
        return f"re-export it (m2s-export --checkpoint CKPT --onnx {p} --height H --width W)"
    onnx = (sidecar or {}).get("onnx") or "MODEL.onnx"
    return f"rebuild it (m2s-export --trt --onnx {onnx} --engine {p})"


def checked_sidecar(model_path: str | os.PathLike, error: type[Exception] = RuntimeBackendError) -> dict[str, Any] | None:
    """The sidecar of ``model_path``, refused (``error`` naming both files and the fix) when it belongs
    to another version of the file: its recorded sha256 of the file differs. Sidecars written before the
    hash was recorded are returned as they are (callers that can cross-check do)."""
    meta = read_sidecar(model_path)
    if meta is None:
        return None
    key = own_hash_key(model_path)
    recorded = meta.get(key)
    if recorded is not None and recorded != sha256_file(model_path):
        raise error(f"{sidecar_path(model_path)} does not belong to {model_path}: it describes a file with sha256 "
                    f"{str(recorded)[:12]}..., this one is {sha256_file(model_path)[:12]}... (the file was replaced after "
                    f"its sidecar was written, so its fp32 set, input size and checks are someone else's). "
                    f"{first_upper(rebuild_hint(model_path, meta))}, or delete the stale sidecar")
    return meta


def to_onnx_props(meta: dict[str, Any]) -> dict[str, str]:
    """Flat string key/values for ONNX ``metadata_props`` (nested values JSON-encoded)."""
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in meta.items()}


def onnx_metadata(onnx_path: str | os.PathLike) -> dict[str, Any]:
    """The m2s metadata embedded in an ONNX file (``metadata_props``), read without a runtime session."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001  (onnx raises DecodeError and others for a damaged file)
        raise RuntimeBackendError(f"cannot read {onnx_path} as ONNX: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    return from_onnx_props({p.key: p.value for p in model.metadata_props}, str(onnx_path))


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
