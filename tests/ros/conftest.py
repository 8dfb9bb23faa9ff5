"""Shared fixtures of the ROS tests: a stereo model every leg can run, and DDS isolation.

``stereo_onnx`` is igev-tiny exported through the real exporter where torch is installed; on
the robot-side and Jazzy legs (no torch) it is a small hand-built ONNX graph (a cost-volume
argmin over 16 shifts) with the same I/O and metadata, run by the same onnxruntime runtime: the
node's code path is identical, only the network differs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # rosgraph.py: helpers the graph tests share

if os.environ.get("ROS_DISTRO") == "humble":  # Humble knows only ROS_LOCALHOST_ONLY
    os.environ.setdefault("ROS_LOCALHOST_ONLY", "1")


def _hand_built_onnx(path: Path, height: int, width: int, shifts: int = 16) -> None:
    """left/right (1,3,H,W) -> disparity (1,1,H,W): per pixel the shift d in 0..shifts-1 with the
    smallest |left(x) - right(x - d)| (summed over channels), plus 1 (so every pixel is valid)."""
    import onnx
    from onnx import helper as h
    from onnx import numpy_helper

    from m2s_export.metadata import FORMAT, INPUT_SPEC, to_onnx_props

    nodes, costs = [], []
    for d in range(shifts):
        pads = numpy_helper.from_array(np.array([0, 0, 0, d, 0, 0, 0, 0], np.int64), f"pads{d}")
        nodes += [h.make_node("Pad", ["right", f"pads{d}"], [f"rp{d}"], mode="edge"),
                  h.make_node("Slice", [f"rp{d}", "zero", "wend", "three"], [f"rs{d}"]),
                  h.make_node("Sub", ["left", f"rs{d}"], [f"df{d}"]), h.make_node("Abs", [f"df{d}"], [f"ad{d}"]),
                  h.make_node("ReduceSum", [f"ad{d}", "one"], [f"c{d}"], keepdims=1)]
        costs.append((f"c{d}", pads))
    nodes += [h.make_node("Concat", [c for c, _ in costs], ["cost"], axis=1),
              h.make_node("ArgMin", ["cost"], ["arg"], axis=1, keepdims=1),
              h.make_node("Cast", ["arg"], ["argf"], to=onnx.TensorProto.FLOAT),
              h.make_node("Add", ["argf", "onef"], ["disparity"])]
    inits = [p for _, p in costs] + [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
                                     (("zero", [0]), ("wend", [width]), ("three", [3]), ("one", [1]))]
    inits.append(numpy_helper.from_array(np.array(1.0, np.float32), "onef"))
    shape = [1, 3, height, width]
    graph = h.make_graph(nodes, "toy_stereo", [h.make_tensor_value_info("left", onnx.TensorProto.FLOAT, shape),
                                               h.make_tensor_value_info("right", onnx.TensorProto.FLOAT, shape)],
                         [h.make_tensor_value_info("disparity", onnx.TensorProto.FLOAT, [1, 1, height, width])], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    meta = {"format": FORMAT, "model_name": "toy-argmin", "input_height": height, "input_width": width,
            "input_spec": INPUT_SPEC, "iters": 0, "max_disp": shifts, "precision": "fp32"}
    for k, v in to_onnx_props(meta).items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture(scope="session")
def stereo_onnx(tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime")
    root = tmp_path_factory.mktemp("stereo_model")
    try:
        import torch

        from m2s_export.onnx_export import export_onnx
        from m2s_train.models import create_model, save_model
    except ImportError:
        _hand_built_onnx(root / "toy.onnx", 96, 128)
        return root / "toy.onnx"
    torch.manual_seed(0)
    save_model(create_model("igev-tiny"), root / "ckpt")
    export_onnx(root / "ckpt", root / "tiny.onnx", 96, 128, verify=False, fp16=False)
    return root / "tiny.onnx"
