"""TensorRT engine build (on the target: engines are tied to the GPU and the TensorRT version).

TensorRT 10.x (JetPack 6 on Orin) takes ``BuilderFlag.FP16`` plus per-layer precision
constraints; TensorRT >= 11 has no FP16 builder flag and builds strongly typed networks, so
FP16 is written into an fp16 ONNX first (:func:`m2s_export.fp16.to_fp16_onnx`). Both paths keep
the same fp32 set, decided at export time on the workstation and read from the ONNX sidecar
(:func:`m2s_export.onnx_export.fp16_decision`): TensorRT 10 layers are matched by their *output
tensor names* (ONNX tensor names survive the parser; matching layer names by prefix pinned 55
unrelated layers of igev-rt for one ``/model/Sub``). Both paths report every ONNX parser error,
reuse a timing cache (a mismatching one is replaced, not fatal), add an optimisation profile when
the batch is dynamic (min = opt = 1, the runtime's batch; max = ``--max-batch``), and record
TensorRT version, GPU, precision and the fp32 layers in the engine's JSON sidecar.
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

JETPACK_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"  # where JetPack installs trtexec (not on PATH)


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
                    fp32_layers: list[str] = (), dynamic_inputs: dict[str, tuple[int, ...]] | None = None,
                    trtexec: str = "trtexec") -> str:
    """The ``trtexec`` command line that builds what :func:`build_engine` builds, for this TensorRT version.

    ``fp32_layers``: ONNX node names kept fp32 (TensorRT 10: ``--layerPrecisions`` and
    ``--layerOutputTypes``, obeyed); ``dynamic_inputs``: input name -> shape without the batch,
    for ``--minShapes/--optShapes/--maxShapes``. On JetPack trtexec is :data:`JETPACK_TRTEXEC`.
    """
    parts = [trtexec, f"--onnx={onnx_path}", f"--saveEngine={engine_path}",
             f"--memPoolSize=workspace:{options.workspace_mb}M"]
    if options.timing_cache:
        parts.append(f"--timingCacheFile={options.timing_cache}")
    if trt_major(trt_version) >= 11:
        parts.append("--stronglyTyped")  # precision comes from the (fp16) ONNX itself
    elif options.fp16:
        parts.append("--fp16")
        if fp32_layers:
            spec = ",".join(f"{n}:fp32" for n in fp32_layers)
            parts += ["--precisionConstraints=obey", f"--layerPrecisions={spec}", f"--layerOutputTypes={spec}"]
    if dynamic_inputs:
        def shapes(batch: int) -> str:
            return ",".join(f"{name}:{'x'.join(str(d) for d in (batch, *dims))}" for name, dims in dynamic_inputs.items())

        parts += [f"--minShapes={shapes(1)}", f"--optShapes={shapes(1)}", f"--maxShapes={shapes(options.max_batch)}"]
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


def pin_fp32_layers(network: Any, trt: Any, fp32_tensors: set[str], fp32_nodes: set[str]) -> list[str]:
    """Keep in fp32 every layer that writes one of ``fp32_tensors`` (ONNX tensor names) or is named like
    one of ``fp32_nodes`` exactly; returns the pinned layer names. Its outputs are typed fp32 too,
    so its consumers (pinned themselves where the analysis said so) read fp32."""
    kept = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        outputs = {layer.get_output(j).name for j in range(layer.num_outputs)}
        if outputs & fp32_tensors or layer.name in fp32_nodes:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                if layer.get_output(j).dtype in (trt.float32, trt.float16):  # not the int64 index casts
                    layer.set_output_type(j, trt.float32)
            kept.append(layer.name)
    return kept


def load_timing_cache(config: Any, path: Path | None) -> None:
    """Attach the timing cache at ``path`` (if any) to ``config``; one from another TensorRT or GPU is
    replaced by an empty one (with a warning) instead of failing after a long build."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    if config.set_timing_cache(cache, ignore_mismatch=False):
        return
    log.warning("timing cache %s was made by another TensorRT version or GPU: starting a new one", path)
    if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
        raise ExportError("TensorRT refused an empty timing cache; build without --timing-cache")


def save_timing_cache(config: Any, path: Path) -> bool:
    """Write the builder's timing cache to ``path``; False (with a warning) when there is none."""
    cache = config.get_timing_cache()
    data = cache.serialize() if cache is not None else None
    if data is None:
        log.warning("TensorRT returned no timing cache: %s not written", path)
        return False
    write_bytes_atomic(path, bytes(data))
    return True


def _dynamic_profile(builder: Any, network: Any, max_batch: int) -> Any | None:
    dynamic = [network.get_input(i) for i in range(network.num_inputs) if -1 in tuple(network.get_input(i).shape)]
    if not dynamic:
        return None
    profile = builder.create_optimization_profile()
    for tensor in dynamic:
        shape = tuple(tensor.shape)
        one = tuple(1 if d == -1 else d for d in shape)
        hi = tuple(max_batch if d == -1 else d for d in shape)
        profile.set_shape(tensor.name, one, one, hi)  # min = opt = 1: the runtime runs batch 1
    return profile


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, options: EngineOptions,
                 fp32: dict[str, Any] | None = None, trt: Any = None) -> dict[str, Any]:
    """Build and write a TensorRT engine + sidecar; returns the sidecar dict.

    ``fp32``: ``{"fp32_nodes", "fp32_tensors"}`` (the ``fp16`` entry of the ONNX sidecar); required
    for an FP16 build. ``trt``: the ``tensorrt`` module (default: imported here).
    """
    if trt is None:
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
    if options.fp16 and fp32 is None:
        raise ExportError("an FP16 build needs the fp32 set of the export (m2s-export writes it into the sidecar)")
    fp32_nodes = list((fp32 or {}).get("fp32_nodes", []))
    fp32_tensors = set((fp32 or {}).get("fp32_tensors", []))
    version = trt.__version__
    major = trt_major(version)
    source = onnx_path
    if major >= 11 and options.fp16:
        from m2s_export.fp16 import fp16_onnx

        source = fp16_onnx(onnx_path, engine_path.with_suffix(".fp16.onnx"), fp32_nodes)
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
    if not parser.parse(source.read_bytes(), str(source)):  # the model *file* (for external weights)
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"TensorRT's ONNX parser rejected {source} with {len(errors)} error(s):\n  " + "\n  ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    kept: list[str] = []
    if options.fp16 and major < 11:
        if not builder.platform_has_fast_fp16:
            log.warning("this GPU has no fast FP16; building FP16 anyway as requested")
        config.set_flag(trt.BuilderFlag.FP16)
        kept = pin_fp32_layers(network, trt, fp32_tensors, set(fp32_nodes))
        if kept:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        log.info("FP16 engine with %d of %d layers kept in fp32", len(kept), network.num_layers)
    profile = _dynamic_profile(builder, network, options.max_batch)
    if profile is not None:
        config.add_optimization_profile(profile)
    cache_path = Path(options.timing_cache) if options.timing_cache else None
    load_timing_cache(config, cache_path)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {source} (see the TensorRT log above)")
    write_bytes_atomic(engine_path, bytes(serialized))
    if cache_path:
        save_timing_cache(config, cache_path)
    meta = dict(read_sidecar(onnx_path) or {})
    meta.update({"tensorrt_version": version, "gpu": _gpu_name(), "precision": "fp16" if options.fp16 else "fp32",
                 "fp32_layers": kept if major < 11 else fp32_nodes, "onnx": str(onnx_path),
                 "onnx_sha256": sha256_file(onnx_path),
                 "trtexec": trtexec_command(str(source), str(engine_path), options, version,
                                            fp32_nodes if options.fp16 and major < 11 else [])})
    write_sidecar(engine_path, meta)
    return meta
