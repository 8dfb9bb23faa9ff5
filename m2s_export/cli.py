"""``m2s-export``: ONNX export + verification, and TensorRT engine builds.

    m2s-export --checkpoint CKPT --onnx OUT.onnx --height 480 --width 640 [--iters 6]
    m2s-export --trt --onnx OUT.onnx --engine OUT.engine [--fp16] [--workspace 2048] [--timing-cache F]
    m2s-export --trt --onnx OUT.onnx --engine OUT.engine --dry-run    # FP16 analysis + trtexec line only

Formats: onnx (needs the training + export extras: torch, onnx, onnxruntime, onnxslim) and
tensorrt (needs TensorRT, on the target device; onnxruntime for the FP16 analysis).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from calib.console import CliParser, add_common_flags, bounded, positive_float, positive_int, run_command
from calib.safe_files import dumps_json
from m2s_export.errors import ExportError


def _check_args(args: argparse.Namespace) -> None:
    if not args.checkpoint and not args.trt:
        raise ExportError("nothing to do: give --checkpoint CKPT --onnx OUT.onnx --height H --width W (ONNX), "
                          "and/or --trt --onnx MODEL.onnx --engine OUT.engine (TensorRT)")
    if not args.onnx:
        raise ExportError("--onnx is required (the file to write, or with --trt alone the file to build from)")
    if args.checkpoint:
        missing = [f for f in ("height", "width") if getattr(args, f) is None]
        if missing:
            raise ExportError(f"ONNX export needs {' and '.join('--' + m for m in missing)} (static input size, px)")
        from m2s_train.models.registry import checkpoint_dir

        args.checkpoint = str(checkpoint_dir(args.checkpoint))  # a directory, or its model.safetensors
    if args.trt:
        if not args.engine:
            raise ExportError("--trt needs --engine OUT.engine")
        if Path(args.engine).suffix not in (".engine", ".plan"):
            raise ExportError(f"--engine must end in .engine or .plan, got {args.engine}")
        if not args.checkpoint and not Path(args.onnx).is_file():
            raise ExportError(f"--onnx {args.onnx} not found (export it first with --checkpoint)")
    if args.calib_pairs < 1:
        raise ExportError(f"--calib-pairs must be >= 1, got {args.calib_pairs}")


def _fp16_analysis(onnx_path: str, pairs: int) -> dict:
    from m2s_export.fp16 import overflow_report
    from m2s_export.onnx_export import verification_pairs
    from m2s_export.runtime import OnnxRuntime, to_input

    h, w = OnnxRuntime(onnx_path, providers=["CPUExecutionProvider"]).input_size
    feeds = [{"left": to_input(left, (h, w)), "right": to_input(right, (h, w))}
             for _, left, right in verification_pairs(h, w, count=pairs)[:pairs]]
    return overflow_report(onnx_path, feeds)


def _run(args: argparse.Namespace) -> int:
    _check_args(args)
    result: dict = {}
    if args.checkpoint:
        from m2s_export.onnx_export import export_onnx

        meta = export_onnx(args.checkpoint, args.onnx, args.height, args.width, iters=args.iters, opset=args.opset,
                           dynamic_batch=args.dynamic_batch, simplify=not args.no_simplify, verify=not args.no_verify,
                           tolerance=args.tolerance)
        result["onnx"] = {"path": args.onnx, "sidecar": args.onnx + ".json", **meta["export_report"]}
        result["onnx"].pop("op_types", None)
    if args.trt:
        from m2s_export.tensorrt_build import EngineOptions, build_engine, trtexec_command

        options = EngineOptions(fp16=args.fp16, workspace_mb=args.workspace, timing_cache=args.timing_cache,
                                max_batch=args.max_batch)
        analysis = _fp16_analysis(args.onnx, args.calib_pairs) if args.fp16 else {"flagged": []}
        fp32_nodes = [r["node"] for r in analysis["flagged"]]
        result["fp16_analysis"] = analysis
        try:
            import tensorrt

            version = tensorrt.__version__
        except ImportError:
            version = args.assume_trt_version
        result["trtexec"] = trtexec_command(args.onnx, args.engine, options, version, fp32_nodes)
        print(f"equivalent trtexec command (TensorRT {version}):\n  {result['trtexec']}", file=sys.stderr)
        if not args.dry_run:
            result["engine"] = build_engine(args.onnx, args.engine, options, fp32_nodes)
    print(dumps_json(result, indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="m2s-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="checkpoint directory (model.safetensors + model.json) to export")
    p.add_argument("--onnx", help="ONNX file to write (export) or to build the engine from (--trt)")
    p.add_argument("--height", type=bounded(int, ge=64, le=4096),
                   help="static input height, px (padded to a multiple of 32 inside)")
    p.add_argument("--width", type=bounded(int, ge=64, le=4096),
                   help="static input width, px (padded to a multiple of 32 inside)")
    p.add_argument("--iters", type=positive_int, help="fixed GRU iterations in the graph (default: the model's valid_iters)")
    p.add_argument("--opset", type=bounded(int, ge=17), default=17, help="ONNX opset (>= 17; default 17)")
    p.add_argument("--dynamic-batch", action="store_true", help="make the batch dimension dynamic")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim simplification")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime-vs-PyTorch check (not advised)")
    p.add_argument("--tolerance", type=positive_float, default=0.01,
                   help="max mean |Δdisparity| (px) between onnxruntime and PyTorch, fp32 (default 0.01)")
    p.add_argument("--trt", action="store_true", help="build a TensorRT engine from --onnx (on the target device)")
    p.add_argument("--engine", help="engine file to write (.engine)")
    p.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True,
                   help="FP16 engine with overflow-prone layers kept in FP32 (default: on)")
    p.add_argument("--workspace", type=positive_int, default=2048, help="builder workspace, MiB (default 2048)")
    p.add_argument("--timing-cache", help="timing cache file to reuse and update")
    p.add_argument("--max-batch", type=positive_int, default=1, help="max batch of the profile for dynamic-batch ONNX")
    p.add_argument("--calib-pairs", type=positive_int, default=3, help="pairs for the FP16 overflow analysis (default 3)")
    p.add_argument("--dry-run", action="store_true", help="with --trt: analysis and trtexec line only, no build")
    p.add_argument("--assume-trt-version", default="10.3.0",
                   help="TensorRT version for the printed trtexec line when TensorRT is absent (default: JetPack 6's 10.3)")
    add_common_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_command(_run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
