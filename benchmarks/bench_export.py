"""Inference latency of one model through every available backend, in one run.

    python benchmarks/bench_export.py [--models igev-rt igev] [--sizes 320x240 640x480] [--repeats 5]

For each model and size: a checkpoint (random weights; latency does not depend on them) is
exported to ONNX at that size (verified against PyTorch: the mean |Δd| is printed), then
``infer`` is timed through the one runtime interface for PyTorch eager (CPU, or CUDA when
present), onnxruntime CPU, and onnxruntime CUDA / TensorRT execution providers where present.
Median and p95 of the whole ``infer`` call (pre-processing, model, post-processing), and each
backend's ratio to PyTorch eager from the same run; the backends take turns (round-robin), so
load on the machine affects them alike.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from m2s_export.onnx_export import export_onnx
from m2s_export.runtime import OnnxRuntime, TorchRuntime
from m2s_train.models import create_model, save_model


def timed(runtimes: dict, left, right, repeats: int) -> dict[str, dict[str, float]]:
    """Round-robin: each repeat runs every backend once, so a slow spell of this shared machine
    hits all of them alike instead of skewing one backend's figures."""
    for rt in runtimes.values():
        rt.infer(left, right)  # warm-up (graph optimisation, allocations)
        for q in rt.timings.values():
            q.clear()
    for _ in range(repeats):
        for rt in runtimes.values():
            rt.infer(left, right)
    return {label: rt.stats()["total"] for label, rt in runtimes.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["igev-rt", "igev"])
    parser.add_argument("--sizes", nargs="+", default=["320x240", "640x480"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime as ort

    providers = ort.get_available_providers()
    rng = np.random.default_rng(0)
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
                left = rng.integers(0, 255, (h, w, 3), np.uint8)
                right = np.roll(left, -8, axis=1)
                runtimes = {"torch eager " + ("cuda" if torch.cuda.is_available() else "cpu"): TorchRuntime(ckpt, input_size=(h, w))}
                runtimes["onnxruntime cpu"] = OnnxRuntime(onnx_path, providers=["CPUExecutionProvider"], threads=args.threads)
                for provider, label in (("CUDAExecutionProvider", "onnxruntime cuda"), ("TensorrtExecutionProvider", "onnxruntime tensorrt")):
                    if provider in providers:
                        runtimes[label] = OnnxRuntime(onnx_path, providers=[provider, "CPUExecutionProvider"])
                base = None
                for label, s in timed(runtimes, left, right, args.repeats).items():
                    base = base or s["median_ms"]
                    print(f"{name:8s} {size:>8s} {label:22s} {s['median_ms']:10.1f} {s['p95_ms']:9.1f} {s['median_ms'] / base:8.2f}x")
                print(f"{name:8s} {size:>8s} onnx parity vs torch: mean |Δd| <= {parity:.2e} px over the verification pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
