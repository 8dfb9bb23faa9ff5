"""FP16 safety for TensorRT: find activations that overflow half precision, and fp16 ONNX variants.

Torch-free: the analysis runs the fp32 ONNX through onnxruntime with every intermediate tensor
exposed as an output and reports tensors whose magnitude exceeds the fp16 maximum (65504).
Their producing nodes are kept in fp32: as TensorRT precision constraints (TensorRT 10) or as
the block list of the fp16 ONNX conversion (TensorRT 11's strongly typed networks).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from m2s_export.errors import ExportError

log = logging.getLogger(__name__)

FP16_MAX = 65504.0


def overflow_report(onnx_path: str | Path, inputs: list[dict[str, np.ndarray]], limit: float = FP16_MAX,
                    margin: float = 0.5) -> dict[str, Any]:
    """Per-node activation ranges on calibration ``inputs``; nodes above ``limit * margin`` are flagged.

    Returns ``{"flagged": [{"node", "op_type", "tensor", "max_abs"}...], "max_abs": float, "tensors": int}``.
    The margin (default 0.5) leaves head-room for inputs harder than the calibration set.
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # noqa: BLE001  (shape inference is best effort; outputs still get added)
        log.warning("shape inference failed (%s); analysing without types", exc)
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    typed = {vi.name: vi for vi in model.graph.value_info if vi.type.tensor_type.elem_type in float_types}
    existing = {o.name for o in model.graph.output}
    producers: dict[str, onnx.NodeProto] = {}
    for node in model.graph.node:
        for name in node.output:
            if name in typed and name not in existing:
                model.graph.output.append(typed[name])
                producers[name] = node
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    peaks = {n: 0.0 for n in names}
    for feed in inputs:
        for name, value in zip(names, session.run(names, feed)):
            arr = np.asarray(value)
            if arr.size and np.issubdtype(arr.dtype, np.floating):
                finite = arr[np.isfinite(arr)]
                if finite.size:
                    peaks[name] = max(peaks[name], float(np.abs(finite).max()))
    flagged = [{"node": producers[n].name, "op_type": producers[n].op_type, "tensor": n, "max_abs": v}
               for n, v in peaks.items() if n in producers and v > limit * margin]
    flagged.sort(key=lambda r: -r["max_abs"])
    return {"flagged": flagged, "max_abs": max(peaks.values(), default=0.0), "tensors": len(peaks),
            "limit": limit, "margin": margin}


def fp16_onnx(onnx_path: str | Path, out_path: str | Path, keep_fp32_nodes: list[str]) -> Path:
    """An fp16 copy of the model (inputs/outputs stay fp32) with ``keep_fp32_nodes`` left in fp32.

    For TensorRT >= 11, which builds strongly typed networks and has no FP16 builder flag.
    """
    import onnx

    try:
        from onnxconverter_common import float16
    except ImportError:
        raise ExportError("fp16 ONNX conversion needs onnxconverter-common: pip install onnxconverter-common") from None
    model = onnx.load(str(onnx_path))
    converted = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=list(keep_fp32_nodes))
    props = {p.key: p.value for p in model.metadata_props}
    props["precision"] = "fp16"
    props["fp32_nodes"] = ",".join(keep_fp32_nodes)
    del converted.metadata_props[:]
    for k, v in props.items():
        converted.metadata_props.add(key=k, value=v)
    onnx.save(converted, str(out_path))
    return Path(out_path)
