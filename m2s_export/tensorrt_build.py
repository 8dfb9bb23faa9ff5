"""TensorRT engine build (on the target: engines are tied to the GPU and the TensorRT version).

TensorRT 10.0-10.11 (JetPack 6 on Orin: 10.3) takes ``BuilderFlag.FP16`` plus per-layer precision
constraints. TensorRT 10.12 deprecates those flags (weakly typed networks) and 11 removes them:
from 10.12 on, FP16 is written into an fp16 ONNX first (:func:`m2s_export.fp16.to_fp16_onnx`) and
built as a strongly typed network, so one path serves every current TensorRT. Both paths keep the
same fp32 set, decided at export time on the workstation and read from the ONNX sidecar
(:func:`m2s_export.onnx_export.fp16_decision`). With precision constraints, every layer the parser
made for a pinned ONNX node and tagged with it is pinned: onnx-tensorrt tags a node's layers
(``ILayer.metadata``, ``[ONNX Layer: <node> | ...]``), while layer *names* are uniquified with a
global counter (``<node>_<n>`` for a node's second layer); its helper layers made without a node
(broadcast shuffles, casts, constants: no metadata) are pinned by their output tensor where they feed
a pinned layer (:func:`pin_fp32_layers` says what is and is not pinned; matching layer names by prefix
pinned 55 unrelated layers of igev-rt for one ``/model/Sub``). Layers with no float input or output are never pinned (trtexec's own rule;
under OBEY a precision on an int64/bool layer warns or fails). Both paths report every ONNX parser
error, reuse a timing cache (a mismatching one is replaced, not fatal), add an optimisation profile
when the batch is dynamic (min = opt = 1, the runtime's batch; max = ``--max-batch``), and record in
the engine's JSON sidecar: TensorRT version, GPU and compute capability, the sha256 of the engine
and of the ONNX it was built from, precision, the layers really pinned and the trtexec line that
pins exactly those (float outputs only, with the shapes).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from calib.safe_files import write_bytes_atomic
from m2s_export.errors import ExportError
from m2s_export.metadata import sha256_file, write_sidecar

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


def trt_version(version: str) -> tuple[int, int]:
    """(major, minor) of a TensorRT version string."""
    try:
        parts = version.split(".")
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise ExportError(f"cannot parse the TensorRT version '{version}'") from None


def trt_major(version: str) -> int:
    return trt_version(version)[0]


MIN_TENSORRT = (10, 3)  # JetPack 6.1 / 6.2 (CUDA 12.6); JetPack 6.0 ships 8.6, which this project does not support


def check_supported_trt(version: str, error: type[Exception] = ExportError) -> None:
    """Refuse a TensorRT this project does not build or run engines with: older than 10.3 (JetPack 6.0 ships 8.6:
    no strongly typed networks, no ILayer.metadata, other flags), with the way forward."""
    if trt_version(version) < MIN_TENSORRT:
        raise error(f"TensorRT {version} is not supported: engines are built and run with TensorRT 10.3 or newer "
                    "(JetPack 6.1 / 6.2; JetPack 6.0 has TensorRT 8.6). Upgrade to JetPack 6.1 or later, or run the "
                    "ONNX with onnxruntime (m2s-stereo-node backend:=onnxruntime, its CUDA execution provider)")


def strongly_typed(version: str) -> bool:
    """True from TensorRT 10.12 on: FP16 goes through the fp16 ONNX and a strongly typed network
    (10.12 deprecates ``BuilderFlag.FP16`` / ``OBEY_PRECISION_CONSTRAINTS``, 11 removes them)."""
    return trt_version(version) >= (10, 12)


def fp16_onnx_path(engine_path: str | os.PathLike) -> Path:
    """Where the strongly typed path writes the fp16 ONNX it builds from: beside the engine."""
    return Path(engine_path).with_suffix(".fp16.onnx")


class PinnedLayer(NamedTuple):
    """A layer kept in fp32: its name in the network, and whether all its outputs are float (only
    then may trtexec's ``--layerOutputTypes`` name it: it types every output of the layer)."""

    name: str
    float_outputs: bool


def trtexec_command(onnx_path: str, engine_path: str, options: EngineOptions, trt_version_: str,
                    pinned: list[PinnedLayer] | list[str] = (), dynamic_inputs: dict[str, tuple[int, ...]] | None = None,
                    trtexec: str = "trtexec") -> str:
    """The ``trtexec`` command line that builds what :func:`build_engine` builds, for this TensorRT version.

    ``pinned``: the layers kept fp32 (TensorRT < 10.12: ``--layerPrecisions``, and for those whose
    outputs are all float ``--layerOutputTypes``, obeyed; plain names count as all-float). From
    10.12 on, ``onnx_path`` must be the fp16 ONNX (:func:`fp16_onnx_path`): precision comes from it.
    ``dynamic_inputs``: input name -> shape without the batch, for ``--minShapes/--optShapes/--maxShapes``.
    On JetPack trtexec is :data:`JETPACK_TRTEXEC`. Arguments are shell-quoted.
    """
    parts = [trtexec, f"--onnx={onnx_path}", f"--saveEngine={engine_path}",
             f"--memPoolSize=workspace:{options.workspace_mb}M"]
    if options.timing_cache:
        parts.append(f"--timingCacheFile={options.timing_cache}")
    layers = [p if isinstance(p, PinnedLayer) else PinnedLayer(p, True) for p in pinned]
    if strongly_typed(trt_version_):
        parts.append("--stronglyTyped")  # precision comes from the fp16 ONNX itself
    elif options.fp16:
        parts.append("--fp16")
        if layers:
            parts += ["--precisionConstraints=obey", "--layerPrecisions=" + ",".join(f"{p.name}:fp32" for p in layers)]
            typed = [p.name for p in layers if p.float_outputs]
            if typed:
                parts.append("--layerOutputTypes=" + ",".join(f"{n}:fp32" for n in typed))
    if dynamic_inputs:
        def shapes(batch: int) -> str:
            return ",".join(f"{name}:{'x'.join(str(d) for d in (batch, *dims))}" for name, dims in dynamic_inputs.items())

        parts += [f"--minShapes={shapes(1)}", f"--optShapes={shapes(1)}", f"--maxShapes={shapes(options.max_batch)}"]
    return shlex.join(parts)


def source_onnx(sidecar: dict[str, Any], engine_path: str | os.PathLike) -> Path | None:
    """The ONNX an engine was built from, found from the engine's own folder (the sidecar records it relative to
    the engine, and as typed), never from the working directory of whoever loads the engine; None when absent."""
    engine_dir = Path(engine_path).resolve().parent
    candidates = []
    if sidecar.get("onnx_relative"):
        candidates.append(engine_dir / sidecar["onnx_relative"])
    if sidecar.get("onnx"):
        typed = Path(sidecar["onnx"])
        candidates.append(typed if typed.is_absolute() else engine_dir / typed.name)
    return next((c for c in candidates if c.is_file()), None)


def check_engine_compat(sidecar: dict[str, Any] | None, installed_trt: str, engine_path: str,
                        compute_capability: str | None = None) -> None:
    """Refuse an engine that cannot be right here: built by another TensorRT version or for a GPU of
    another compute capability (it does not deserialize, or misbehaves), or from an ONNX that has since
    been replaced (the file its sidecar names exists with another sha256: a re-export not rebuilt).
    The sidecar itself is checked against the engine by :func:`m2s_export.metadata.checked_sidecar`."""
    from m2s_export.metadata import first_upper, rebuild_hint

    if sidecar is None:
        log.warning("%s has no sidecar: cannot check its TensorRT version, GPU, source ONNX or input size", engine_path)
        return
    hint = rebuild_hint(engine_path, sidecar)
    built = sidecar.get("tensorrt_version")
    if built and built != installed_trt:
        raise ExportError(
            f"{engine_path} was built with TensorRT {built} on {sidecar.get('gpu', 'an unknown GPU')}, but TensorRT "
            f"{installed_trt} is installed: engines are tied to the TensorRT version and GPU. {first_upper(hint)} here")
    made_for = sidecar.get("compute_capability")
    if made_for and compute_capability and str(made_for) != str(compute_capability):
        raise ExportError(
            f"{engine_path} was built for compute capability {made_for} ({sidecar.get('gpu', 'another GPU')}), this GPU "
            f"is {compute_capability}: engines do not move between GPU generations. {first_upper(hint)} here")
    source, recorded = source_onnx(sidecar, engine_path), sidecar.get("onnx_sha256")
    if source is not None and recorded and sha256_file(source) != recorded:
        raise ExportError(f"{engine_path} was built from an earlier {source}: that ONNX has been re-exported since "
                          f"(sha256 {recorded[:12]}... then, {sha256_file(source)[:12]}... now). {first_upper(hint)}")


def gpu_identity(cudart: Any = None) -> dict[str, str | None]:
    """``{"gpu": name, "compute_capability": "8.7"}`` of the current GPU: from cuda-python where it is
    installed (it is, wherever the TensorRT runtime runs), else nvidia-smi, else the Jetson's model name."""
    try:
        if cudart is None:
            from m2s_export.tensorrt_runtime import _cudart

            cudart = _cudart()
        err, device = cudart.cudaGetDevice()
        err2, props = cudart.cudaGetDeviceProperties(device)
        if int(err) == 0 and int(err2) == 0:
            name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
            return {"gpu": name.strip("\x00 "), "compute_capability": f"{props.major}.{props.minor}"}
    except Exception:  # noqa: BLE001  (identification is best effort; the build itself needs none of it)
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=False)
        if out.returncode == 0 and out.stdout.strip():
            name, _, cc = out.stdout.strip().splitlines()[0].rpartition(",")
            return {"gpu": name.strip() or cc.strip(), "compute_capability": cc.strip() if name else None}
    except (OSError, subprocess.TimeoutExpired):
        pass
    model = Path("/proc/device-tree/model")  # Jetson
    return {"gpu": model.read_text().strip("\x00\n") if model.is_file() else "unknown", "compute_capability": None}


def _gpu_name() -> str:
    return str(gpu_identity()["gpu"])


_ONNX_NODE = re.compile(r"\[ONNX Layer: (.*?)(?: \| .*)?\]")


def layer_node(layer: Any) -> str | None:
    """The ONNX node a layer was made for: onnx-tensorrt writes ``[ONNX Layer: <node> | ...]`` into
    ``ILayer.metadata`` (TensorRT 10) for every layer of a node; None for layers without it."""
    found = _ONNX_NODE.fullmatch(str(getattr(layer, "metadata", "") or "").strip())
    return found.group(1) if found else None


def pin_fp32_layers(network: Any, trt: Any, fp32_tensors: set[str], fp32_nodes: set[str]) -> list[PinnedLayer]:
    """Keep in fp32, and return:

    - every layer the parser made for one of ``fp32_nodes``, found by its ``ILayer.metadata`` (so the node's
      helper layers that carry it too), or named exactly like the node;
    - every layer that writes one of ``fp32_tensors`` (ONNX tensor names);
    - every layer **without metadata** (onnx-tensorrt makes broadcast shuffles, cast helpers and constants
      with ``node=nullptr``) whose output feeds a layer pinned here, found by that output tensor, repeated
      until no more are found: such a helper would otherwise hand the pinned layer an fp16 value.

    Not pinned: helpers without metadata that feed only fp16 layers, and layers without a float input or
    output (a precision means nothing there, and OBEY warns or fails on it). Float outputs are typed fp32, so
    consumers read fp32; int64/bool outputs keep their type."""
    floats = (trt.float32, trt.float16)
    layers = [network.get_layer(i) for i in range(network.num_layers)]

    def inputs_of(layer: Any) -> list[Any]:
        return [t for t in (layer.get_input(j) for j in range(getattr(layer, "num_inputs", 0))) if t is not None]

    def outputs_of(layer: Any) -> list[Any]:
        return [layer.get_output(j) for j in range(layer.num_outputs)]

    chosen = [k for k, layer in enumerate(layers)
              if layer_node(layer) in fp32_nodes or {o.name for o in outputs_of(layer)} & fp32_tensors
              or layer.name in fp32_nodes]
    grown = True
    while grown:  # helpers without metadata that feed what is pinned: by their output tensor
        fed = {t.name for k in chosen for t in inputs_of(layers[k])}
        extra = [k for k, layer in enumerate(layers) if k not in chosen and layer_node(layer) is None
                 and {o.name for o in outputs_of(layer)} & fed]
        chosen += extra
        grown = bool(extra)
    kept = []
    for k in sorted(chosen):
        layer = layers[k]
        outputs, inputs = outputs_of(layer), inputs_of(layer)
        float_out = [j for j, o in enumerate(outputs) if o.dtype in floats]
        if not float_out and not any(t.dtype in floats for t in inputs):
            continue
        layer.precision = trt.float32
        for j in float_out:
            layer.set_output_type(j, trt.float32)
        kept.append(PinnedLayer(layer.name, len(float_out) == len(outputs)))
    return kept


def onnx_pinned_nodes(onnx_path: str | os.PathLike, fp32_nodes: list[str]) -> list[PinnedLayer]:
    """The fp32 nodes as the parser's first layer of each would be pinned (by node name), float ones
    only: what a dry run can name without TensorRT (a node's helper layers get names only the parser
    knows; a real build records them)."""
    import onnx

    from m2s_export.fp16 import _float_tensors

    model = onnx.load(str(onnx_path), load_external_data=False)
    floats = set(_float_tensors(model)) | {i.name for i in model.graph.initializer if i.data_type == 1}
    wanted = set(fp32_nodes)
    out = []
    for n in model.graph.node:
        if n.name not in wanted or n.op_type in ("Constant", "ConstantOfShape"):  # no layer for a constant
            continue
        float_out = [o for o in n.output if o in floats]
        if not float_out and not any(i in floats for i in n.input if i):
            continue
        out.append(PinnedLayer(n.name, len(float_out) == len([o for o in n.output if o])))
    return out


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
    from m2s_export.metadata import checked_sidecar

    onnx_meta = dict(checked_sidecar(onnx_path, ExportError) or {})  # before the long build: not someone else's
    fp32_nodes = list((fp32 or {}).get("fp32_nodes", []))
    fp32_tensors = set((fp32 or {}).get("fp32_tensors", []))
    version = trt.__version__
    check_supported_trt(version)
    major = trt_major(version)
    typed = strongly_typed(version)
    source = onnx_path
    if typed and options.fp16:
        from m2s_export.fp16 import fp16_onnx

        source = fp16_onnx(onnx_path, fp16_onnx_path(engine_path), fp32_nodes)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if typed:
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
    kept: list[PinnedLayer] = []
    if options.fp16 and not typed:
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
    dynamic = {t.name: tuple(int(d) for d in tuple(t.shape)[1:]) for t in
               (network.get_input(i) for i in range(network.num_inputs)) if -1 in tuple(t.shape)} or None
    cache_path = Path(options.timing_cache) if options.timing_cache else None
    load_timing_cache(config, cache_path)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {source} (see the TensorRT log above)")
    write_bytes_atomic(engine_path, bytes(serialized))
    if cache_path:
        save_timing_cache(config, cache_path)
    from calib.version import version as package_version

    meta = onnx_meta
    meta.update({"built_by": f"mono2stereo {package_version()}", "tensorrt_version": version, **gpu_identity(), "precision": "fp16" if options.fp16 else "fp32",
                 "strongly_typed": typed, "fp32_layers": [p.name for p in kept] if not typed else fp32_nodes,
                 "onnx": str(onnx_path), "onnx_sha256": sha256_file(onnx_path), "engine_sha256": sha256_file(engine_path),
                 "onnx_relative": os.path.relpath(Path(onnx_path).resolve(), Path(engine_path).resolve().parent),
                 "trtexec": trtexec_command(str(source), str(engine_path), options, version, kept, dynamic)})
    write_sidecar(engine_path, meta)
    return meta
