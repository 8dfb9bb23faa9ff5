"""FP16 decisions on small hand-built graphs and the TensorRT build/runtime logic with fakes. Torch-free
(the robot-side CI leg runs it on Python 3.10 with numpy 1.26); the real network is covered in
test_export_runtime.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import helper as h  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from m2s_export.errors import ExportError, RuntimeBackendError  # noqa: E402
from m2s_export.fp16 import (  # noqa: E402
    activation_peaks,
    disparity_drift,
    fp16_check,
    fp16_emulation,
    fp32_set,
    overflow_report,
    region_nodes,
    to_fp16_onnx,
)
from m2s_export.runtime import onnx_providers  # noqa: E402
from m2s_export.tensorrt_build import (  # noqa: E402
    EngineOptions,
    PinnedLayer,
    build_engine,
    load_timing_cache,
    pin_fp32_layers,
    save_timing_cache,
    trtexec_command,
)
from m2s_export.tensorrt_runtime import cuda_check, io_spec  # noqa: E402

F = onnx.TensorProto.FLOAT


def _model(nodes, inits, out="y", shape=(1, 4)):
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", F, list(shape))],
                         [h.make_tensor_value_info(out, F, list(shape))], initializer=inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)  # onnxruntime >= 1.16 reads IR 8


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _run(model, x, out="y", optimise=True):
    so = ort.SessionOptions()
    if not optimise:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run([out], {"x": x})[0]


def overflow_model():
    """x * 1e5 -> relu -> / 1e5: fine in fp32, inf wherever fp16 holds the intermediate."""
    return _model([h.make_node("Mul", ["x", "s"], ["big"], name="blow_up"), h.make_node("Relu", ["big"], ["r"], name="relu"),
                   h.make_node("Div", ["r", "s"], ["y"], name="back")], [_const("s", [1e5])])


class TestOverflowPinning:
    def test_producer_and_every_consumer_of_an_overflowing_tensor_stay_fp32(self):
        model = overflow_model()
        x = np.ones((1, 4), np.float32)
        report = overflow_report(model, [{"x": x}])
        assert [r["node"] for r in report["flagged"]] == ["blow_up", "relu"]
        pinned = fp32_set(model, activation_peaks(model, [{"x": x}])["peaks"])
        assert pinned["nodes"] == ["back", "blow_up", "relu"]  # before: the consumer 'back' read fp16 again
        assert pinned["tensors"] == ["big", "r", "y"]
        assert not np.isfinite(_run(fp16_emulation(model, ["blow_up", "relu"]), x, "y", optimise=False)).all()
        np.testing.assert_allclose(_run(fp16_emulation(model, pinned["nodes"]), x, "y", optimise=False), 1.0)

    def test_large_initializer_pins_its_consumer_and_is_never_clipped(self):
        model = _model([h.make_node("Add", ["x", "c"], ["a"], name="add_big"), h.make_node("Sub", ["a", "c"], ["y"], name="sub")],
                       [_const("c", [1e5])])
        pinned = fp32_set(model, {})
        assert pinned["large_constants"] == ["c"] and pinned["nodes"] == ["add_big", "sub"]
        converted = to_fp16_onnx(model, pinned["nodes"])
        value = {i.name: numpy_helper.to_array(i) for i in converted.graph.initializer}["c"]
        assert value.dtype == np.float32 and value[0] == 1e5  # onnxconverter-common clipped it to 1e4
        with pytest.raises(ExportError, match="exceeds the fp16 range"):
            to_fp16_onnx(model, [])

    def test_analysis_returns_only_scalars_and_finds_nonfinite_tensors(self):
        from m2s_export.fp16 import peak_probe

        nodes = [h.make_node("Relu", ["x" if i == 0 else f"t{i - 1}"], [f"t{i}"], name=f"r{i}") for i in range(5)]
        nodes.append(h.make_node("Log", ["t4"], ["y"], name="log"))  # log(0) = -inf where relu clipped
        model = _model(nodes, [], shape=(1, 64, 64))
        probe, names = peak_probe(model)
        assert names == ["t0", "t1", "t2", "t3", "t4", "y"]
        assert all(not o.type.tensor_type.shape.dim for o in probe.graph.output[1:])  # scalars only: no activation kept
        x = np.random.default_rng(0).standard_normal((1, 64, 64)).astype(np.float32)
        result = activation_peaks(model, [{"x": x}, {"x": 2 * x}])
        assert result["peaks"]["t4"] == pytest.approx(2 * float(x.max()))
        assert result["nonfinite"] == ["y"] and np.isfinite(result["peaks"]["y"])  # the finite maximum


class TestPrecisionRegions:
    def _shifted(self):
        """(x + 150) then - 150 + 0.3 inside a named region: in fp16 150.3 has a spacing of 1/8."""
        nodes = [h.make_node("Add", ["x", "c"], ["a"], name="/model/lookup_coords_2/Add"),
                 h.make_node("Sub", ["a", "c"], ["b"], name="/model/lookup_coords_2/Sub"),
                 h.make_node("Mul", ["b", "two"], ["y"], name="/model/head/Mul")]
        return _model(nodes, [_const("c", [150.0]), _const("two", [2.0])])

    def test_region_nodes_are_found_by_scope_and_kept_exact(self):
        model = self._shifted()
        assert region_nodes(model) == ["/model/lookup_coords_2/Add", "/model/lookup_coords_2/Sub"]
        assert fp32_set(model, {})["nodes"] == region_nodes(model)
        x = np.full((1, 4), 0.3, np.float32)
        pinned = _run(fp16_emulation(model, region_nodes(model)), x, optimise=False)
        everything = _run(fp16_emulation(model, []), x, optimise=False)
        np.testing.assert_allclose(pinned, 0.6, rtol=1e-3)  # only the final Mul's fp16 rounding of 0.6
        assert abs(float(everything[0, 0]) - 0.6) > 0.05  # fp16 everywhere: 150.3 -> 150.25, the fraction lost
        drift = fp16_check(model, region_nodes(model), [{"x": x}], output="y")
        assert drift["max_abs_diff_px"] < 1e-3 and drift["nonfinite_fraction"] == 0.0

    def test_what_an_fp16_node_writes_for_an_fp32_node_is_rounded(self):
        """The engine stores an fp16 layer's output in fp16 even when only fp32 layers read it: x / 3 made
        in fp16 (0.33325) and scaled by 3000 in fp32 is 999.75, not 1000. The check must see that border
        (it used to pass the fp32 value through: 0 drift, an optimistic check)."""
        nodes = [h.make_node("Div", ["x", "three"], ["third"], name="/model/head/Div"),
                 h.make_node("Mul", ["third", "k"], ["y"], name="/model/softargmin/Mul")]
        model = _model(nodes, [_const("three", [3.0]), _const("k", [3000.0])])
        x = np.ones((1, 4), np.float32)
        emulated = _run(fp16_emulation(model, ["/model/softargmin/Mul"]), x, optimise=False)
        np.testing.assert_allclose(emulated, 3000 * np.float32(np.float16(1 / 3)), rtol=1e-6)
        drift = fp16_check(model, ["/model/softargmin/Mul"], [{"x": x}], output="y")
        assert drift["mean_abs_diff_px"] == pytest.approx(0.244, abs=0.01)

    def test_unrelated_names_are_not_regions(self):
        nodes = [h.make_node("Relu", ["x"], ["y"], name="/model/lookup_coordsX/Relu")]
        assert region_nodes(_model(nodes, [])) == []


class TestFp16Onnx:
    def test_shared_initializer_gets_one_copy_per_precision_and_the_model_runs(self):
        nodes = [h.make_node("Mul", ["x", "w"], ["a"], name="low"),
                 h.make_node("Add", ["a", "w"], ["b"], name="/model/disp_update/Add"),
                 h.make_node("Resize", ["b", "", "scales"], ["c"], name="resize", mode="nearest"),
                 h.make_node("Mul", ["c", "w"], ["y"], name="low2")]
        graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", F, [1, 1, 2, 2])],
                             [h.make_tensor_value_info("y", F, [1, 1, 4, 4])],
                             initializer=[_const("w", [0.5]), _const("scales", [1, 1, 2, 2])],
                             value_info=[h.make_tensor_value_info("a", F, [1, 1, 2, 2])])  # stale after conversion
        model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
        converted = to_fp16_onnx(model, ["/model/disp_update/Add"])
        onnx.checker.check_model(converted, full_check=True)
        inits = {i.name: i.data_type for i in converted.graph.initializer}
        assert inits == {"w": F, "w__fp16": onnx.TensorProto.FLOAT16, "scales": F}  # Resize scales stay float32
        assert converted.graph.input[0].type.tensor_type.elem_type == F
        assert converted.graph.output[0].type.tensor_type.elem_type == F
        x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
        got = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, ref, rtol=1e-3)

    def test_drift_figures(self):
        ref = [np.array([[1.0, 2.0, np.nan]]), np.array([[3.0, 4.0, 5.0]])]
        got = [np.array([[1.5, 2.0, 7.0]]), np.array([[3.0, np.inf, 5.25]])]
        d = disparity_drift(ref, got)
        assert d["pairs"] == 2 and d["nonfinite_fraction"] == pytest.approx(1 / 5)
        assert d["mean_abs_diff_px"] == pytest.approx((0.5 + 0 + 0 + 0.25) / 4) and d["max_abs_diff_px"] == 0.5


# -- TensorRT logic against small fakes of the TensorRT / cuda-python objects ------------------------------

class FakeTensor(SimpleNamespace):
    pass


class FakeLayer:
    """Follows ILayer: name, metadata (onnx-tensorrt's "[ONNX Layer: <node>]"), typed inputs and outputs."""

    def __init__(self, name, outputs, dtype="float", inputs=(), input_dtype="float", metadata=""):
        self.name = name
        self.metadata = metadata
        self._outputs = [FakeTensor(name=o, dtype=dtype) for o in outputs]
        self._inputs = [FakeTensor(name=i, dtype=input_dtype) for i in inputs]
        self.num_outputs = len(outputs)
        self.num_inputs = len(self._inputs)
        self.precision = None
        self.output_types = {}

    def get_output(self, j):
        return self._outputs[j]

    def get_input(self, j):
        return self._inputs[j]

    def set_output_type(self, j, dtype):
        self.output_types[j] = dtype


class FakeNetwork:
    def __init__(self, layers, inputs=()):
        self.layers = layers
        self.num_layers = len(layers)
        self.inputs = list(inputs)
        self.num_inputs = len(self.inputs)

    def get_layer(self, i):
        return self.layers[i]

    def get_input(self, i):
        return self.inputs[i]


FAKE_TRT_TYPES = SimpleNamespace(float32="float", float16="half")


class TestTensorRTBuildLogic:
    def test_layers_are_matched_by_output_tensor_not_by_name_prefix(self):
        layers = [FakeLayer("/model/Sub", ["/model/Sub_output_0"])] + [
            FakeLayer(f"/model/Sub_{i}", [f"/model/Sub_{i}_output_0"]) for i in range(1, 56)] + [
            FakeLayer("/model/Cast", ["idx"], dtype="int64", inputs=["pos"])]
        kept = pin_fp32_layers(FakeNetwork(layers), FAKE_TRT_TYPES, {"/model/Sub_output_0", "idx"}, set())
        assert [k.name for k in kept] == ["/model/Sub", "/model/Cast"]  # before: /model/Sub pinned all 56 /model/Sub_*
        assert layers[0].precision == "float" and layers[0].output_types == {0: "float"}
        assert layers[-1].precision == "float" and layers[-1].output_types == {}  # float in, int64 index out: kept
        assert kept[-1].float_outputs is False  # ... and left out of trtexec's --layerOutputTypes
        assert layers[1].precision is None

    def test_int_and_bool_only_layers_are_never_pinned(self):
        """trtexec's own rule: a precision on a layer with no float input or output is ignored at best, and
        under OBEY it warns or fails (Equal of indices, And of masks, an int64 Expand)."""
        layers = [FakeLayer("/model/lookup_coords/Equal", ["eq"], dtype="bool", inputs=["i0", "i1"], input_dtype="int64"),
                  FakeLayer("/model/lookup_coords/And", ["both"], dtype="bool", inputs=["eq", "m"], input_dtype="bool"),
                  FakeLayer("/model/lookup_coords/Floor", ["fl"], inputs=["p"])]
        names = {"/model/lookup_coords/Equal", "/model/lookup_coords/And", "/model/lookup_coords/Floor"}
        kept = pin_fp32_layers(FakeNetwork(layers), FAKE_TRT_TYPES, set(), names)
        assert [k.name for k in kept] == ["/model/lookup_coords/Floor"]
        assert layers[0].precision is None and layers[1].precision is None and layers[0].output_types == {}

    def test_every_layer_of_a_pinned_node_is_pinned_by_its_metadata(self):
        """onnx-tensorrt tags every layer it makes for a node with "[ONNX Layer: <node>]" and names the second
        one "<node>_<global counter>": matching names or output tensors misses such helper layers."""
        node = "/model/upsample_combine/ReduceSum"
        layers = [FakeLayer("/model/upsample_combine/ReduceSum_17", ["helper_out"], inputs=["x"],
                            metadata=f"[ONNX Layer: {node}]"),
                  FakeLayer(node, ["/model/upsample_combine/ReduceSum_output_0"], inputs=["helper_out"],
                            metadata=f"[ONNX Layer: {node} | Local Function: f]"),
                  FakeLayer("/model/head/Conv", ["h"], inputs=["x"], metadata="[ONNX Layer: /model/head/Conv]")]
        kept = pin_fp32_layers(FakeNetwork(layers), FAKE_TRT_TYPES, set(), {node})
        assert [k.name for k in kept] == ["/model/upsample_combine/ReduceSum_17", node]  # before: the helper was fp16
        assert layers[2].precision is None

    def test_helpers_without_metadata_are_pinned_by_the_tensor_they_feed(self):
        """#36 item 5: onnx-tensorrt makes broadcast shuffles, cast helpers and constants with node=nullptr (no
        metadata); one feeding a pinned layer stayed fp16 and handed it an fp16 value."""
        node = "/model/candidate_softmax/Softmax"
        layers = [FakeLayer("(Unnamed Layer* 12) [Constant]", ["c12"]),  # a constant, through a shuffle, into the node
                  FakeLayer("(Unnamed Layer* 13) [Shuffle]", ["s13"], inputs=["c12"]),
                  FakeLayer(node, ["p"], inputs=["logits", "s13"], metadata=f"[ONNX Layer: {node}]"),
                  FakeLayer("(Unnamed Layer* 20) [Shuffle]", ["s20"], inputs=["h"]),  # feeds an fp16 layer only
                  FakeLayer("/model/head/Conv", ["y"], inputs=["s20"], metadata="[ONNX Layer: /model/head/Conv]")]
        kept = pin_fp32_layers(FakeNetwork(layers), FAKE_TRT_TYPES, set(), {node})
        assert [k.name for k in kept] == ["(Unnamed Layer* 12) [Constant]", "(Unnamed Layer* 13) [Shuffle]", node]
        assert layers[1].output_types == {0: "float"} and layers[3].precision is None and layers[4].precision is None

    def test_timing_cache_mismatch_and_missing_cache(self, tmp_path, caplog):
        calls = []

        class Config:
            def __init__(self, accept):
                self.accept = list(accept)

            def create_timing_cache(self, data):
                calls.append(data)
                return ("cache", data)

            def set_timing_cache(self, cache, ignore_mismatch):
                return self.accept.pop(0)

            def get_timing_cache(self):
                return None

        path = tmp_path / "tc.bin"
        path.write_bytes(b"from another GPU")
        load_timing_cache(Config([False, True]), path)  # before: the False was ignored
        assert calls == [b"from another GPU", b""] and "another TensorRT version or GPU" in caplog.text
        assert save_timing_cache(Config([]), path) is False  # before: .serialize() on None after the build
        assert path.read_bytes() == b"from another GPU"

    def test_build_parses_the_model_file_and_profiles_batch_one(self, tmp_path):
        """The build's calls into TensorRT, recorded by a fake (TensorRT itself cannot run here)."""
        log, trt, onnx_path = fake_tensorrt(tmp_path, "10.3.0")
        meta = build_engine(onnx_path, tmp_path / "m.engine", EngineOptions(timing_cache=str(tmp_path / "tc.bin"), max_batch=4),
                            {"fp32_nodes": ["/model/disp_update/Add"], "fp32_tensors": ["d"]}, trt=trt)
        assert log["parse_path"] == str(onnx_path)  # before: the directory
        assert log["shapes"]["left"] == ((1, 3, 64, 96), (1, 3, 64, 96), (4, 3, 64, 96))  # before: opt = max
        assert log["flags"] == ["FP16", "OBEY"] and meta["fp32_layers"] == ["/model/disp_update/Add"]
        assert (tmp_path / "m.engine").read_bytes() == b"engine bytes" and (tmp_path / "tc.bin").read_bytes() == b"cache"
        import hashlib

        assert meta["engine_sha256"] == hashlib.sha256(b"engine bytes").hexdigest()
        assert meta["onnx_sha256"] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
        # the line in the sidecar pins what the build pinned, with the shapes of the dynamic batch
        line = meta["trtexec"]
        assert "--layerPrecisions=/model/disp_update/Add:fp32" in line and "--layerOutputTypes=/model/disp_update/Add:fp32" in line
        assert "--minShapes=left:1x3x64x96,right:1x3x64x96" in line and "--maxShapes=left:4x3x64x96" in line
        with pytest.raises(ExportError, match="needs the fp32 set"):
            build_engine(onnx_path, tmp_path / "n.engine", EngineOptions(), None, trt=trt)

    @pytest.mark.parametrize("version", ["10.12.0", "11.0.1"])
    def test_tensorrt_10_12_and_later_build_the_fp16_onnx_strongly_typed(self, tmp_path, version):
        """10.12 deprecates BuilderFlag.FP16 / OBEY (11 removes them): one strongly typed path for both."""
        log, trt, onnx_path = fake_tensorrt(tmp_path, version)
        meta = build_engine(onnx_path, tmp_path / "m.engine", EngineOptions(),
                            {"fp32_nodes": ["blow_up", "back"], "fp32_tensors": ["big", "y"]}, trt=trt)
        assert log["network_flags"] == 1 << 1 and "flags" not in log  # STRONGLY_TYPED, no FP16 / OBEY
        assert log["parse_path"] == str(tmp_path / "m.fp16.onnx") and meta["strongly_typed"] is True
        assert "--onnx=" + str(tmp_path / "m.fp16.onnx") in meta["trtexec"] and "--stronglyTyped" in meta["trtexec"]
        assert "--fp16" not in meta["trtexec"]

    def test_trtexec_line_matches_the_python_build(self):
        opts = EngineOptions(fp16=True, workspace_mb=1024, timing_cache="tc.bin", max_batch=2)
        pinned = [PinnedLayer("/a/Add", True), PinnedLayer("/a/Add_12", True), PinnedLayer("/b/Cast", False)]
        line = trtexec_command("m.onnx", "m.engine", opts, "10.3.0", pinned, {"left": (3, 480, 640), "right": (3, 480, 640)})
        assert "--fp16 --precisionConstraints=obey" in line
        assert "--layerPrecisions=/a/Add:fp32,/a/Add_12:fp32,/b/Cast:fp32" in line
        assert "--layerOutputTypes=/a/Add:fp32,/a/Add_12:fp32 " in line  # not the float -> int64 Cast: it types every output
        assert "--minShapes=left:1x3x480x640,right:1x3x480x640" in line and "--optShapes=left:1x3x480x640" in line
        assert "--maxShapes=left:2x3x480x640,right:2x3x480x640" in line
        for version in ("10.12.0", "11.0.1"):
            typed = trtexec_command("m.fp16.onnx", "m.engine", opts, version, pinned)
            assert "--stronglyTyped" in typed and "--fp16" not in typed and "layerPrecisions" not in typed
        assert "'--onnx=my model.onnx'" in trtexec_command("my model.onnx", "m.engine", opts, "10.3.0")  # shell-quoted

    def test_dry_run_line_names_float_nodes_only_and_writes_the_fp16_onnx_for_typed_versions(self, tmp_path, capsys):
        from m2s_export.cli import dry_run_trtexec

        nodes = [h.make_node("Floor", ["x"], ["fl"], name="/model/lookup_coords/Floor"),
                 h.make_node("Cast", ["fl"], ["idx"], to=onnx.TensorProto.INT64, name="/model/lookup_coords/Cast"),
                 h.make_node("Equal", ["idx", "idx"], ["eq"], name="/model/lookup_coords/Equal"),
                 h.make_node("Cast", ["eq"], ["eqf"], to=F, name="/model/lookup_coords/Cast_1"),
                 h.make_node("Add", ["fl", "eqf"], ["y"], name="/model/head/Add")]
        path = tmp_path / "m.onnx"
        onnx.save(_model(nodes, []), str(path))
        plan = {"fp32_nodes": [n.name for n in nodes[:4]]}
        line = dry_run_trtexec(str(path), str(tmp_path / "m.engine"), EngineOptions(), "10.3.0", plan)
        assert "--layerPrecisions=/model/lookup_coords/Floor:fp32,/model/lookup_coords/Cast:fp32," \
               "/model/lookup_coords/Cast_1:fp32" in line  # not the int64 -> bool Equal
        assert "--layerOutputTypes=/model/lookup_coords/Floor:fp32,/model/lookup_coords/Cast_1:fp32" in line
        typed = dry_run_trtexec(str(path), str(tmp_path / "m.engine"), EngineOptions(), "10.12.0", plan)
        assert f"--onnx={tmp_path / 'm.fp16.onnx'}" in typed and (tmp_path / "m.fp16.onnx").is_file()


def fake_tensorrt(tmp_path, version):
    """A fake of the TensorRT module (its classes, flags and calls as TensorRT 10 has them) that records what
    the build asks of it; returns (log, module, an ONNX file to build from)."""
    log = {}

    class Parser:
        def __init__(self, network, logger):
            pass

        def parse(self, data, path):
            log["parse_path"] = path
            return True

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            log.setdefault("shapes", {})[name] = (lo, opt, hi)

    class Config:
        def set_memory_pool_limit(self, *a):
            pass

        def set_flag(self, flag):
            log.setdefault("flags", []).append(flag)

        def add_optimization_profile(self, p):
            pass

        def create_timing_cache(self, data):
            return data

        def set_timing_cache(self, cache, ignore_mismatch):
            return True

        def get_timing_cache(self):
            return SimpleNamespace(serialize=lambda: b"cache")

    network = FakeNetwork([FakeLayer("/model/disp_update/Add", ["d"]), FakeLayer("conv", ["c"])],
                          inputs=[FakeTensor(name="left", shape=(-1, 3, 64, 96)), FakeTensor(name="right", shape=(-1, 3, 64, 96))])

    class Builder:
        platform_has_fast_fp16 = True

        def __init__(self, logger):
            pass

        def create_network(self, flags):
            log["network_flags"] = flags
            return network

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, net, config):
            return b"engine bytes"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    trt = SimpleNamespace(__version__=version, Logger=Logger, Builder=Builder, OnnxParser=Parser,
                          NetworkDefinitionCreationFlag=SimpleNamespace(EXPLICIT_BATCH=0, STRONGLY_TYPED=1),
                          MemoryPoolType=SimpleNamespace(WORKSPACE=0),
                          BuilderFlag=SimpleNamespace(FP16="FP16", OBEY_PRECISION_CONSTRAINTS="OBEY"),
                          float32="float", float16="half")
    onnx_path = tmp_path / "m.onnx"
    onnx.save(overflow_model(), str(onnx_path))
    return log, trt, onnx_path


class FakeEngine:
    def __init__(self, tensors):
        self.tensors = tensors
        self.num_io_tensors = len(tensors)

    def get_tensor_name(self, i):
        return list(self.tensors)[i]

    def get_tensor_dtype(self, name):
        return SimpleNamespace(name=self.tensors[name][1])

    def get_tensor_shape(self, name):
        return self.tensors[name][0]


class TestTensorRTRuntimeLogic:
    def test_io_is_read_from_the_engine(self):
        spec = io_spec(FakeEngine({"left": ((-1, 3, 48, 64), "HALF"), "right": ((-1, 3, 48, 64), "HALF"),
                                   "disparity": ((-1, 1, 48, 64), "FLOAT")}), None, "e")
        assert spec == {"left": ((1, 3, 48, 64), np.float16), "right": ((1, 3, 48, 64), np.float16),
                        "disparity": ((1, 1, 48, 64), np.float32)}
        with pytest.raises(RuntimeBackendError, match="'disparity' is INT64"):
            io_spec(FakeEngine({"left": ((1, 3, 4, 4), "FLOAT"), "right": ((1, 3, 4, 4), "FLOAT"),
                                "disparity": ((1, 1, 4, 4), "INT64")}), None, "e")
        with pytest.raises(RuntimeBackendError, match="missing right"):
            io_spec(FakeEngine({"left": ((1, 3, 4, 4), "FLOAT"), "disparity": ((1, 1, 4, 4), "FLOAT")}), None, "e")
        with pytest.raises(RuntimeBackendError, match=r"shape \(2, 3, 4, 4\)"):
            io_spec(FakeEngine({"left": ((2, 3, 4, 4), "FLOAT"), "right": ((2, 3, 4, 4), "FLOAT"),
                                "disparity": ((2, 1, 4, 4), "FLOAT")}), None, "e")

    def test_cuda_errors_are_named(self):
        cudart = SimpleNamespace(cudaGetErrorName=lambda err: (0, b"cudaErrorInsufficientDriver"))
        assert cuda_check(cudart, (0, 1234), "cudaMalloc") == 1234
        with pytest.raises(RuntimeBackendError, match=r"cudaErrorInsufficientDriver \(35\) in cudaMalloc.*cuda-python < 13"):
            cuda_check(cudart, (35, None), "cudaMalloc")


class FakeCudart:
    """cuda-python's runtime module as the TensorRT runtime uses it, recording every call. Host memory is
    real (ctypes buffers: the runtime views it as numpy arrays); device pointers are numbers."""

    cudaHostAllocMapped = 2
    cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def __init__(self, integrated=False, cc=(8, 7)):
        self.calls, self.buffers, self.props = [], {}, SimpleNamespace(major=cc[0], minor=cc[1], integrated=int(integrated),
                                                                         name=b"Orin")
        self.next_device = 0x10000

    def _host(self, n):
        import ctypes

        buf = (ctypes.c_uint8 * n)()
        self.buffers[ctypes.addressof(buf)] = buf
        return ctypes.addressof(buf)

    def __getattr__(self, name):  # any other call: recorded, succeeds
        def call(*args):
            self.calls.append((name, args))
            return (0,)
        return call

    def cudaGetDevice(self):
        return 0, 0

    def cudaGetDeviceProperties(self, device):
        return 0, self.props

    def cudaStreamCreate(self):
        self.calls.append(("cudaStreamCreate", ()))
        return 0, 7  # a cudaStream_t (the runtime passes int(stream) to TensorRT)

    def cudaMallocHost(self, n):
        self.calls.append(("cudaMallocHost", (n,)))
        return 0, self._host(n)

    def cudaHostAlloc(self, n, flags):
        self.calls.append(("cudaHostAlloc", (n, flags)))
        return 0, self._host(n)

    def cudaHostGetDevicePointer(self, ptr, flags):
        return 0, ptr

    def cudaMalloc(self, n):
        self.calls.append(("cudaMalloc", (n,)))
        self.next_device += n
        return 0, self.next_device

    def names(self, name):
        return [c for c in self.calls if c[0] == name]


def fake_engine_runtime(monkeypatch, tmp_path, cudart, sidecar=None):
    """A TensorRTRuntime over a fake TensorRT module and ``cudart``: the real class, its buffers and calls."""
    import sys

    import m2s_export.tensorrt_runtime as rt

    engine = FakeEngine({"left": ((1, 3, 48, 64), "FLOAT"), "right": ((1, 3, 48, 64), "FLOAT"),
                         "disparity": ((1, 1, 48, 64), "FLOAT"), "confidence": ((1, 1, 48, 64), "FLOAT")})
    context = SimpleNamespace(set_input_shape=lambda *a: None, set_tensor_address=lambda *a: None,
                              execute_async_v3=lambda stream: True)
    engine.create_execution_context = lambda: context

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return engine

    trt = SimpleNamespace(__version__="10.3.0", Logger=lambda level: None, Runtime=Runtime)
    trt.Logger.WARNING = 2
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(rt, "_cudart", lambda: cudart)
    path = tmp_path / "m.engine"
    path.write_bytes(b"engine")
    if sidecar is not None:
        from m2s_export.metadata import write_sidecar

        write_sidecar(path, sidecar)
    return rt.TensorRTRuntime(path)


class TestTensorRTRuntimeMemory:
    def test_discrete_gpu_uses_pinned_host_memory_and_close_releases_everything(self, monkeypatch, tmp_path):
        cudart = FakeCudart(integrated=False)
        runtime = fake_engine_runtime(monkeypatch, tmp_path, cudart)
        assert len(cudart.names("cudaMallocHost")) == 4 and len(cudart.names("cudaMalloc")) == 4  # pinned host + device
        assert cudart.names("cudaHostAlloc") == []
        img = np.zeros((48, 64, 3), np.uint8)
        out = runtime.infer_with_confidence(img, img)
        assert out.disparity.shape == (48, 64)
        assert len(cudart.names("cudaMemcpyAsync")) == 4 and cudart.names("cudaStreamSynchronize")  # 2 in, 2 out, then sync
        runtime.close()
        assert len(cudart.names("cudaFree")) == 4 and len(cudart.names("cudaFreeHost")) == 4
        assert cudart.names("cudaStreamDestroy") == [("cudaStreamDestroy", (7,))]
        runtime.close()  # idempotent: nothing freed twice
        assert len(cudart.names("cudaFreeHost")) == 4 and len(cudart.names("cudaStreamDestroy")) == 1

    def test_integrated_gpu_maps_host_memory_and_copies_nothing(self, monkeypatch, tmp_path):
        cudart = FakeCudart(integrated=True)
        runtime = fake_engine_runtime(monkeypatch, tmp_path, cudart)
        assert [c[1][1] for c in cudart.names("cudaHostAlloc")] == [FakeCudart.cudaHostAllocMapped] * 4
        assert cudart.names("cudaMalloc") == [] and cudart.names("cudaMallocHost") == []
        img = np.zeros((48, 64, 3), np.uint8)
        runtime.infer(img, img)
        assert cudart.names("cudaMemcpyAsync") == []
        runtime.close()
        assert len(cudart.names("cudaFreeHost")) == 4 and cudart.names("cudaFree") == []

    def test_engine_for_another_gpu_generation_is_refused(self, monkeypatch, tmp_path):
        import hashlib

        sidecar = {"tensorrt_version": "10.3.0", "gpu": "NVIDIA H200", "compute_capability": "9.0",
                   "engine_sha256": hashlib.sha256(b"engine").hexdigest()}
        with pytest.raises(RuntimeBackendError, match="built for compute capability 9.0.*this GPU is 8.7"):
            fake_engine_runtime(monkeypatch, tmp_path, FakeCudart(cc=(8, 7)), sidecar)


class TestStaleFiles:
    """A sidecar describes one file: another version of it beside it must not supply its fp32 set, input
    size or checks, and an engine must not outlive the ONNX it was built from."""

    def _export(self, tmp_path, fp32_nodes):
        model = overflow_model()
        for key, value in (("format", "m2s-stereo-v1"), ("input_height", "1"), ("input_width", "4"),
                           ("fp16", '{"fp32_nodes": %s, "fp32_tensors": []}' % str(fp32_nodes).replace("'", '"'))):
            model.metadata_props.add(key=key, value=value)
        path = tmp_path / "m.onnx"
        onnx.save(model, str(path))
        return path

    def test_a_replaced_onnx_is_not_described_by_its_old_sidecar(self, tmp_path):
        import json
        import subprocess
        import sys

        from m2s_export.metadata import checked_sidecar, sha256_file, write_sidecar

        path = self._export(tmp_path, ["blow_up", "relu", "back"])
        write_sidecar(path, {"fp16": {"fp32_nodes": ["blow_up", "relu", "back"], "fp32_tensors": []},
                             "onnx_sha256": sha256_file(path)})
        assert checked_sidecar(path)["fp16"]["fp32_nodes"] == ["blow_up", "relu", "back"]
        path = self._export(tmp_path, ["blow_up", "relu"])  # re-exported: another file under the same name
        with pytest.raises(RuntimeBackendError, match="does not belong to .*m.onnx"):
            checked_sidecar(path)
        cmd = [sys.executable, "-m", "m2s_export.cli", "--trt", "--onnx", str(path), "--engine", str(tmp_path / "m.engine"),
               "--dry-run"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 2 and res.stderr.startswith("error: ") and "does not belong" in res.stderr
        # a sidecar from before the hash was recorded: its fp32 set is compared with the ONNX's own
        write_sidecar(path, {"fp16": {"fp32_nodes": ["blow_up", "relu", "back"], "fp32_tensors": []}})
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 2 and "another fp32 set" in res.stderr
        write_sidecar(path, {"fp16": {"fp32_nodes": ["blow_up", "relu"], "fp32_tensors": []}})
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        assert "--layerPrecisions=blow_up:fp32,relu:fp32" in json.loads(res.stdout)["trtexec"]

    def test_an_engine_outlived_by_its_onnx_or_its_sidecar_is_refused(self, tmp_path):
        from m2s_export.metadata import checked_sidecar, sha256_file, write_sidecar
        from m2s_export.tensorrt_build import check_engine_compat

        onnx_path = self._export(tmp_path, [])
        engine = tmp_path / "m.engine"
        engine.write_bytes(b"engine v1")
        sidecar = {"tensorrt_version": "10.3.0", "onnx": str(onnx_path), "onnx_sha256": sha256_file(onnx_path),
                   "engine_sha256": sha256_file(engine)}
        write_sidecar(engine, sidecar)
        check_engine_compat(checked_sidecar(engine), "10.3.0", str(engine), "8.7")  # all consistent
        engine.write_bytes(b"engine v2")  # rebuilt by hand: the old sidecar stays
        with pytest.raises(RuntimeBackendError, match="does not belong to .*m.engine.*Rebuild it"):
            checked_sidecar(engine)
        engine.write_bytes(b"engine v1")
        self._export(tmp_path, ["back"])  # the ONNX re-exported, the engine not rebuilt
        with pytest.raises(ExportError, match="built from an earlier .*m.onnx.*re-exported since"):
            check_engine_compat(checked_sidecar(engine), "10.3.0", str(engine), "8.7")


class TestOnnxRuntimeProviders:
    def test_the_engine_cache_follows_the_weights_not_the_file_name(self, tmp_path):
        """#36 item 1: onnxruntime keys its TensorRT cache on names and versions, not weights: after
        m2s-export --overwrite of a retrained model to the same path the node kept the old engine. Two exports
        of one architecture from different weights to one path get different engine folders."""
        torch = pytest.importorskip("torch")
        from m2s_export.onnx_export import export_onnx
        from m2s_export.runtime import trt_cache_dir
        from m2s_train.models import create_model, save_model

        onnx_path = tmp_path / "model.onnx"
        dirs = []
        for seed in (0, 1):  # "retrained": other weights, exported over the same file
            torch.manual_seed(seed)
            save_model(create_model("igev-tiny"), tmp_path / f"ck{seed}")
            onnx_path.unlink(missing_ok=True)
            export_onnx(tmp_path / f"ck{seed}", onnx_path, 64, 96, verify=False, fp16=False)
            available = ["TensorrtExecutionProvider", "CPUExecutionProvider"]
            dirs.append(onnx_providers(onnx_path, available)[0][1]["trt_engine_cache_path"])
            assert dirs[-1] == str(trt_cache_dir(onnx_path))
        assert dirs[0] != dirs[1] and Path(dirs[0]).parent == Path(dirs[1]).parent  # the old engine is not reused

    def test_tensorrt_provider_gets_an_engine_cache_beside_the_model(self, tmp_path):
        available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
        model = tmp_path / "model.onnx"
        model.write_bytes(b"an exported graph")
        auto = onnx_providers(model, available)
        name, opts = auto[0]
        assert name == "TensorrtExecutionProvider" and opts["trt_engine_cache_enable"] is True
        import hashlib

        digest = hashlib.sha256(b"an exported graph").hexdigest()[:16]
        assert opts["trt_engine_cache_path"] == str(tmp_path / "model.onnx.ort-trt-cache" / digest)
        assert opts["trt_timing_cache_path"] == str(tmp_path / "model.onnx.ort-trt-cache")
        assert opts["trt_fp16_enable"] is False
        assert auto[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
        assert onnx_providers(Path("m.onnx"), available, "cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
        assert onnx_providers(Path("m.onnx"), ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
        with pytest.raises(RuntimeBackendError, match="no TensorrtExecutionProvider"):
            onnx_providers(Path("m.onnx"), ["CPUExecutionProvider"], "tensorrt")


def test_a_stale_engine_is_refused_from_any_working_directory_and_after_a_copy(tmp_path, monkeypatch):
    """#36 items 2 and 7: the sidecar's "onnx" was resolved against the loading process's working directory, so
    a stale engine loaded from elsewhere, or copied with its files, passed; the rebuild hint lower-cased paths."""
    from m2s_export.metadata import sha256_file, write_sidecar
    from m2s_export.tensorrt_build import check_engine_compat

    models = tmp_path / "Models"  # capitals, as a user's paths have them
    models.mkdir()
    onnx_path, engine = models / "IGEV_RT.onnx", models / "IGEV_RT.engine"
    onnx_path.write_bytes(b"onnx v1")
    engine.write_bytes(b"engine")
    monkeypatch.chdir(tmp_path)  # built from here: the ONNX typed relative to this folder
    write_sidecar(engine, {"tensorrt_version": "10.3.0", "onnx": "Models/IGEV_RT.onnx", "onnx_relative": "IGEV_RT.onnx",
                           "onnx_sha256": sha256_file(onnx_path), "engine_sha256": sha256_file(engine)})
    onnx_path.write_bytes(b"onnx v2")  # re-exported, the engine not rebuilt
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the node started from another folder
    with pytest.raises(ExportError, match=r"built from an earlier .*Models/IGEV_RT\.onnx.*Rebuild it \(m2s-export --trt "
                                          r"--onnx Models/IGEV_RT\.onnx"):
        check_engine_compat(json.loads((models / "IGEV_RT.engine.json").read_text()), "10.3.0", str(engine))
    import shutil

    copy = tmp_path / "robot"
    shutil.copytree(models, copy)  # the three files copied to the robot together
    with pytest.raises(ExportError, match="re-exported since"):
        check_engine_compat(json.loads((copy / "IGEV_RT.engine.json").read_text()), "10.3.0", str(copy / "IGEV_RT.engine"))


def test_no_cuda_driver_is_a_named_error(monkeypatch):
    """#36 item 7: without a driver cuda-python 12.6 raises RuntimeError('Failed to dlopen libcuda.so.1') on its
    first call, which went past the named error of the CUDA check."""
    import sys
    import types

    from m2s_export.tensorrt_runtime import _cudart

    runtime = types.ModuleType("cuda.bindings.runtime")

    def no_driver():
        raise RuntimeError("Failed to dlopen libcuda.so.1")

    runtime.cudaGetDeviceCount = no_driver
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = runtime
    cuda = types.ModuleType("cuda")
    cuda.bindings = bindings
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", runtime)
    with pytest.raises(RuntimeBackendError, match="CUDA is not usable here: Failed to dlopen libcuda.so.1 .no NVIDIA driver"):
        _cudart()


def test_jetpack_6_0s_tensorrt_is_refused_with_the_way_forward(tmp_path):
    """#36 item 9: the docs said JetPack 6.x is TensorRT 10.3, false for 6.0 (8.6); an unsupported TensorRT is refused."""
    from m2s_export.tensorrt_build import check_supported_trt

    check_supported_trt("10.3.0")
    check_supported_trt("10.12.0.36")
    with pytest.raises(ExportError, match=r"TensorRT 8\.6\.2 is not supported: .*JetPack 6\.1 / 6\.2; JetPack 6\.0 has "
                                          r"TensorRT 8\.6.*onnxruntime"):
        check_supported_trt("8.6.2")
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"not read before the version check")
    res = subprocess.run([sys.executable, "-m", "m2s_export.cli", "--trt", "--onnx", str(onnx_path), "--engine",
                          str(tmp_path / "m.engine"), "--dry-run", "--no-fp16", "--assume-trt-version", "8.6.2"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.startswith("error: TensorRT 8.6.2 is not supported"), res.stderr


def test_a_dynamic_batch_export_goes_through_the_strongly_typed_fp16_path(tmp_path):
    """#36 item 3: the 10.12 dry run of a --dynamic-batch export failed with 'fp16 ONNX is invalid ... (op_type:
    Range)': ONNX Range has no float16. Range stays fp32; the fp16 ONNX passes onnx.checker and runs."""
    torch = pytest.importorskip("torch")
    import onnx
    import onnxruntime as ort

    from m2s_train.models import create_model, save_model

    torch.manual_seed(0)
    save_model(create_model("igev-tiny"), tmp_path / "ck")
    onnx_path, engine = tmp_path / "tinydyn.onnx", tmp_path / "x.engine"
    base = [sys.executable, "-m", "m2s_export.cli"]
    res = subprocess.run([*base, "--checkpoint", str(tmp_path / "ck"), "--onnx", str(onnx_path), "--height", "64",
                          "--width", "96", "--iters", "1", "--dynamic-batch", "--no-verify", "--quiet"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert any(n.op_type == "Range" for n in onnx.load(str(onnx_path)).graph.node)
    res = subprocess.run([*base, "--trt", "--onnx", str(onnx_path), "--engine", str(engine), "--dry-run",
                          "--assume-trt-version", "10.12"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    fp16 = engine.with_suffix(".fp16.onnx")
    model = onnx.load(str(fp16))
    onnx.checker.check_model(model, full_check=True)
    ranges = [n for n in model.graph.node if n.op_type == "Range"]
    assert ranges and "--stronglyTyped" in json.loads(res.stdout)["trtexec"]
    session = ort.InferenceSession(str(fp16), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.random((2, 3, 64, 96), dtype=np.float32) for i in session.get_inputs()}
    out = session.run(None, feeds)[0]
    assert out.shape[0] == 2 and np.isfinite(out).all()


def test_instance_normalization_stays_fp32_in_the_strongly_typed_onnx():
    """#36 item 4: a strongly typed network computes a normalisation in its input type (fp16), while the fp16 check
    emulates it in fp32: the check and the engine disagreed exactly where overflow hurts."""
    from m2s_export.fp16 import to_fp16_onnx

    model = _model([h.make_node("Mul", ["x", "s"], ["a"], name="scale"),
                    h.make_node("InstanceNormalization", ["a", "g", "b"], ["n"], name="norm", epsilon=1e-5),
                    h.make_node("Relu", ["n"], ["y"], name="act")],
                   [_const("s", np.full((1, 2, 4), 2.0)), _const("g", [1.0, 1.0]), _const("b", [0.0, 0.0])],
                   shape=(1, 2, 4))
    model.graph.input[0].CopyFrom(h.make_tensor_value_info("x", F, [1, 2, 4]))
    converted = to_fp16_onnx(model, [])
    onnx.checker.check_model(converted, full_check=True)
    norm = next(n for n in converted.graph.node if n.op_type == "InstanceNormalization")
    types = {vi.name: vi.type.tensor_type.elem_type for vi in converted.graph.value_info}
    feeds = [types.get(i) for i in norm.input if i in types]
    assert all(t == onnx.TensorProto.FLOAT for t in feeds), feeds  # read in fp32 (a Cast from the fp16 Mul)
    assert any(n.op_type == "Cast" and n.output[0] in norm.input for n in converted.graph.node)
    x = np.random.default_rng(0).random((1, 2, 4), dtype=np.float32)
    np.testing.assert_allclose(_run(converted, x), _run(model, x), atol=5e-3)
