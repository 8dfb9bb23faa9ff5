"""The model zoo's table: every architecture we import or train, measured here in one run.

    python benchmarks/bench_zoo.py [--models igev rt-igev igev-rt igev-tiny] [--size 640x480] [--repeats 4]

Per model, random weights (latency and size do not depend on them; accuracy does, and is not measured
here): parameters, GMACs of one inference at the model's test iterations, the ONNX export at --size
(file size against the weights, onnxruntime-vs-PyTorch parity, the fp16 check's drift), and the median /
p90 latency of onnxruntime on this CPU (a fresh process per model, after one untimed call; the timing
worker of bench_export.py). igev and rt-igev are measured as ``m2s-train import`` builds them (the
authors' configuration, derived confidence); igev-rt and igev-tiny as trained here (learned confidence
head). Writes JSON and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_export import run_worker  # noqa: E402

from m2s_export.onnx_export import export_onnx  # noqa: E402
from m2s_train.models import create_model, save_model  # noqa: E402
from m2s_train.models.published import ARCHITECTURES  # noqa: E402


def measure(name: str, h: int, w: int, repeats: int, threads: int, tmp: Path) -> dict:
    overrides = dict(ARCHITECTURES[name].overrides) if name in ARCHITECTURES else {}
    torch.manual_seed(0)
    model = create_model(name, **overrides).eval()
    params = sum(p.numel() for p in model.parameters())
    weights_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    left = torch.rand(1, 3, h, w)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(left, left)
    gmacs = counter.get_total_flops() / 2 / 1e9
    ckpt = tmp / name
    save_model(model, ckpt)
    onnx_path = tmp / f"{name}_{w}x{h}.onnx"
    t0 = time.perf_counter()
    meta = export_onnx(ckpt, onnx_path, h, w, allow_fp16_drift=True)
    export_s = time.perf_counter() - t0
    check = meta.get("fp16_check", {})
    times = run_worker({"backend": "onnx", "path": str(onnx_path), "providers": ["CPUExecutionProvider"], "h": h, "w": w,
                        "threads": threads, "repeats": repeats})
    return {"model": name, "params_m": params / 1e6, "weights_mb": weights_bytes / 1e6, "gmacs": gmacs,
            "iters": model.config.valid_iters, "onnx_mb": onnx_path.stat().st_size / 1e6, "export_s": round(export_s, 1),
            "onnx_parity_max_px": max(r["max_abs_px"] for r in meta["export_report"]["verification"]),
            "fp16_mean_px": check.get("mean_abs_diff_px"), "fp16_p99_px": check.get("p99_abs_diff_px"),
            "fp16_passed": check.get("passed"), "ort_cpu_median_ms": float(np.median(times)) * 1e3,
            "ort_cpu_p90_ms": float(np.percentile(times, 90)) * 1e3, "confidence": "learned" if model.config.confidence_head else "derived"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["igev", "rt-igev", "igev-rt", "igev-tiny"])
    parser.add_argument("--size", default="640x480", help="WxH (default 640x480)")
    parser.add_argument("--repeats", type=int, default=4, help="timed onnxruntime calls per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="/tmp/m2s_bench_zoo.json")
    args = parser.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows.append(measure(name, h, w, args.repeats, args.threads, Path(tmp)))
            r = rows[-1]
            print(f"{name}: {r['params_m']:.2f} M params, {r['gmacs']:.0f} GMACs, ONNX {r['onnx_mb']:.1f} MB "
                  f"(weights {r['weights_mb']:.1f} MB), ORT CPU {r['ort_cpu_median_ms']:.0f} ms", file=sys.stderr, flush=True)
    print(f"\nAt {w}x{h}, random weights, onnxruntime CPU with {args.threads} threads on this machine:\n")
    print("| model | parameters | GMACs | iterations | ONNX (weights) | ORT CPU median / p90 | ONNX vs PyTorch max | "
          "fp16 check mean / p99 | confidence |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params_m']:.2f} M | {r['gmacs']:.0f} | {r['iters']} | {r['onnx_mb']:.1f} MB "
              f"({r['weights_mb']:.1f} MB) | {r['ort_cpu_median_ms']:.0f} / {r['ort_cpu_p90_ms']:.0f} ms | "
              f"{r['onnx_parity_max_px']:.1e} px | {r['fp16_mean_px']:.4f} / {r['fp16_p99_px']:.4f} px | {r['confidence']} |")
    Path(args.out).write_text(json.dumps(rows, indent=2))
    print(f"-> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
