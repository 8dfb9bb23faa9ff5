"""TensorRT engine build (on the target: engines are tied to the GPU and the TensorRT version).

TensorRT 10.x (JetPack 6 on Orin) takes ``BuilderFlag.FP16`` and per-layer precision
constraints for the layers that overflow fp16. TensorRT >= 11 has no FP16 builder flag and
builds strongly typed networks, so FP16 is written into an fp16 ONNX variant first
(:func:`m2s_export.fp16.fp16_onnx`, overflow nodes kept fp32). Both paths report every ONNX
parser error, reuse a timing cache, add an optimisation profile when the batch is dynamic, and
record TensorRT version, GPU and precision in the engine's JSON sidecar.
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calib.safe_files import write_bytes_atomic
from m2s_export.errors import ExportError
from m2s_export.metadata import read_sidecar, sha256_file, write_sidecar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineOptions:
    fp16: bool = True
    workspace_mb: int = 2048
    timing_cache: str | None = None
    max_batch: int = 1  # used only when the ONNX batch is dynamic

    def __post_init__(self) -> None:
        if self.workspace_mb <= 0:
            raise ExportError(f"--workspace must be a positive number of MiB, got {self.workspace_mb}")
        if self.max_batch < 1:
            raise ExportError(f"--max-batch must be >= 1, got {self.max_batch}")


def trt_major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        raise ExportError(f"cannot parse the TensorRT version '{version}'") from None


def trtexec_command(onnx_path: str, engine_path: str, options: EngineOptions, trt_version: str,
                    fp32_layers: list[str] = ()) -> str:
    """The equivalent ``trtexec`` command line for this installed TensorRT version."""
    parts = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}",
             f"--memPoolSize=workspace:{options.workspace_mb}M"]
    if options.timing_cache:
        parts.append(f"--timingCacheFile={options.timing_cache}")
    if trt_major(trt_version) >= 11:
        parts.append("--stronglyTyped")  # precision comes from the (fp16) ONNX itself
    elif options.fp16:
        parts.append("--fp16")
        if fp32_layers:
            parts += ["--precisionConstraints=obey", "--layerPrecisions=" + ",".join(f"{n}:fp32" for n in fp32_layers)]
    return " ".join(parts)


def check_engine_compat(sidecar: dict[str, Any] | None, installed_trt: str, engine_path: str) -> None:
    """Refuse engines built by another TensorRT version (they do not deserialize, or misbehave)."""
    if sidecar is None:
        log.warning("%s has no sidecar: cannot check its TensorRT version or input size", engine_path)
        return
    built = sidecar.get("tensorrt_version")
    if built and built != installed_trt:
        raise ExportError(
            f"{engine_path} was built with TensorRT {built} on {sidecar.get('gpu', 'an unknown GPU')}, but TensorRT "
            f"{installed_trt} is installed: engines are tied to the TensorRT version and GPU. Rebuild it here: "
            f"m2s-export --trt --onnx MODEL.onnx --engine {engine_path}"
        )


def _gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=False)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    model = Path("/proc/device-tree/model")  # Jetson
    return model.read_text().strip("\x00\n") if model.is_file() else "unknown"


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, options: EngineOptions,
                 fp32_nodes: list[str] = ()) -> dict[str, Any]:
    """Build and write a TensorRT engine + sidecar; returns the sidecar dict."""
    try:
        import tensorrt as trt
    except ImportError:
        raise ExportError(
            "TensorRT is not installed here. Build engines on the target: JetPack ships TensorRT (python3-libnvinfer); "
            "on x86 with an NVIDIA GPU: pip install 'mono2stereo[tensorrt]'"
        ) from None
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise ExportError(f"ONNX model {onnx_path} not found")
    version = trt.__version__
    major = trt_major(version)
    source = onnx_path
    if major >= 11 and options.fp16:
        from m2s_export.fp16 import fp16_onnx

        source = fp16_onnx(onnx_path, engine_path.with_suffix(".fp16.onnx"), list(fp32_nodes))
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if major >= 11:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    elif major >= 10:
        flags = 0
    else:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(source.read_bytes(), str(source.parent)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"TensorRT's ONNX parser rejected {source} with {len(errors)} error(s):\n  " + "\n  ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    kept = []
    if options.fp16 and major < 11:
        if not builder.platform_has_fast_fp16:
            log.warning("this GPU has no fast FP16; building FP16 anyway as requested")
        config.set_flag(trt.BuilderFlag.FP16)
        wanted = set(fp32_nodes)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if any(layer.name == n or layer.name.startswith(n + "_") for n in wanted):
                layer.precision = trt.float32
                for j in range(layer.num_outputs):
                    layer.set_output_type(j, trt.float32)
                kept.append(layer.name)
        if kept:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    dynamic = [network.get_input(i) for i in range(network.num_inputs) if -1 in tuple(network.get_input(i).shape)]
    if dynamic:
        profile = builder.create_optimization_profile()
        for tensor in dynamic:
            shape = tuple(tensor.shape)
            lo = tuple(1 if d == -1 else d for d in shape)
            hi = tuple(options.max_batch if d == -1 else d for d in shape)
            profile.set_shape(tensor.name, lo, hi, hi)
        config.add_optimization_profile(profile)
    cache_path = Path(options.timing_cache) if options.timing_cache else None
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {source} (see the TensorRT log above)")
    write_bytes_atomic(engine_path, bytes(serialized))
    if cache_path:
        write_bytes_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
    meta = dict(read_sidecar(onnx_path) or {})
    meta.update({"tensorrt_version": version, "gpu": _gpu_name(), "precision": "fp16" if options.fp16 else "fp32",
                 "fp32_layers": kept or list(fp32_nodes), "onnx": str(onnx_path), "onnx_sha256": sha256_file(onnx_path),
                 "trtexec": trtexec_command(str(source), str(engine_path), options, version, kept)})
    write_sidecar(engine_path, meta)
    return meta
