"""Architecture figures of the registered stereo models: parameters, MACs and CPU latency.

    python benchmarks/bench_models.py [--height 480 --width 640] [--repeats 3] [--threads 2]

Prints, for igev (the reference configuration; IGEV-Stereo reports 12.6 M parameters) and
igev-rt (the Jetson configuration), the parameter count, multiply-accumulates of one inference
(torch's FLOP counter / 2, at the model's inference iteration count) and median CPU latency in
eval mode, plus the ratios igev-rt / igev from the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from m2s_train.models import create_model


def measure(name: str, h: int, w: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = create_model(name).eval()
    left, right = torch.rand(1, 3, h, w), torch.rand(1, 3, h, w)
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            model(left, right)
        macs = counter.get_total_flops() / 2
        model(left, right)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(left, right)
            times.append(time.perf_counter() - t0)
    return {"params_m": params / 1e6, "gmacs": macs / 1e9, "latency_ms": statistics.median(times) * 1e3,
            "iters": model.config.valid_iters}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = {name: measure(name, args.height, args.width, args.repeats) for name in ("igev", "igev-rt")}
    print(f"{args.width}x{args.height}, CPU, {args.threads} threads, batch 1, eval mode")
    print(f"{'model':10s} {'params (M)':>11s} {'GMACs':>9s} {'iters':>6s} {'latency (ms)':>13s}")
    for name, r in rows.items():
        print(f"{name:10s} {r['params_m']:11.2f} {r['gmacs']:9.1f} {r['iters']:6d} {r['latency_ms']:13.0f}")
    a, b = rows["igev-rt"], rows["igev"]
    print(f"igev-rt / igev: params {a['params_m'] / b['params_m']:.2f}x, MACs {a['gmacs'] / b['gmacs']:.2f}x, "
          f"latency {a['latency_ms'] / b['latency_ms']:.2f}x (reference: IGEV-Stereo 12.6 M parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
