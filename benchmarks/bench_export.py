"""Inference latency of one model through every available backend, in one run; and the FP16 analysis.

    python benchmarks/bench_export.py [--models igev-rt igev] [--sizes 320x240 640x480] [--repeats 6]
    python benchmarks/bench_export.py --fp16 [--models igev-rt] [--sizes 640x480] [--checkpoint DIR ...]

``--fp16``: for each model (random weights) or ``--checkpoint`` (trained) and size: the export
time, the ONNX size against the weights, the time and peak memory (RSS of a fresh process) of the
FP16 activation analysis as it was (every intermediate exposed as a graph output at once, the
baseline) and as it is (:func:`m2s_export.fp16.activation_peaks`: scalar probes), and the fp16
check with the export's fp32 set against fp16 everywhere.

For each model and size: a checkpoint (random weights; latency does not depend on them) is
exported to ONNX at that size (verified against PyTorch: the mean |Δd| is printed), then
``infer`` is timed through the one runtime interface for PyTorch eager (CPU, or CUDA when
present), onnxruntime CPU, and onnxruntime CUDA / TensorRT execution providers where present.
Median and p95 of the whole ``infer`` call (pre-processing, model, post-processing), and each
backend's ratio to PyTorch eager from the same run.

Each backend is timed in a fresh process of its own, in the order A B .. B A (so a drift in this
shared machine's speed affects all alike), after one untimed call. Separate processes because
backends in one process disturb each other: PyTorch's OpenMP threads keep spinning after a
parallel region and onnxruntime's pool does too, and whatever ran first leaves glibc's malloc
in a different state. PyTorch eager on CPU is timed twice: as a fresh process runs it (the
baseline of the ratios), and with glibc told to keep freed memory (``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_``), since it allocates its activations anew on every call and otherwise
pays page faults for them; onnxruntime reuses its own arena either way.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

KEEP_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 32)}


def pair(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    left = np.random.default_rng(0).integers(0, 255, (h, w, 3), np.uint8)
    return left, np.roll(left, -8, axis=1)


def worker(spec: dict) -> None:
    """Time one backend (run in its own process); prints the call times in seconds as JSON."""
    import torch

    torch.set_num_threads(spec["threads"])
    from m2s_export.runtime import OnnxRuntime, TorchRuntime

    h, w = spec["h"], spec["w"]
    if spec["backend"] == "torch":
        rt = TorchRuntime(spec["path"], input_size=(h, w))
    else:
        rt = OnnxRuntime(spec["path"], providers=spec["providers"], threads=spec["threads"])
    left, right = pair(h, w)
    rt.infer(left, right)  # untimed: graph optimisation, allocations
    times = []
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        rt.infer(left, right)
        times.append(time.perf_counter() - t0)
    print(json.dumps(times))


def all_outputs_analysis(path: str, feeds: list[dict]) -> None:
    """The analysis before this change, for the baseline: every float intermediate as a graph output."""
    import onnx
    import onnxruntime as ort

    model = onnx.shape_inference.infer_shapes(onnx.load(path))
    typed = {vi.name: vi for vi in model.graph.value_info if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    existing = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name in typed and name not in existing:
                model.graph.output.append(typed[name])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for feed in feeds:
        for value in session.run(names, feed):
            np.abs(value[np.isfinite(value)]).max(initial=0.0)


def fp16_worker(spec: dict) -> None:
    """One FP16 measurement in a fresh process: prints seconds and peak RSS (MiB) as JSON."""
    import resource

    from m2s_export.calibration import calibration_feeds
    from m2s_export.fp16 import activation_peaks

    _, feeds = calibration_feeds(spec["h"], spec["w"])
    t0 = time.perf_counter()
    if spec["kind"] == "outputs":
        all_outputs_analysis(spec["path"], feeds)
    else:
        activation_peaks(spec["path"], feeds)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def fp16_report(args: argparse.Namespace, tmp: str) -> None:
    import torch

    from m2s_export.calibration import calibration_feeds
    from m2s_export.fp16 import activation_peaks, fp16_check, fp32_set
    from m2s_export.onnx_export import export_onnx
    from m2s_train.models import create_model, save_model

    sources = [(Path(c).name, Path(c)) for c in args.checkpoint] or []
    for name in ([] if args.checkpoint else args.models):
        torch.manual_seed(0)
        save_model(create_model(name), Path(tmp) / name)
        sources.append((f"{name} (random weights)", Path(tmp) / name))
    for label, ckpt in sources:
        for size in args.sizes:
            w, h = (int(v) for v in size.split("x"))
            onnx_path = Path(tmp) / f"{ckpt.name}_{w}x{h}.onnx"
            t0 = time.perf_counter()
            export_onnx(ckpt, onnx_path, h, w, verify=False, fp16=False)
            export_s = time.perf_counter() - t0
            ratio = onnx_path.stat().st_size / (ckpt / "model.safetensors").stat().st_size
            print(f"\n{label} at {size}: export {export_s:.1f} s (no verification), ONNX {onnx_path.stat().st_size / 2**20:.1f} "
                  f"MiB = {ratio:.2f}x the weights")
            for kind, what in (("outputs", "before: all intermediates as outputs"), ("probe", "now: scalar probes")):
                r = run_worker({"fp16": True, "kind": kind, "path": str(onnx_path), "h": h, "w": w})
                print(f"  FP16 analysis, {what:38s}: {r['seconds']:6.1f} s, peak RSS {r['rss_mb']:7.0f} MiB")
            _, feeds = calibration_feeds(h, w)
            nodes = fp32_set(onnx_path, activation_peaks(onnx_path, feeds)["peaks"])["nodes"]
            for title, pinned in (("with the export's fp32 set", nodes), ("fp16 everywhere (no pinning)", [])):
                c = fp16_check(onnx_path, pinned, feeds)
                print(f"  fp16 check {title:30s}: mean {c['mean_abs_diff_px']:.4f} px, p99 {c['p99_abs_diff_px']:.4f} px, "
                      f"max {c['max_abs_diff_px']:.4f} px, non-finite {c['nonfinite_fraction']:.2g} "
                      f"({len(pinned)} fp32 nodes, {c['pairs']} pairs)")


def run_worker(spec: dict) -> list[float]:
    env = {**os.environ, **(KEEP_FREED_MEMORY if spec.get("keep_freed_memory") else {})}
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env, capture_output=True,
                         text=True)
    if out.returncode:
        raise SystemExit(f"worker failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["igev-rt", "igev"])
    parser.add_argument("--sizes", nargs="+", default=["320x240", "640x480"])
    parser.add_argument("--repeats", type=int, default=6, help="timed calls per backend (half on the way out, half back)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fp16", action="store_true", help="the FP16 analysis and check instead of latencies")
    parser.add_argument("--checkpoint", nargs="*", default=[], help="--fp16: trained checkpoints instead of random models")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        (fp16_worker if spec.get("fp16") else worker)(spec)
        return 0
    if args.fp16:
        with tempfile.TemporaryDirectory() as tmp:
            fp16_report(args, tmp)
        return 0
    import onnxruntime as ort
    import torch

    from m2s_export.onnx_export import export_onnx
    from m2s_train.models import create_model, save_model

    providers = ort.get_available_providers()
    print(f"CPU threads {args.threads}; onnxruntime providers: {providers}; CUDA for torch: {torch.cuda.is_available()}")
    print(f"{'model':8s} {'size':>8s} {'backend':22s} {'median ms':>10s} {'p95 ms':>9s} {'vs torch':>9s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            torch.manual_seed(0)
            ckpt = Path(tmp) / name
            save_model(create_model(name), ckpt)
            for size in args.sizes:
                w, h = (int(v) for v in size.split("x"))
                onnx_path = Path(tmp) / f"{name}_{w}x{h}.onnx"
                meta = export_onnx(ckpt, onnx_path, h, w)
                parity = max(r["mean_abs_px"] for r in meta["export_report"]["verification"])
                common = {"h": h, "w": w, "threads": args.threads, "repeats": max(1, args.repeats // 2)}
                specs = {"torch eager " + ("cuda" if torch.cuda.is_available() else "cpu"):
                         {**common, "backend": "torch", "path": str(ckpt)}}
                if not torch.cuda.is_available():
                    specs["torch eager cpu, kept"] = {**common, "backend": "torch", "path": str(ckpt),
                                                         "keep_freed_memory": True}
                specs |= {"onnxruntime cpu": {**common, "backend": "onnx", "path": str(onnx_path),
                                             "providers": ["CPUExecutionProvider"]}}
                for provider, label in (("CUDAExecutionProvider", "onnxruntime cuda"),
                                        ("TensorrtExecutionProvider", "onnxruntime tensorrt")):
                    if provider in providers:
                        specs[label] = {**common, "backend": "onnx", "path": str(onnx_path),
                                        "providers": [provider, "CPUExecutionProvider"]}
                times: dict[str, list[float]] = {label: [] for label in specs}
                for label in list(specs) + list(reversed(specs)):
                    times[label] += run_worker(specs[label])
                base = None
                for label, t in times.items():
                    med, p95 = float(np.median(t)) * 1e3, float(np.percentile(t, 95)) * 1e3
                    base = base or med
                    print(f"{name:8s} {size:>8s} {label:22s} {med:10.1f} {p95:9.1f} {med / base:8.2f}x", flush=True)
                print(f"{name:8s} {size:>8s} onnx parity vs torch: mean |Δd| <= {parity:.2e} px over the verification pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
