"""``m2s-export``: ONNX export + verification + FP16 decision, and TensorRT engine builds.

    m2s-export --checkpoint CKPT --onnx OUT.onnx --height 480 --width 640 [--iters 6] [--calib-images L R]
    m2s-export --trt --onnx OUT.onnx --engine OUT.engine [--no-fp16] [--workspace 2048] [--timing-cache F]
    m2s-export --trt --onnx OUT.onnx --engine OUT.engine --dry-run    # the trtexec line only

Formats: onnx (needs the training + export extras: torch, onnx, onnxruntime, onnxslim) and
tensorrt (needs TensorRT, on the target device). The FP16 analysis and the fp16 check run at
export time on the workstation; ``--trt`` reads their result from the sidecar.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from calib.console import CliParser, add_common_flags, bounded, positive_float, positive_int, run_command
from calib.safe_files import dumps_json
from m2s_export.errors import ExportError

log = logging.getLogger("m2s-export")


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
        from calib.safe_files import claim_output_file

        from m2s_export.metadata import sidecar_path

        claim_output_file(args.onnx, overwrite=args.overwrite, flag="--onnx", companions=(sidecar_path(args.onnx),),
                          inputs=(args.checkpoint,))
        if Path(args.onnx).exists():  # --overwrite replaces only an ONNX this command wrote
            _refuse_foreign_onnx(args.onnx)
        if args.camera:  # a bad --camera fails before the export replaces anything
            from calib import StereoCamera

            StereoCamera.from_dir(args.camera)
        from m2s_train.models.registry import checkpoint_dir

        args.checkpoint = str(checkpoint_dir(args.checkpoint))  # a directory, or its model.safetensors
    if args.trt:
        if not args.engine:
            raise ExportError("--trt needs --engine OUT.engine")
        if Path(args.engine).suffix not in (".engine", ".plan"):
            raise ExportError(f"--engine must end in .engine or .plan, got {args.engine}")
        if not args.checkpoint and not Path(args.onnx).is_file():
            raise ExportError(f"--onnx {args.onnx} not found (export it first with --checkpoint)")


def _refuse_foreign_onnx(path: str) -> None:
    """An existing ``--onnx`` is replaced only when it carries this project's export metadata."""
    from m2s_export.errors import RuntimeBackendError
    from m2s_export.metadata import FORMAT, onnx_metadata

    try:
        ours = onnx_metadata(path).get("format") == FORMAT
    except RuntimeBackendError:  # unreadable, not ONNX, or ONNX without our metadata: not ours either way
        ours = False
    if not ours:
        raise ExportError(f"--onnx {path} exists and is not a model m2s-export wrote (no {FORMAT} metadata): it is "
                          "never replaced; choose another name")


def fp32_plan(onnx_path: str, args: argparse.Namespace) -> dict:
    """The export's fp32 set, from the ONNX's own metadata (it travels with the file; a sidecar that
    belongs to another version of the file is refused); ONNX files exported before the analysis moved
    to export time get it computed here, with a warning (it needs GBs)."""
    from m2s_export.metadata import checked_sidecar, onnx_metadata, sidecar_path

    sidecar = checked_sidecar(onnx_path, ExportError) or {}
    meta = onnx_metadata(onnx_path)
    if "fp16" in meta and "fp16" in sidecar and sidecar["fp16"] != meta["fp16"]:
        raise ExportError(f"{sidecar_path(onnx_path)} holds another fp32 set than {onnx_path} itself: it belongs to an "
                          "earlier export. Delete it, or re-export the ONNX (m2s-export --checkpoint ...)")
    from m2s_export.onnx_export import check_fp16_verdict

    if "fp16" in meta:
        check_fp16_verdict(meta.get("fp16_check") or sidecar.get("fp16_check"), onnx_path, args.allow_fp16_drift)
        return meta["fp16"]
    log.warning("%s carries no fp32 set (exported by an older m2s-export): running the FP16 analysis here; "
                "re-export on the workstation to skip it", onnx_path)
    from m2s_export.onnx_export import fp16_decision

    h, w = int(meta["input_height"]), int(meta["input_width"])
    decision = fp16_decision(Path(onnx_path), h, w, args.calib_images, args.calib_pairs, allow_drift=args.allow_fp16_drift)
    check_fp16_verdict(decision["fp16_check"], onnx_path, args.allow_fp16_drift)
    return decision["fp16"]


def _depth_range(args: argparse.Namespace, meta: dict) -> dict:
    """What the export can measure: its maximum disparity at the export width, and with --camera the nearest
    depth on that camera (the node scales the disparity to the camera's width): said, and kept in the sidecar."""
    max_disp = float(meta.get("max_disp", 0))
    out = {"max_disparity_px_at_export_width": max_disp, "export_width": args.width}
    if not args.camera:
        print(f"depth range: max disparity {max_disp:g} px at {args.width} px width; nearest depth on a camera = "
              f"f B / ({max_disp:g} x camera width / {args.width}) (give --camera DIR to have it computed)",
              file=sys.stderr)
        return out
    from calib import StereoCamera
    from m2s_export.metadata import read_sidecar, write_sidecar

    camera = StereoCamera.from_dir(args.camera)
    at_camera = max_disp * camera.left.width / args.width
    near = camera.focal_px * camera.baseline_m / at_camera
    out.update({"camera": str(args.camera), "camera_size": list(camera.image_size),
                "max_disparity_px_at_camera": at_camera, "nearest_depth_m": near})
    print(f"depth range on {args.camera} ({camera.left.width}x{camera.left.height}, f B = "
          f"{camera.focal_px * camera.baseline_m:.4g} px m): from {near:.3g} m (a maximum disparity of {at_camera:.0f} px "
          "at the camera's width) to the node's max_depth; nearer surfaces come out too far or missing", file=sys.stderr)
    sidecar = read_sidecar(args.onnx) or {}
    write_sidecar(args.onnx, {**sidecar, "depth_range": out})
    return out


def _run(args: argparse.Namespace) -> int:
    _check_args(args)
    result: dict = {}
    if args.checkpoint:
        from m2s_export.onnx_export import export_onnx

        meta = export_onnx(args.checkpoint, args.onnx, args.height, args.width, iters=args.iters, opset=args.opset,
                           dynamic_batch=args.dynamic_batch, simplify=not args.no_simplify, verify=not args.no_verify,
                           tolerance=args.tolerance, fp16=not args.no_fp16_check, allow_fp16_drift=args.allow_fp16_drift,
                           calib_images=args.calib_images, calib_pairs=args.calib_pairs)
        result["onnx"] = {"path": args.onnx, "sidecar": args.onnx + ".json", **meta["export_report"]}
        result["onnx"].pop("op_types", None)
        result["depth_range"] = _depth_range(args, meta)
        if "fp16_check" in meta:
            check = meta["fp16_check"]
            result["fp16_check"] = {k: check[k] for k in ("mean_abs_diff_px", "p99_abs_diff_px", "max_abs_diff_px",
                                                          "nonfinite_fraction", "pairs", "passed")}
            result["fp32_nodes"] = len(meta["fp16"]["fp32_nodes"])
            print("fp16 check (" + ", ".join(check["pair_names"]) + f"): mean {check['mean_abs_diff_px']:.4f} px, "
                  f"p99 {check['p99_abs_diff_px']:.4f} px, max {check['max_abs_diff_px']:.4f} px, non-finite "
                  f"{check['nonfinite_fraction']:.2g}; {result['fp32_nodes']} nodes kept fp32", file=sys.stderr)
    if args.trt:
        from m2s_export.tensorrt_build import JETPACK_TRTEXEC, EngineOptions, build_engine

        options = EngineOptions(fp16=args.fp16, workspace_mb=args.workspace, timing_cache=args.timing_cache,
                                max_batch=args.max_batch)
        plan = fp32_plan(args.onnx, args) if args.fp16 else None
        try:
            import tensorrt

            version = tensorrt.__version__
        except ImportError:
            tensorrt = None
            version = args.assume_trt_version
        from m2s_export.tensorrt_build import check_supported_trt

        check_supported_trt(version)
        if args.dry_run:
            result["trtexec"] = dry_run_trtexec(args.onnx, args.engine, options, version, plan)
            print(f"trtexec command for TensorRT {version} (on JetPack: {JETPACK_TRTEXEC}):\n  {result['trtexec']}",
                  file=sys.stderr)
        else:
            result["engine"] = build_engine(args.onnx, args.engine, options, plan)
            result["trtexec"] = result["engine"]["trtexec"]
            print(f"trtexec command that builds the same engine (pins exactly the layers above):\n  {result['trtexec']}",
                  file=sys.stderr)
            from m2s_export.tensorrt_runtime import record_engine_check

            result["engine_check"] = record_engine_check(args.engine, args.onnx, args.calib_images, args.calib_pairs,
                                                         allow_drift=args.allow_fp16_drift)
            result["engine"].pop("fp16", None)
    print(dumps_json(result, indent=2, default=str))
    return 0


def dry_run_trtexec(onnx_path: str, engine_path: str, options, version: str, plan: dict | None) -> str:
    """The trtexec line for ``version`` without TensorRT at hand. Strongly typed versions (>= 10.12) build
    from the fp16 ONNX, written here beside the engine so that the line runs as printed; older ones pin
    the fp32 nodes' float layers by node name (the parser's first layer of each; a real build pins the
    helper layers too and records its exact line in the engine sidecar)."""
    from m2s_export.tensorrt_build import fp16_onnx_path, onnx_pinned_nodes, strongly_typed, trtexec_command

    dynamic = _dynamic_inputs(onnx_path)
    fp32_nodes = plan["fp32_nodes"] if plan else []
    if strongly_typed(version) and options.fp16:
        from m2s_export.fp16 import fp16_onnx

        source = fp16_onnx(onnx_path, fp16_onnx_path(engine_path), fp32_nodes)
        print(f"wrote {source} (fp16 ONNX, {len(fp32_nodes)} nodes kept fp32) for trtexec --stronglyTyped", file=sys.stderr)
        return trtexec_command(str(source), engine_path, options, version, [], dynamic)
    pinned = onnx_pinned_nodes(onnx_path, fp32_nodes) if options.fp16 else []
    if pinned:
        print(f"(a dry run pins {len(pinned)} float nodes by name; their helper layers need a real build, which "
              "records its exact line in the engine sidecar)", file=sys.stderr)
    return trtexec_command(onnx_path, engine_path, options, version, pinned, dynamic)


def _dynamic_inputs(onnx_path: str) -> dict[str, tuple[int, ...]] | None:
    """Input name -> shape without the batch, when the batch is dynamic (for trtexec's shape flags)."""
    import onnx

    graph = onnx.load(onnx_path, load_external_data=False).graph
    out = {}
    for i in graph.input:
        dims = i.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            out[i.name] = tuple(d.dim_value for d in dims[1:])
    return out or None


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="m2s-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="checkpoint directory (model.safetensors + model.json) to export")
    p.add_argument("--onnx", help="ONNX file to write (export) or to build the engine from (--trt)")
    p.add_argument("--overwrite", action="store_true",
                   help="export over an existing --onnx (and its sidecar); the old file stays until the new one is "
                        "complete. Without this flag an existing file is refused")
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
    p.add_argument("--no-fp16-check", action="store_true",
                   help="skip the FP16 analysis and fp16 check at export (--trt then runs the analysis on the target)")
    p.add_argument("--allow-fp16-drift", action="store_true",
                   help="build an FP16 engine (--trt) even if the fp16 check exceeded mean 0.05 px / p99 0.5 px / any "
                        "non-finite; the ONNX export itself only records the check's verdict (onnxruntime runs fp32)")
    p.add_argument("--camera", metavar="DIR",
                   help="calibration directory (left.yaml / right.yaml): state the nearest depth the export can measure "
                        "on that camera, in the output and the sidecar")
    p.add_argument("--calib-images", nargs=2, metavar=("LEFT_GLOB", "RIGHT_GLOB"),
                   help="your own rectified pairs (quoted globs, paired by the wildcard part) for the FP16 analysis "
                        "and check, beside Aloe and two texture pairs")
    p.add_argument("--trt", action="store_true", help="build a TensorRT engine from --onnx (on the target device)")
    p.add_argument("--engine", help="engine file to write (.engine)")
    p.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True,
                   help="FP16 engine with the export's fp32 set (precision regions, overflowing layers and their "
                        "consumers) kept in FP32 (default: on)")
    p.add_argument("--workspace", type=positive_int, default=2048, help="builder workspace, MiB (default 2048)")
    p.add_argument("--timing-cache", help="timing cache file to reuse and update")
    p.add_argument("--max-batch", type=positive_int, default=1, help="max batch of the profile for dynamic-batch ONNX")
    p.add_argument("--calib-pairs", type=positive_int, help="use at most N calibration pairs (default: all)")
    p.add_argument("--dry-run", action="store_true", help="with --trt: analysis and trtexec line only, no build")
    p.add_argument("--assume-trt-version", default="10.3.0",
                   help="TensorRT version for the printed trtexec line when TensorRT is absent (default: JetPack 6's 10.3)")
    add_common_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_command(_run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
