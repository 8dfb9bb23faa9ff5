"""ONNX export, onnxruntime parity, metadata, the runtime interface, FP16 analysis and TensorRT paths."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from calib.image_io import read_rgb  # noqa: E402
from m2s_export.cli import main as export_main  # noqa: E402
from m2s_export.errors import ExportError, RuntimeBackendError  # noqa: E402
from m2s_export.fp16 import fp16_onnx  # noqa: E402
from m2s_export.metadata import read_sidecar  # noqa: E402
from m2s_export.onnx_export import export_onnx  # noqa: E402
from m2s_export.runtime import OnnxRuntime, load_runtime  # noqa: E402
from m2s_export.tensorrt_build import EngineOptions, check_engine_compat, trtexec_command  # noqa: E402
from m2s_train.models import create_model, save_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    save_model(create_model("igev-tiny"), root / "ckpt")
    meta = export_onnx(root / "ckpt", root / "tiny.onnx", 96, 128)
    return root, meta


class TestOnnxExport:
    def test_parity_and_metadata(self, exported, opencv_data):
        root, meta = exported
        rows = {r["pair"]: r for r in meta["export_report"]["verification"]}
        assert rows["aloe"]["mean_abs_px"] < 0.01 and rows["texture0"]["mean_abs_px"] < 0.01
        model = onnx.load(str(root / "tiny.onnx"))
        props = {p.key: p.value for p in model.metadata_props}
        assert props["format"] == "m2s-stereo-v1" and json.loads(props["input_height"]) == 96
        assert json.loads(props["iters"]) == 3 and len(props["checkpoint_sha256"]) == 64
        from calib.version import version

        assert props["exported_by"] == f"mono2stereo {version()}"  # the one version (tests/test_release.py)
        assert model.opset_import[0].version >= 17
        assert [i.name for i in model.graph.input] == ["left", "right"] and model.graph.output[0].name == "disparity"
        assert read_sidecar(root / "tiny.onnx")["model_name"] == "igev-tiny"
        # no per-disparity loop of slice assignments: no ScatterND, and as many Slices with twice the candidates
        ops = [n.op_type for n in model.graph.node]
        torch.manual_seed(0)
        save_model(create_model("igev-tiny", max_disp=128), root / "ckpt128")
        export_onnx(root / "ckpt128", root / "tiny128.onnx", 96, 128, verify=False, fp16=False)
        wider = [n.op_type for n in onnx.load(str(root / "tiny128.onnx")).graph.node]
        assert "ScatterND" not in ops and ops.count("Slice") == wider.count("Slice") and len(ops) == len(wider)

    def test_runtime_parity_on_real_aloe(self, exported, opencv_data):
        root, _ = exported
        left, right = read_rgb(opencv_data / "aloeL.jpg"), read_rgb(opencv_data / "aloeR.jpg")
        onnx_rt = load_runtime(root / "tiny.onnx")
        torch_rt = load_runtime(root / "ckpt", input_size=(96, 128), iters=3)
        a, b = onnx_rt.infer(left, right), torch_rt.infer(left, right)
        assert a.shape == left.shape[:2] and a.dtype == np.float32
        assert np.abs(a - b).mean() < 0.01  # identical pre/post-processing on both backends
        stats = onnx_rt.stats()
        assert stats["total"]["count"] == 1 and stats["infer"]["median_ms"] > 0

    def test_confidence_output_through_onnx_and_every_runtime(self, exported, opencv_data):
        root, meta = exported
        model = onnx.load(str(root / "tiny.onnx"))
        assert [o.name for o in model.graph.output] == ["disparity", "confidence"]
        assert meta["outputs"] == ["disparity", "confidence"] and meta["confidence"].startswith("learned")
        for row in meta["export_report"]["verification"]:  # ONNX vs PyTorch, both outputs
            assert row["mean_abs_px"] < 0.01 and row["confidence_mean_abs"] < 1e-3, row
        left, right = read_rgb(opencv_data / "aloeL.jpg"), read_rgb(opencv_data / "aloeR.jpg")
        onnx_rt = load_runtime(root / "tiny.onnx")
        torch_rt = load_runtime(root / "ckpt", input_size=(96, 128), iters=3)
        a, b = onnx_rt.infer_with_confidence(left, right), torch_rt.infer_with_confidence(left, right)
        assert onnx_rt.has_confidence and a.confidence.shape == a.disparity.shape == left.shape[:2]
        assert a.confidence.dtype == np.float32 and 0 <= a.confidence.min() and a.confidence.max() <= 1
        assert np.abs(a.confidence - b.confidence).mean() < 1e-3
        np.testing.assert_array_equal(onnx_rt.infer(left, right), a.disparity)  # the disparity-only form
        # the right view's disparity: the mirrored, swapped pair (what a left-right check compares)
        r = onnx_rt.infer_right_view(left, right)
        mirrored = onnx_rt.infer_with_confidence(np.ascontiguousarray(right[:, ::-1]), np.ascontiguousarray(left[:, ::-1]))
        np.testing.assert_array_equal(r.disparity, mirrored.disparity[:, ::-1])
        # a fresh onnxruntime process gives the same two outputs (no state of this test process)
        code = ("import numpy as np, sys; from calib.image_io import read_rgb; from m2s_export.runtime import load_runtime; "
                f"rt = load_runtime(r'{root / 'tiny.onnx'}'); o = rt.infer_with_confidence(read_rgb(r'{opencv_data / 'aloeL.jpg'}'), "
                f"read_rgb(r'{opencv_data / 'aloeR.jpg'}')); np.save(sys.argv[1], np.stack([o.disparity, o.confidence]))")
        res = subprocess.run([sys.executable, "-c", code, str(root / "fresh.npy")], capture_output=True, text=True, cwd=ROOT)
        assert res.returncode == 0, res.stderr[-1000:]
        fresh = np.load(root / "fresh.npy")
        np.testing.assert_allclose(fresh[0], a.disparity, atol=1e-5)
        np.testing.assert_allclose(fresh[1], a.confidence, atol=1e-6)

    def test_onnx_without_confidence_still_runs(self, exported, tmp_path):
        """An ONNX exported before models had a confidence: disparity as before, confidence None."""
        root, _ = exported
        model = onnx.load(str(root / "tiny.onnx"))
        keep = [o for o in model.graph.output if o.name == "disparity"]
        del model.graph.output[:]
        model.graph.output.extend(keep)
        onnx.save(model, str(tmp_path / "old.onnx"))
        rt = load_runtime(tmp_path / "old.onnx")
        img = np.random.default_rng(0).integers(0, 255, (96, 128, 3), np.uint8)
        out = rt.infer_with_confidence(img, img)
        assert not rt.has_confidence and out.confidence is None and out.disparity.shape == (96, 128)

    def test_disparity_is_rescaled_with_width(self, exported):
        root, _ = exported
        rt = load_runtime(root / "tiny.onnx")
        img = np.random.default_rng(0).integers(0, 255, (96, 128, 3), np.uint8)
        native = rt.infer(img, img)
        big = rt.infer(np.repeat(np.repeat(img, 2, 0), 2, 1), np.repeat(np.repeat(img, 2, 0), 2, 1))
        assert big.shape == (192, 256)
        assert np.mean(big) == pytest.approx(2 * np.mean(native), rel=0.05)

    def test_argument_errors(self, exported, tmp_path):
        root, _ = exported
        with pytest.raises(ExportError, match=">= 64"):
            export_onnx(root / "ckpt", tmp_path / "x.onnx", 48, 128)
        with pytest.raises(ExportError, match="opset"):
            export_onnx(root / "ckpt", tmp_path / "x.onnx", 96, 128, opset=13)
        assert export_main(["--onnx", str(tmp_path / "x.onnx")]) == 2
        assert export_main(["--checkpoint", str(root / "ckpt"), "--onnx", str(tmp_path / "x.onnx")]) == 2
        assert export_main(["--trt", "--onnx", str(root / "tiny.onnx")]) == 2
        assert export_main(["--trt", "--onnx", str(root / "tiny.onnx"), "--engine", str(tmp_path / "e.bin")]) == 2
        res = subprocess.run([sys.executable, "-m", "m2s_export.cli", "--trt", "--onnx", str(tmp_path / "nope.onnx"),
                              "--engine", str(tmp_path / "e.engine")], capture_output=True, text=True, cwd=ROOT)
        assert res.returncode == 2 and "not found" in res.stderr and "Traceback" not in res.stderr


class TestRuntimeErrors:
    def test_foreign_onnx_is_refused(self, tmp_path):
        x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4])
        y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 4, 4])
        graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "other", [x], [y])
        onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(tmp_path / "o.onnx"))
        with pytest.raises(RuntimeBackendError, match="not exported by m2s-export"):
            load_runtime(tmp_path / "o.onnx")
        (tmp_path / "bad.onnx").write_bytes(b"not a protobuf at all")
        with pytest.raises(RuntimeBackendError, match="cannot load"):
            load_runtime(tmp_path / "bad.onnx")
        with pytest.raises(RuntimeBackendError, match="backend"):
            load_runtime(tmp_path / "model.pt")

    def test_bad_images(self, exported):
        root, _ = exported
        rt = load_runtime(root / "tiny.onnx")
        rgb = np.zeros((96, 128, 3), np.uint8)
        with pytest.raises(RuntimeBackendError, match="RGB uint8"):
            rt.infer(np.zeros((96, 128), np.uint8), rgb)
        with pytest.raises(RuntimeBackendError, match="RGB uint8"):
            rt.infer(np.zeros((96, 128, 4), np.uint8), np.zeros((96, 128, 4), np.uint8))
        with pytest.raises(RuntimeBackendError, match="RGB uint8"):
            rt.infer(rgb.astype(np.uint16), rgb.astype(np.uint16))
        with pytest.raises(RuntimeBackendError, match="differ in size"):
            rt.infer(rgb, np.zeros((96, 120, 3), np.uint8))

    def test_onnx_runtime_imports_no_torch(self, exported):
        root, _ = exported
        code = (f"import sys; from m2s_export.runtime import load_runtime; import numpy as np; "
                f"rt = load_runtime(r'{root / 'tiny.onnx'}'); rt.infer(np.zeros((96,128,3),np.uint8), np.zeros((96,128,3),np.uint8)); "
                "print('torch' in sys.modules)")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
        assert res.returncode == 0, res.stderr[-1000:]
        assert res.stdout.strip() == "False"


class TestFp16OnTheRealNetwork:
    def test_export_stores_the_fp32_set_and_the_fp16_check(self, exported):
        root, meta = exported
        sidecar = read_sidecar(root / "tiny.onnx")
        props = {p.key: p.value for p in onnx.load(str(root / "tiny.onnx")).metadata_props}
        fp16 = sidecar["fp16"]
        assert json.loads(props["fp16"]) == fp16  # in the ONNX itself too
        assert set(fp16["regions"]) == {"lookup_coords", "candidate_softmax", "softargmin", "disp_update",
                                        "upsample_combine", "confidence_cues", "confidence_photo"}
        assert any("/disp_update" in n for n in fp16["fp32_nodes"]) and any("/lookup_coords" in n for n in fp16["fp32_nodes"])
        # the candidate distribution and its expectation: the softmax made in fp16 cost 0.02 px of soft-argmin
        ops = {n.name: n.op_type for n in onnx.load(str(root / "tiny.onnx")).graph.node}
        assert [ops[n] for n in fp16["fp32_nodes"] if "/candidate_softmax/" in n] == ["Softmax"]
        assert "ReduceSum" in [ops[n] for n in fp16["fp32_nodes"] if "/softargmin/" in n]
        assert len(fp16["fp32_tensors"]) >= len(fp16["fp32_nodes"])
        check = sidecar["fp16_check"]
        assert check["passed"] and check["nonfinite_fraction"] == 0.0
        assert check["mean_abs_diff_px"] < 0.05 and check["p99_abs_diff_px"] < 0.5 and check["pairs"] >= 2
        conf = check["confidence"]  # the second output is checked too
        assert conf["nonfinite_fraction"] == 0.0 and conf["mean_abs_diff_px"] < 0.02

    def test_pinning_the_regions_cuts_the_fp16_drift(self, exported):
        from m2s_export.calibration import calibration_feeds
        from m2s_export.fp16 import fp16_check

        root, _ = exported
        _, feeds = calibration_feeds(96, 128)
        nodes = read_sidecar(root / "tiny.onnx")["fp16"]["fp32_nodes"]
        pinned = fp16_check(root / "tiny.onnx", nodes, feeds)
        everything = fp16_check(root / "tiny.onnx", [], feeds)
        assert everything["mean_abs_diff_px"] > 3 * pinned["mean_abs_diff_px"]  # measured: 10x

    def test_fp16_onnx_of_the_real_network_is_valid_and_runs(self, exported, tmp_path):
        """onnxconverter-common 1.16 produced 'inconsistent type' here (stale value_info from onnxslim)."""
        root, _ = exported
        nodes = read_sidecar(root / "tiny.onnx")["fp16"]["fp32_nodes"]
        out = fp16_onnx(root / "tiny.onnx", tmp_path / "t16.onnx", nodes)
        model = onnx.load(str(out))
        onnx.checker.check_model(model, full_check=True)
        types = {i.data_type for i in model.graph.initializer}
        assert onnx.TensorProto.FLOAT16 in types
        x = np.random.default_rng(0).random((1, 3, 96, 128), np.float32)
        got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["disparity"], {"left": x, "right": x})[0]
        ref = ort.InferenceSession(str(root / "tiny.onnx"), providers=["CPUExecutionProvider"]).run(
            ["disparity"], {"left": x, "right": x})[0]
        assert got.dtype == np.float32 and np.abs(got - ref).mean() < 0.05

    def test_onnx_is_not_inflated_by_a_folded_gather_index(self, tmp_path):
        """The expanded band index was folded into an int64 initializer 3x the weights (igev-rt, 640x480)."""
        save_model(create_model("igev-tiny"), tmp_path / "ck")
        export_onnx(tmp_path / "ck", tmp_path / "m.onnx", 256, 320, verify=False, fp16=False)
        weights = (tmp_path / "ck" / "model.safetensors").stat().st_size
        assert (tmp_path / "m.onnx").stat().st_size < 1.3 * weights
        biggest = max(int(np.prod(i.dims)) for i in onnx.load(str(tmp_path / "m.onnx")).graph.initializer
                      if i.data_type == onnx.TensorProto.INT64)
        assert biggest < 10_000

    def test_trt_dry_run_reads_the_fp32_set_instead_of_analysing(self, exported, monkeypatch, capsys):
        import m2s_export.onnx_export as onnx_export

        def no_analysis(*args, **kwargs):
            raise AssertionError("the analysis ran on the target")

        monkeypatch.setattr(onnx_export, "fp16_decision", no_analysis)
        root, _ = exported
        assert export_main(["--trt", "--onnx", str(root / "tiny.onnx"), "--engine", str(root / "t.engine"), "--dry-run",
                            "--quiet"]) == 0
        line = json.loads(capsys.readouterr().out)["trtexec"]
        assert "--layerOutputTypes=" in line and "/disp_update" in line


    def test_a_failed_fp16_check_keeps_the_onnx_and_gates_only_the_fp16_engine(self, exported, tmp_path, monkeypatch,
                                                                                capsys):
        """An ONNX meant for onnxruntime on CPU was blocked by the fp16 check (exit 2 unless --allow-fp16-drift),
        though that runtime never uses fp16: the check's verdict is recorded, and --trt FP16 refuses it."""
        import m2s_export.fp16 as fp16

        monkeypatch.setattr(fp16, "DEFAULT_THRESHOLDS", {**fp16.DEFAULT_THRESHOLDS, "mean_abs_diff_px": 0.0})
        root, _ = exported
        onnx_path, engine = tmp_path / "cpu.onnx", tmp_path / "cpu.engine"
        assert export_main(["--checkpoint", str(root / "ckpt"), "--onnx", str(onnx_path), "--height", "64", "--width",
                            "96", "--quiet", "--no-verify"]) == 0
        check = read_sidecar(onnx_path)["fp16_check"]
        assert check["passed"] is False and check["problems"][0].startswith("mean_abs_diff_px")
        assert OnnxRuntime(onnx_path).infer(*[np.zeros((64, 96, 3), np.uint8)] * 2).shape == (64, 96)  # runs
        capsys.readouterr()
        dry = ["--trt", "--onnx", str(onnx_path), "--engine", str(engine), "--dry-run", "--quiet"]
        assert export_main(dry) == 2
        assert "fp16 check of" in capsys.readouterr().err and not engine.exists()
        assert export_main([*dry, "--allow-fp16-drift"]) == 0  # the user's explicit choice
        assert export_main([*dry, "--no-fp16"]) == 0  # an fp32 engine needs no fp16 verdict


class TestTensorRT:
    def test_trtexec_lines_per_version(self):
        opts = EngineOptions(fp16=True, workspace_mb=1024, timing_cache="tc.bin")
        v10 = trtexec_command("m.onnx", "m.engine", opts, "10.3.0", ["/conv1/Conv"])
        assert "--fp16" in v10 and "--layerPrecisions=/conv1/Conv:fp32" in v10 and "--timingCacheFile=tc.bin" in v10
        v11 = trtexec_command("m.fp16.onnx", "m.engine", opts, "11.0.1")
        assert "--stronglyTyped" in v11 and "--fp16" not in v11
        with pytest.raises(ExportError, match="workspace"):
            EngineOptions(workspace_mb=0)

    def test_engine_from_another_version_is_refused(self):
        with pytest.raises(ExportError, match="TensorRT 10.3.0"):
            check_engine_compat({"tensorrt_version": "10.3.0", "gpu": "Orin"}, "10.7.0", "m.engine")
        check_engine_compat({"tensorrt_version": "10.7.0"}, "10.7.0", "m.engine")

    def test_build_without_tensorrt_says_where_to_build(self, exported, tmp_path):
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            root, _ = exported
            from m2s_export.tensorrt_build import build_engine

            with pytest.raises(ExportError, match="target"):
                build_engine(root / "tiny.onnx", tmp_path / "t.engine", EngineOptions())
            with pytest.raises(RuntimeBackendError, match="TensorRT is not installed"):
                load_runtime(tmp_path / "t.engine")
        else:
            pytest.skip("TensorRT is installed: the real build is covered by test_real_engine")

    def test_real_engine(self, exported, tmp_path, opencv_data):
        trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (CPU-only machine): engine build untested here")
        root, _ = exported
        from m2s_export.tensorrt_build import build_engine
        from m2s_export.tensorrt_runtime import record_engine_check

        meta = build_engine(root / "tiny.onnx", tmp_path / "t.engine", EngineOptions(fp16=False))
        assert meta["tensorrt_version"] == trt.__version__
        left, right = read_rgb(opencv_data / "aloeL.jpg"), read_rgb(opencv_data / "aloeR.jpg")
        a = load_runtime(tmp_path / "t.engine").infer(left, right)
        b = OnnxRuntime(root / "tiny.onnx").infer(left, right)
        assert np.abs(a - b).mean() < 0.05
        # FP16 with the export's fp32 set, measured against the fp32 model on the calibration pairs
        fp16 = build_engine(root / "tiny.onnx", tmp_path / "h.engine", EngineOptions(fp16=True),
                            read_sidecar(root / "tiny.onnx")["fp16"])
        assert fp16["precision"] == "fp16" and fp16["fp32_layers"]
        check = record_engine_check(tmp_path / "h.engine", root / "tiny.onnx")
        assert check["passed"] and read_sidecar(tmp_path / "h.engine")["engine_check"] == check
        (tmp_path / "corrupt.engine").write_bytes(b"\x00" * 100)
        with pytest.raises(RuntimeBackendError):
            load_runtime(tmp_path / "corrupt.engine")


class TestRefusedInputs:
    def test_metadata_that_disagrees_with_the_graph_is_refused(self, exported, tmp_path):
        root, _ = exported
        model = onnx.load(str(root / "tiny.onnx"))
        for prop in model.metadata_props:
            if prop.key == "input_height":
                prop.value = "480"
        onnx.save(model, str(tmp_path / "edited.onnx"))
        with pytest.raises(RuntimeBackendError, match=r"graph's input is \[1, 3, 96, 128\] but its metadata says 1x3x480x128"):
            OnnxRuntime(tmp_path / "edited.onnx")

    def test_empty_image_is_a_clear_error(self, exported):
        runtime = OnnxRuntime(exported[0] / "tiny.onnx")
        empty = np.zeros((0, 0, 3), np.uint8)
        with pytest.raises(RuntimeBackendError, match="0x0"):
            runtime.infer(empty, empty)

    def test_checkpoint_given_as_its_safetensors_file_exports(self, exported, tmp_path, capsys):
        root, _ = exported
        assert export_main(["--checkpoint", str(root / "ckpt" / "model.safetensors"), "--onnx", str(tmp_path / "m.onnx"),
                            "--height", "64", "--width", "96", "--quiet", "--no-verify"]) == 0
        assert read_sidecar(tmp_path / "m.onnx")["checkpoint"] == str(root / "ckpt")
