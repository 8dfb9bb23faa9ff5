"""Export a checkpoint to ONNX (fixed size, fixed iterations), simplify, check, verify with onnxruntime."""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from m2s_export.calibration import verification_pairs
from m2s_export.errors import ExportError
from m2s_export.metadata import FORMAT, INPUT_SPEC, sha256_file, to_onnx_props, write_sidecar

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE_PX = 0.01  # mean |d_onnx - d_torch| allowed in fp32


def _wrapper(model: Any, iters: int):
    import torch

    class Deployed(torch.nn.Module):
        """left, right (float32 NCHW in [0, 1]) -> disparity (B,1,H,W, px), confidence (B,1,H,W in [0, 1]):
        the deployed contract."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.model(left, right, iters=iters, final_only=True)
            return out.disparity, out.confidence

    return Deployed().eval()


OUTPUTS = ("disparity", "confidence")


def confidence_description(config: Any) -> str:
    """How the model's confidence output is made (for the metadata and the node's log)."""
    if getattr(config, "confidence_head", False):
        return ("learned: P(|d - d_gt| <= 3 px) from a head on detached cues (GEV distribution around the estimate, "
                "its peak and entropy, refinement motion, GRU state, disparity slope)")
    return "derived: probability mass of the geometry encoding volume within +-1 candidate (+-4 px) of the estimate"


def export_onnx(checkpoint: str | os.PathLike, out: str | os.PathLike, height: int, width: int, *,
                iters: int | None = None, opset: int = 17, dynamic_batch: bool = False, simplify: bool = True,
                verify: bool = True, tolerance: float = DEFAULT_TOLERANCE_PX, fp16: bool = True,
                allow_fp16_drift: bool = False, calib_images: tuple[str, str] | None = None,
                calib_pairs: int | None = None) -> dict[str, Any]:
    """Export, simplify, check, verify and decide FP16; returns the report (also in the sidecar ``OUT.onnx.json``).

    With ``fp16`` (default) the FP16 analysis runs here, on the workstation: the fp32 set
    (:func:`m2s_export.fp16.fp32_set`) is stored under ``fp16`` in the metadata and sidecar for
    ``m2s-export --trt`` on the target, and the fp16 check (:func:`m2s_export.fp16.fp16_check`) on
    the calibration pairs (Aloe, textures, ``calib_images``) is stored under ``fp16_check``.

    Raises :class:`ExportError` if the graph fails ``onnx.checker``, the onnxruntime output differs
    from PyTorch by more than ``tolerance`` px (mean absolute) on any verification pair, or the fp16
    check exceeds its thresholds (mean 0.05 px, p99 0.5 px, any non-finite pixel) without
    ``allow_fp16_drift``; nothing is written then.
    """
    import onnx
    import torch

    from m2s_train.models import load_model
    from m2s_train.models.published import read_card
    from m2s_train.models.registry import checkpoint_dir

    if opset < 17:
        raise ExportError(f"--opset must be >= 17 (grid/gather look-ups and LayerNorm-free ops are tested there), got {opset}")
    if height < 64 or width < 64:
        raise ExportError(f"--height/--width must be >= 64 px, got {height}x{width} "
                          "(other sizes are padded to a multiple of 32 inside the graph)")
    checkpoint = checkpoint_dir(checkpoint)  # before any work: a directory with model.safetensors + model.json
    out = Path(out)
    if out.suffix != ".onnx":
        raise ExportError(f"--onnx must name a .onnx file, got {out}")
    model = load_model(checkpoint).eval()
    iters = iters or model.config.valid_iters
    if iters < 1:
        raise ExportError(f"--iters must be >= 1, got {iters}")
    wrapper = _wrapper(model, iters)
    example = (torch.rand(1, 3, height, width), torch.rand(1, 3, height, width))
    out.parent.mkdir(parents=True, exist_ok=True)
    dynamic = {n: {0: "batch"} for n in ("left", "right", *OUTPUTS)} if dynamic_batch else None
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings on static shape checks; static export is intended
            torch.onnx.export(wrapper, example, str(raw), input_names=["left", "right"], output_names=list(OUTPUTS),
                              opset_version=opset, dynamic_axes=dynamic, do_constant_folding=True, dynamo=False)
        wrapper.eval()  # the exporter restores the wrapper's previous mode; keep inference mode for verification
        graph = onnx.load(str(raw))
        nodes_before = len(graph.graph.node)
        if simplify:
            try:
                import onnxslim

                graph = onnxslim.slim(graph)
            except ImportError:
                log.warning("onnxslim is not installed: exporting without simplification")
        try:
            onnx.checker.check_model(graph, full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"exported graph fails onnx.checker: {str(exc).splitlines()[0]}") from None
        cfg = model.config
        meta: dict[str, Any] = {
            "format": FORMAT, "model_name": model.model_name, "model_config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
            "input_height": height, "input_width": width, "input_spec": INPUT_SPEC, "iters": iters,
            "max_disp": cfg.max_disp, "opset": opset, "dynamic_batch": dynamic_batch,
            "checkpoint": str(checkpoint), "checkpoint_sha256": sha256_file(checkpoint / "model.safetensors"),
            "exported_by": f"mono2stereo {package_version()}", "versions": _versions(), "precision": "fp32", "outputs": list(OUTPUTS),
            "confidence": confidence_description(cfg),
        }
        card = read_card(checkpoint)
        if card is not None:  # weights from a published checkpoint: where from, under which licence
            meta["model_card"] = {k: card.get(k) for k in ("architecture", "trained_on", "licence", "attribution")}
            meta["model_card"]["source"] = {k: card.get("source", {}).get(k) for k in ("file", "sha256", "repository")}
        del graph.metadata_props[:]
        for key, value in to_onnx_props(meta).items():
            graph.metadata_props.add(key=key, value=value)
        final = Path(tmp) / "final.onnx"
        onnx.save(graph, str(final))
        report = {"nodes_raw": nodes_before, "nodes": len(graph.graph.node),
                  "op_types": sorted({n.op_type for n in graph.graph.node})}
        if verify:
            report["verification"] = verify_onnx(final, wrapper, height, width, tolerance)
        if fp16:
            meta.update(fp16_decision(final, height, width, calib_images, calib_pairs, allow_fp16_drift))
            for key in ("fp16", "fp16_check"):
                graph.metadata_props.add(key=key, value=to_onnx_props({key: meta[key]})[key])
            onnx.save(graph, str(final))
        os.replace(final, out)
    meta["export_report"] = report
    meta["onnx_sha256"] = sha256_file(out)  # the sidecar names the file it belongs to (checked_sidecar)
    write_sidecar(out, meta)
    return meta


def fp16_decision(onnx_path: Path, height: int, width: int, calib_images: tuple[str, str] | None = None,
                  calib_pairs: int | None = None, allow_drift: bool = False) -> dict[str, Any]:
    """``{"fp16": the fp32 set + analysis figures, "fp16_check": the drift figures}`` of an fp32 ONNX
    on the calibration pairs. Drift beyond the thresholds is recorded (``passed`` false, the ``problems``),
    not raised: the ONNX is right for onnxruntime, which runs fp32; :func:`check_fp16_verdict` refuses an FP16
    engine from it unless ``allow_drift``. Torch-free (``m2s-export --trt`` runs it for ONNX files exported
    without it)."""
    from m2s_export.calibration import calibration_feeds
    from m2s_export.fp16 import CONFIDENCE_THRESHOLDS, DEFAULT_THRESHOLDS, activation_peaks, drift_problems, fp16_check, fp32_set

    names, feeds = calibration_feeds(height, width, calib_images, calib_pairs)
    analysis = activation_peaks(onnx_path, feeds)
    pinned = fp32_set(onnx_path, analysis["peaks"])
    check = fp16_check(onnx_path, pinned["nodes"], feeds)
    check["pair_names"] = names
    problems = drift_problems(check, DEFAULT_THRESHOLDS)
    check["thresholds"] = DEFAULT_THRESHOLDS
    if "confidence" in check:
        check["confidence"]["thresholds"] = CONFIDENCE_THRESHOLDS
    check["passed"] = not problems
    log.info("fp16 check on %d pairs: mean %.4f px, p99 %.4f px, max %.4f px, non-finite %.2g (%d fp32 nodes)%s",
             check["pairs"], check["mean_abs_diff_px"], check["p99_abs_diff_px"], check["max_abs_diff_px"],
             check["nonfinite_fraction"], len(pinned["nodes"]),
             f"; confidence mean {check['confidence']['mean_abs_diff_px']:.4f}, max "
             f"{check['confidence']['max_abs_diff_px']:.4f}" if "confidence" in check else "")
    check["problems"] = problems
    check["drift_allowed"] = bool(problems and allow_drift)
    if problems:  # a verdict for TensorRT, not a reason to withhold an ONNX that onnxruntime runs in fp32
        log.warning("fp16 check failed (%s on %s): the ONNX is right for onnxruntime (fp32), but an FP16 TensorRT "
                    "engine would not match it; m2s-export --trt refuses FP16 from it %s", "; ".join(problems),
                    ", ".join(names), "(overridden: --allow-fp16-drift)" if allow_drift else
                    "unless --allow-fp16-drift (or build with --no-fp16)")
    fp16 = {"fp32_nodes": pinned["nodes"], "fp32_tensors": pinned["tensors"], "regions": pinned["regions"],
            "overflow": pinned["overflow"], "large_constants": pinned["large_constants"],
            "analysis": {k: analysis[k] for k in ("tensors", "seconds")} | {
                "pairs": len(feeds), "nonfinite_in_fp32": analysis["nonfinite"]}}
    return {"fp16": fp16, "fp16_check": check}


def check_fp16_verdict(check: dict[str, Any] | None, onnx_path: str | os.PathLike, allow_drift: bool) -> None:
    """Refuse an FP16 engine from an ONNX whose fp16 check failed, unless ``allow_drift`` (the failure,
    with its figures, is what the export recorded in the ONNX metadata and sidecar)."""
    if not check or check.get("passed", True) or allow_drift:
        return
    problems = "; ".join(check.get("problems") or []) or (
        f"mean {check.get('mean_abs_diff_px', float('nan')):.4f} px, p99 {check.get('p99_abs_diff_px', float('nan')):.4f} px")
    raise ExportError(f"the fp16 check of {onnx_path} failed at export ({problems}): an FP16 engine would not match the "
                      "fp32 model. Build with --no-fp16, or pass --allow-fp16-drift to build FP16 anyway")


CONFIDENCE_TOLERANCE = 1e-3  # mean |c_onnx - c_torch| allowed in fp32


def verify_onnx(path: Path, wrapper: Any, height: int, width: int, tolerance: float) -> list[dict[str, float]]:
    """onnxruntime (CPU, fp32) vs PyTorch on the verification pairs; raises above ``tolerance`` (px, mean
    |Δd|) or :data:`CONFIDENCE_TOLERANCE` (mean |Δconfidence|)."""
    import onnxruntime as ort
    import torch

    from calib.metrics import disparity_metrics
    from m2s_export.runtime import to_input

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rows = []
    for name, left, right in verification_pairs(height, width):
        a, b = to_input(left, None), to_input(right, None)
        got, got_conf = (o[0, 0] for o in session.run(list(OUTPUTS), {"left": a, "right": b}))
        with torch.inference_mode():
            ref, ref_conf = (o[0, 0].numpy() for o in wrapper(torch.from_numpy(a), torch.from_numpy(b)))
        diff = np.abs(got - ref)
        conf_diff = np.abs(got_conf - ref_conf)
        epe = disparity_metrics(got, np.where(ref > 0, ref, np.nan))["epe"]
        row = {"pair": name, "max_abs_px": float(diff.max()), "mean_abs_px": float(diff.mean()), "epe_vs_torch": float(epe),
               "confidence_max_abs": float(conf_diff.max()), "confidence_mean_abs": float(conf_diff.mean())}
        rows.append(row)
        if not row["mean_abs_px"] <= tolerance:
            raise ExportError(f"onnxruntime output differs from PyTorch on '{name}': mean |Δd| = {row['mean_abs_px']:.4g} px "
                              f"(max {row['max_abs_px']:.4g}) > tolerance {tolerance} px; the ONNX file was not written")
        if not row["confidence_mean_abs"] <= CONFIDENCE_TOLERANCE:
            raise ExportError(f"onnxruntime confidence differs from PyTorch on '{name}': mean |Δc| = "
                              f"{row['confidence_mean_abs']:.4g} (max {row['confidence_max_abs']:.4g}) > "
                              f"{CONFIDENCE_TOLERANCE}; the ONNX file was not written")
    return rows


def package_version() -> str:
    from calib.version import version

    return version()


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "onnx", "onnxslim", "onnxruntime", "mono2stereo"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "absent"
    return out
