"""FP16 decisions on small hand-built graphs and the TensorRT build/runtime logic with fakes. Torch-free
(the robot-side CI leg runs it on Python 3.10 with numpy 1.26); the real network is covered in
test_export_runtime.py."""

from __future__ import annotations

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
    def __init__(self, name, outputs, dtype="float"):
        self.name = name
        self._outputs = [FakeTensor(name=o, dtype=dtype) for o in outputs]
        self.num_outputs = len(outputs)
        self.precision = None
        self.output_types = {}

    def get_output(self, j):
        return self._outputs[j]

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
            FakeLayer("/model/Cast", ["idx"], dtype="int64")]
        kept = pin_fp32_layers(FakeNetwork(layers), FAKE_TRT_TYPES, {"/model/Sub_output_0", "idx"}, set())
        assert kept == ["/model/Sub", "/model/Cast"]  # before: /model/Sub pinned all 56 /model/Sub_* layers
        assert layers[0].precision == "float" and layers[0].output_types == {0: "float"}
        assert layers[-1].output_types == {}  # an int64 index output keeps its type
        assert layers[1].precision is None

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

        trt = SimpleNamespace(__version__="10.3.0", Logger=Logger, Builder=Builder, OnnxParser=Parser,
                              NetworkDefinitionCreationFlag=SimpleNamespace(EXPLICIT_BATCH=0, STRONGLY_TYPED=1),
                              MemoryPoolType=SimpleNamespace(WORKSPACE=0),
                              BuilderFlag=SimpleNamespace(FP16="FP16", OBEY_PRECISION_CONSTRAINTS="OBEY"),
                              float32="float", float16="half")
        onnx_path = tmp_path / "m.onnx"
        onnx.save(overflow_model(), str(onnx_path))
        meta = build_engine(onnx_path, tmp_path / "m.engine", EngineOptions(timing_cache=str(tmp_path / "tc.bin"), max_batch=4),
                            {"fp32_nodes": ["/model/disp_update/Add"], "fp32_tensors": ["d"]}, trt=trt)
        assert log["parse_path"] == str(onnx_path)  # before: the directory
        assert log["shapes"]["left"] == ((1, 3, 64, 96), (1, 3, 64, 96), (4, 3, 64, 96))  # before: opt = max
        assert log["flags"] == ["FP16", "OBEY"] and meta["fp32_layers"] == ["/model/disp_update/Add"]
        assert (tmp_path / "m.engine").read_bytes() == b"engine bytes" and (tmp_path / "tc.bin").read_bytes() == b"cache"
        with pytest.raises(ExportError, match="needs the fp32 set"):
            build_engine(onnx_path, tmp_path / "n.engine", EngineOptions(), None, trt=trt)

    def test_trtexec_line_matches_the_python_build(self):
        opts = EngineOptions(fp16=True, workspace_mb=1024, timing_cache="tc.bin", max_batch=2)
        line = trtexec_command("m.onnx", "m.engine", opts, "10.3.0", ["/a/Add", "/b/Sub"],
                               {"left": (3, 480, 640), "right": (3, 480, 640)})
        assert "--fp16 --precisionConstraints=obey" in line
        assert "--layerPrecisions=/a/Add:fp32,/b/Sub:fp32" in line and "--layerOutputTypes=/a/Add:fp32,/b/Sub:fp32" in line
        assert "--minShapes=left:1x3x480x640,right:1x3x480x640" in line and "--optShapes=left:1x3x480x640" in line
        assert "--maxShapes=left:2x3x480x640,right:2x3x480x640" in line
        v11 = trtexec_command("m.fp16.onnx", "m.engine", opts, "11.0.1", ["/a/Add"])
        assert "--stronglyTyped" in v11 and "--fp16" not in v11 and "layerPrecisions" not in v11


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


class TestOnnxRuntimeProviders:
    def test_tensorrt_provider_gets_an_engine_cache_beside_the_model(self):
        available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
        auto = onnx_providers(Path("/m/model.onnx"), available)
        name, opts = auto[0]
        assert name == "TensorrtExecutionProvider" and opts["trt_engine_cache_enable"] is True
        assert opts["trt_engine_cache_path"] == "/m/model.onnx.ort-trt-cache" and opts["trt_fp16_enable"] is False
        assert auto[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
        assert onnx_providers(Path("m.onnx"), available, "cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
        assert onnx_providers(Path("m.onnx"), ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
        with pytest.raises(RuntimeBackendError, match="no TensorrtExecutionProvider"):
            onnx_providers(Path("m.onnx"), ["CPUExecutionProvider"], "tensorrt")
