"""``m2s-bench``: a model's latency on this machine per backend, and in the node, measured properly.

    m2s-bench --checkpoint CKPT --onnx MODEL.onnx [--engine MODEL.engine] [--runs 20] [--warmup 3] [--json OUT]
    m2s-bench --onnx MODEL.onnx --node          # + the node's receive -> publish latency, over DDS
    m2s-bench --onnx MODEL.onnx --camera-size 1280x720   # pre/post with the camera's resize

Each backend runs in a fresh process, after warm-up, synchronised with the device, a fixed number of
runs over real pairs, split into pre-processing / inference / post-processing with median / p90 /
max, the process's peak memory and the backend's disparity drift against the fp32 model (the fp16 error
of an fp16 engine). Backends that cannot run here are listed with the reason. ``--node``: the same
model in the ROS 2 node, fed pairs over DDS one at a time (each after the previous answer): the node's
own receive -> publish time and the end-to-end time from publishing the pair to receiving its
disparity. Prints a markdown table and each backend's cold start; ``--json`` writes every figure, with the
platform state before and after (load, clocks, nvpmodel, temperatures) and a warning when the machine was
busy (see :mod:`m2s_export.benchmark`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from calib.console import CliParser, add_common_flags, bounded, non_negative_int, positive_int, run_command
from calib.safe_files import write_json_atomic


def node_latency(model: str, size: tuple[int, int], frames: int) -> dict[str, Any]:
    """The node on ``model`` over DDS (:func:`m2s_stereo.replay.run_live`, one pair at a time): its own
    receive -> publish latency and the publish -> disparity received latency, in ms."""
    from m2s_export.calibration import verification_pairs
    from m2s_stereo.bag_tools import Frame, _default_camera, write_bag
    from m2s_stereo.replay import run_live

    pairs = verification_pairs(*size)
    with tempfile.TemporaryDirectory() as tmp:
        bag = Path(tmp) / "bench"
        write_bag(bag, [Frame(1_700_000_000 * 10**9 + i * 10**8, pairs[i % len(pairs)][1], pairs[i % len(pairs)][2],
                              _default_camera(pairs[0][1])) for i in range(frames)], storage="mcap")
        result = run_live(bag, model, rate=0.0, progress=False, params={"confidence_threshold": 0.0})
    end_to_end = [ms for _, ms in result["latency_ms"][1:]]  # the first pair pays the node's warm-up
    node = result["node"]
    return {"model": model, "frames": result["frames"], "answered": result["answered"],
            "node_receive_to_publish_ms": node.get("latency_ms"), "node_inference_ms": node.get("inference_ms"),
            "end_to_end_ms": {"median": float(np.median(end_to_end)), "p90": float(np.percentile(end_to_end, 90)),
                              "max": float(np.max(end_to_end))} if end_to_end else None}


def run(args: argparse.Namespace) -> int:
    from m2s_export.benchmark import benchmark, busy_warning, platform_state, table
    from m2s_export.errors import ExportError

    models = {k: v for k, v in (("checkpoint", args.checkpoint), ("onnx", args.onnx), ("engine", args.engine)) if v}
    if not models:
        raise ExportError("nothing to time: give --checkpoint, --onnx and/or --engine")
    if (args.height is None) != (args.width is None):
        raise ExportError("--height and --width go together")
    size = (args.height, args.width) if args.height else None
    before = platform_state()
    results = benchmark(models, args.backends, args.runs, args.warmup, args.threads, size, args.camera_size)
    after = platform_state()
    extra, node = [], None
    if args.node:
        model = models.get("engine") or models.get("onnx") or models["checkpoint"]
        h, w = size or _model_size(model)
        node = node_latency(model, (h, w), args.node_frames)
        e2e = node["end_to_end_ms"]
        kind = {".engine": "tensorrt", ".plan": "tensorrt", ".onnx": "onnxruntime"}.get(Path(model).suffix, "torch")
        total = (f"{node['node_receive_to_publish_ms']:.1f} in the node (median); {e2e['median']:.1f} / {e2e['p90']:.1f} / "
                 f"{e2e['max']:.1f} publish -> received") if e2e else "no answer"
        extra.append({"backend": f"node ({kind}, over DDS)",
                      "cells": ["", f"{node['node_inference_ms']:.1f} (median)", "", total, "", ""]})
    print(table(results, extra))
    for r in results:
        if r.cold_start_ms:
            print(f"{r.backend}: cold start {r.cold_start_ms['load']:.0f} ms to load (deserialise / session / engine "
                  f"build), first call {r.cold_start_ms['first_call']:.0f} ms", file=sys.stderr)
    warnings = [w for w in (busy_warning(before, after),) if w]
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    summary = {"results": [r.to_dict() for r in results], **({"node": node} if node else {}),
               "camera_size": list(args.camera_size) if args.camera_size else None,
               "platform": {"before": before, "after": after}, "warnings": warnings}
    if args.json:
        write_json_atomic(args.json, summary)
        print(f"-> {args.json}", file=sys.stderr)
    return 0


def _camera_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 1280x720, got '{text}'") from None
    if not (16 <= w <= 8192 and 16 <= h <= 8192):
        raise argparse.ArgumentTypeError(f"{w}x{h} is not a camera size (16..8192 px each side)")
    return w, h


def _model_size(model: str) -> tuple[int, int]:
    from m2s_export.metadata import checked_sidecar, onnx_metadata

    if model.endswith(".onnx"):
        meta = onnx_metadata(model)
    else:
        meta = checked_sidecar(model) or {}
    if "input_height" not in meta:
        return 480, 640
    return int(meta["input_height"]), int(meta["input_width"])


def build_parser() -> argparse.ArgumentParser:
    from m2s_export.benchmark import BACKENDS

    p = CliParser(prog="m2s-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="checkpoint directory: timed with PyTorch (torch-cpu, torch-cuda)")
    p.add_argument("--onnx", help="ONNX file (m2s-export): onnxruntime on the CPU, CUDA and TensorRT providers")
    p.add_argument("--engine", help="TensorRT engine (m2s-export --trt): the TensorRT runtime")
    p.add_argument("--backends", nargs="+", choices=list(BACKENDS),
                   help="only these backends (default: every backend of the models given)")
    p.add_argument("--runs", type=positive_int, default=20, help="timed calls per backend (default 20)")
    p.add_argument("--warmup", type=non_negative_int, default=3, help="untimed calls before timing (default 3)")
    p.add_argument("--threads", type=positive_int, default=2, help="CPU threads of the CPU backends (default 2)")
    p.add_argument("--height", type=bounded(int, ge=32, le=4096), help="input height for --checkpoint, px (default: the ONNX's)")
    p.add_argument("--width", type=bounded(int, ge=32, le=4096), help="input width for --checkpoint, px")
    p.add_argument("--camera-size", type=_camera_size, metavar="WxH",
                   help="feed pairs of the camera's size (e.g. 1280x720): pre- and post-processing then include the "
                        "resize to and from the model's input size that such a camera costs (default: the model's size)")
    p.add_argument("--node", action="store_true",
                   help="also run the model in the ROS 2 node over DDS: its receive -> publish latency (needs rclpy)")
    p.add_argument("--node-frames", type=bounded(int, ge=2, le=1000), default=10,
                   help="pairs sent to the node with --node (default 10)")
    p.add_argument("--json", help="write every figure as JSON here")
    add_common_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_command(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
