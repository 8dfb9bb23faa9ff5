"""Latency of a model on this machine, measured the way the figures should be: the core of ``m2s-bench``.

Users of every stereo network report "5-10x slower than the paper": timings without warm-up, without
waiting for the GPU, of one call. Here each backend runs in a fresh process of its own (backends in one
process disturb each other: thread pools keep spinning, allocators keep state), loads the model, runs
``warmup`` untimed calls, then ``runs`` timed calls over the verification pairs (Aloe and two texture
pairs at the model's input size) through the one runtime interface, whose ``infer`` returns only
once the outputs are on the host (CUDA and TensorRT calls end in a device synchronisation). Each call is
split into pre-processing (resize, layout), inference and post-processing (crop, scaling back), and
reported as median / p90 / max. Memory: the process's peak resident set (and for CUDA backends the
device's peak allocation where the backend tells it). The fp16 drift of a backend is its disparity
against the fp32 reference (the ONNX in onnxruntime on the CPU, else PyTorch on the CPU) on the same
pairs: ~1e-5 px for fp32 backends, the real fp16 error for an fp16 engine.

Backends: ``torch-cpu``, ``torch-cuda`` (a checkpoint), ``onnxruntime-cpu``, ``onnxruntime-cuda``,
``onnxruntime-tensorrt`` (an ONNX), ``tensorrt`` (an engine). One that cannot run here is listed with the
reason (no CUDA, provider missing, TensorRT not installed). Torch-free unless a torch backend is asked for.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from m2s_export.errors import ExportError

log = logging.getLogger(__name__)

# backend -> (model kind it runs, onnxruntime providers / torch device)
BACKENDS: dict[str, tuple[str, Any]] = {
    "torch-cpu": ("checkpoint", "cpu"),
    "torch-cuda": ("checkpoint", "cuda"),
    "onnxruntime-cpu": ("onnx", ["CPUExecutionProvider"]),
    "onnxruntime-cuda": ("onnx", ["CUDAExecutionProvider", "CPUExecutionProvider"]),
    "onnxruntime-tensorrt": ("onnx", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]),
    "tensorrt": ("engine", None),
}
STAGES = ("pre", "infer", "post", "total")


@dataclass
class BenchmarkResult:
    backend: str
    model: str
    skipped: str | None = None  # why it could not run here
    ms: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> median / p90 / max
    peak_rss_mb: float | None = None
    gpu_peak_mb: float | None = None  # device memory the backend took (CUDA backends; None on the CPU)
    cold_start_ms: dict[str, float] | None = None  # load (deserialise / session / engine build), first call
    drift: dict[str, float] | None = None
    runs: int = 0
    camera_size: list[int] | None = None  # [width, height] of the pairs fed in (None: the model's input size)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def unavailable(backend: str) -> str | None:
    """Why ``backend`` cannot run on this machine, or None."""
    kind, how = BACKENDS[backend]
    if kind == "checkpoint":
        if importlib.util.find_spec("torch") is None:
            return "torch is not installed (the training extra)"
        if how == "cuda":
            import torch

            if not torch.cuda.is_available():
                return "no CUDA device for torch here"
        return None
    if kind == "onnx":
        if importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed (the export extra)"
        import onnxruntime as ort

        missing = [p for p in how[:-1] if p not in ort.get_available_providers()] if len(how) > 1 else []
        return f"{missing[0]} is not among onnxruntime's providers here ({', '.join(ort.get_available_providers())})" \
            if missing else None
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (engines run on the target)"
    return None


def summarise(values_s: list[float]) -> dict[str, float]:
    arr = np.asarray(values_s, np.float64) * 1e3
    return {"median": float(np.median(arr)), "p90": float(np.percentile(arr, 90)), "max": float(arr.max())}


def gpu_used_mb() -> float | None:
    """Device memory in use now (MiB), from cuda-python where it is installed, else nvidia-smi; None without a
    GPU. On a Jetson the GPU shares the RAM: this is the memory CUDA has taken from it."""
    try:
        from m2s_export.tensorrt_runtime import _cudart, cuda_check

        cudart = _cudart()
        free, total = cuda_check(cudart, cudart.cudaMemGetInfo(), "cudaMemGetInfo")
        return (int(total) - int(free)) / 2**20
    except Exception:  # noqa: BLE001  (no cuda-python, no driver: try the tool, else nothing to report)
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=False)
        return float(out.stdout.split()[0]) if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def platform_state() -> dict[str, Any]:
    """What decides a figure besides the model, as far as this machine lets it be read: load average, CPU and
    GPU clocks, the Jetson power mode (nvpmodel) and thermal zone temperatures; absent items are left out."""
    state: dict[str, Any] = {"load_average": list(os.getloadavg()), "cpus": os.cpu_count()}
    freqs = [int(v) / 1000 for f in sorted(Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_cur_freq"))
             if (v := _read(f)) and v.isdigit()]
    if freqs:
        state["cpu_mhz"] = {"min": min(freqs), "max": max(freqs)}
    gpu = [(f.parent.name, int(v) / 1e6) for f in sorted(Path("/sys/class/devfreq").glob("*/cur_freq"))
           if "gpu" in f.parent.name.lower() or "gv11b" in f.parent.name or "ga10b" in f.parent.name
           if (v := _read(f)) and v.isdigit()]
    if gpu:
        state["gpu_mhz"] = dict(gpu)
    zones = {}
    for zone in sorted(Path("/sys/class/thermal").glob("thermal_zone*")):
        kind, temp = _read(zone / "type"), _read(zone / "temp")
        if kind and temp and temp.lstrip("-").isdigit():
            zones[kind] = int(temp) / 1000
    if zones:
        state["thermal_c"] = zones
    try:
        mode = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=10, check=False)
        if mode.returncode == 0 and mode.stdout.strip():
            state["nvpmodel"] = " ".join(mode.stdout.split())
    except (OSError, subprocess.TimeoutExpired):
        pass
    return state


def busy_warning(before: dict[str, Any], after: dict[str, Any]) -> str | None:
    """A warning when the machine was busy around the run (1-minute load above half its CPUs): its figures are
    not the idle figures of this machine."""
    cpus = before.get("cpus") or 1
    load = max(before["load_average"][0], after["load_average"][0])
    if load > 0.5 * cpus:
        return (f"the machine was busy: load average {load:.1f} on {cpus} CPUs around the run; these figures are not "
                "idle figures (stop other work, and on a Jetson set nvpmodel / jetson_clocks, then measure again)")
    return None


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One backend, in this (fresh) process: load, warm up, time; the outputs on the pairs go to ``spec['out']``.
    ``spec['camera_size']`` ([w, h]): the pairs come at the camera's size, so pre- and post-processing include
    the resize to and from the model's input size that a camera of another size costs."""
    import time

    import cv2

    from m2s_export.calibration import verification_pairs

    kind, how = BACKENDS[spec["backend"]]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_peak = None
    on_gpu = spec["backend"] not in ("torch-cpu", "onnxruntime-cpu")
    gpu_before = gpu_used_mb() if on_gpu else None
    t_load = time.perf_counter()
    if kind == "checkpoint":
        import torch

        from m2s_export.runtime import TorchRuntime

        torch.set_num_threads(spec["threads"])
        runtime = TorchRuntime(spec["path"], input_size=tuple(spec["size"]), device=how)
    elif kind == "onnx":
        from m2s_export.runtime import OnnxRuntime

        runtime = OnnxRuntime(spec["path"], providers=how, threads=spec["threads"])
    else:
        from m2s_export.tensorrt_runtime import TensorRTRuntime

        runtime = TensorRTRuntime(spec["path"])
    load_ms = (time.perf_counter() - t_load) * 1e3
    h, w = runtime.input_size
    pairs = verification_pairs(h, w)
    if spec.get("camera_size"):
        cw, ch = spec["camera_size"]
        pairs = [(name, cv2.resize(left, (cw, ch), interpolation=cv2.INTER_LINEAR),
                  cv2.resize(right, (cw, ch), interpolation=cv2.INTER_LINEAR)) for name, left, right in pairs]
    t_first = time.perf_counter()
    outputs = [runtime.infer(pairs[0][1], pairs[0][2])]
    first_ms = (time.perf_counter() - t_first) * 1e3
    outputs += [runtime.infer(left, right) for _, left, right in pairs[1:]]  # also the first warm-up calls
    for i in range(spec["warmup"]):
        runtime.infer(*pairs[i % len(pairs)][1:])
    for q in runtime.timings.values():
        q.clear()
    for i in range(spec["runs"]):
        runtime.infer(*pairs[i % len(pairs)][1:])
    times = {stage: list(runtime.timings[stage]) for stage in STAGES}
    if kind == "checkpoint" and how == "cuda":
        import torch

        gpu_peak = torch.cuda.max_memory_allocated() / 2**20
    elif on_gpu and gpu_before is not None and (gpu_after := gpu_used_mb()) is not None:
        gpu_peak = max(gpu_after - gpu_before, 0.0)  # what loading and running the model took on the device
    np.savez(spec["out"], *outputs)
    return {"times": times, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_mb": rss_before, "gpu_peak_mb": gpu_peak, "size": [h, w],
            "cold_start_ms": {"load": load_ms, "first_call": first_ms}}


def _run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    res = subprocess.run([sys.executable, "-m", "m2s_export.benchmark", json.dumps(spec)], capture_output=True, text=True)
    if res.returncode:
        tail = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"
        raise ExportError(f"the {spec['backend']} benchmark of {spec['path']} failed: {tail}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def benchmark(models: dict[str, str], backends: list[str] | None = None, runs: int = 20, warmup: int = 3,
              threads: int = 2, size: tuple[int, int] | None = None,
              camera_size: tuple[int, int] | None = None) -> list[BenchmarkResult]:
    """Time ``models`` (``{"checkpoint": dir, "onnx": file, "engine": file}``, any of them) with every
    backend that runs its kind (or ``backends``). ``size``: the checkpoint's input size (default: the
    ONNX's, else 480 x 640). ``camera_size`` (width, height): feed pairs of that size (see :func:`worker`)."""
    from m2s_export.fp16 import disparity_drift

    if runs < 1 or warmup < 0:
        raise ExportError(f"--runs must be >= 1 and --warmup >= 0, got {runs} and {warmup}")
    unknown = [b for b in (backends or []) if b not in BACKENDS]
    if unknown:
        raise ExportError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    for kind, path in models.items():
        if not Path(path).exists():
            raise ExportError(f"--{kind} {path} not found")
    if size is None and "onnx" in models:
        from m2s_export.metadata import onnx_metadata

        meta = onnx_metadata(models["onnx"])
        size = (int(meta["input_height"]), int(meta["input_width"]))
    size = size or (480, 640)
    wanted = backends or [b for b, (kind, _) in BACKENDS.items() if kind in models]
    results: list[BenchmarkResult] = []
    outputs: dict[str, list[np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in wanted:
            kind = BACKENDS[backend][0]
            if kind not in models:
                results.append(BenchmarkResult(backend, "-", skipped=f"no --{kind} given"))
                continue
            reason = unavailable(backend)
            if reason:
                results.append(BenchmarkResult(backend, str(models[kind]), skipped=reason))
                continue
            spec = {"backend": backend, "path": str(models[kind]), "runs": runs, "warmup": warmup, "threads": threads,
                    "size": list(size), "out": str(Path(tmp) / f"{backend}.npz"),
                    "camera_size": list(camera_size) if camera_size else None}
            log.info("benchmarking %s on %s (%d runs after %d warm-up)", backend, models[kind], runs, warmup)
            raw = _run_worker(spec)
            with np.load(spec["out"]) as data:
                outputs[backend] = [data[k] for k in sorted(data.files, key=lambda k: int(k.split("_")[1]))]
            results.append(BenchmarkResult(
                backend, str(models[kind]), ms={s: summarise(raw["times"][s]) for s in STAGES},
                peak_rss_mb=raw["peak_rss_mb"], gpu_peak_mb=raw["gpu_peak_mb"], runs=runs,
                cold_start_ms=raw["cold_start_ms"], camera_size=spec["camera_size"]))
    reference = next((b for b in ("onnxruntime-cpu", "torch-cpu") if b in outputs), None)
    for r in results:
        if r.backend in outputs and reference is not None:
            r.drift = {**disparity_drift(outputs[reference], outputs[r.backend]), "reference": reference}
    return results


def table(results: list[BenchmarkResult], extra: list[dict[str, Any]] = ()) -> str:
    """A markdown table of ``results`` (and ``extra`` rows: {"backend", "model", "cells"})."""
    lines = ["| backend | pre ms (med / p90 / max) | inference ms | post ms | total ms | peak RSS MB | "
             "drift vs fp32 mean / p99 px |", "|---|---|---|---|---|---|---|"]

    def cell(stats: dict[str, float]) -> str:
        return f"{stats['median']:.1f} / {stats['p90']:.1f} / {stats['max']:.1f}"

    for r in results:
        if r.skipped:
            lines.append(f"| {r.backend} | skipped: {r.skipped} | | | | | |")
            continue
        drift = (f"{r.drift['mean_abs_diff_px']:.2g} / {r.drift['p99_abs_diff_px']:.2g}"
                 + (" (reference)" if r.drift.get("reference") == r.backend else "")) if r.drift else "-"
        gpu = f", GPU {r.gpu_peak_mb:.0f}" if r.gpu_peak_mb else ""
        lines.append(f"| {r.backend} | {cell(r.ms['pre'])} | {cell(r.ms['infer'])} | {cell(r.ms['post'])} | "
                     f"{cell(r.ms['total'])} | {r.peak_rss_mb:.0f}{gpu} | {drift} |")
    for row in extra:
        lines.append(f"| {row['backend']} | " + " | ".join(row["cells"]) + " |")
    return "\n".join(lines)


__all__ = ["BACKENDS", "BenchmarkResult", "benchmark", "busy_warning", "gpu_used_mb", "platform_state", "table",
           "unavailable"]


def main() -> int:  # the worker process: python -m m2s_export.benchmark SPEC_JSON
    spec = json.loads(sys.argv[1])
    print(json.dumps(worker(spec)))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    sys.exit(main())

