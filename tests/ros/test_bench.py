"""``m2s-bench`` as a user runs it: a subprocess on this machine's CPU backends (GPU ones skipped with the
reason), the table and the JSON; with ``--node`` the model in the node over DDS."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _bench(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "m2s_stereo.bench_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_cpu_backends_are_timed_and_gpu_ones_say_why_not(stereo_onnx, tmp_path):
    out = tmp_path / "bench.json"
    res = _bench("--onnx", stereo_onnx, "--runs", 4, "--warmup", 1, "--json", out)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line for line in res.stdout.splitlines() if line.startswith("| ") and "---" not in line}
    assert "onnxruntime-cpu" in rows and "(reference)" in rows["onnxruntime-cpu"]
    results = {r["backend"]: r for r in json.loads(out.read_text())["results"]}
    cpu = results["onnxruntime-cpu"]
    assert cpu["skipped"] is None and cpu["runs"] == 4 and cpu["peak_rss_mb"] > 0
    for stage in ("pre", "infer", "post", "total"):
        s = cpu["ms"][stage]
        assert 0 <= s["median"] <= s["p90"] <= s["max"]
    assert cpu["ms"]["total"]["median"] >= cpu["ms"]["infer"]["median"]
    assert cpu["drift"]["mean_abs_diff_px"] == 0.0  # the fp32 reference itself
    for backend in ("onnxruntime-cuda", "onnxruntime-tensorrt"):  # no GPU in CI: listed, with the reason
        if results[backend]["skipped"] is not None:
            assert "not among onnxruntime's providers" in results[backend]["skipped"]


def test_torch_and_onnxruntime_agree_and_the_node_row(stereo_onnx, tmp_path):
    pytest.importorskip("torch", reason="the torch backend needs the training extra")
    pytest.importorskip("rclpy", reason="--node needs rclpy")
    checkpoint = stereo_onnx.parent / "ckpt"
    out = tmp_path / "bench.json"
    res = _bench("--checkpoint", checkpoint, "--onnx", stereo_onnx, "--runs", 3, "--warmup", 1, "--node",
                 "--node-frames", 4, "--json", out)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(out.read_text())
    results = {r["backend"]: r for r in summary["results"]}
    assert results["torch-cpu"]["drift"]["reference"] == "onnxruntime-cpu"
    assert results["torch-cpu"]["drift"]["max_abs_diff_px"] < 0.01  # the exported graph computes what PyTorch does
    node = summary["node"]
    assert node["answered"] == 4 and node["node_receive_to_publish_ms"] > 0
    assert node["end_to_end_ms"]["median"] >= node["node_receive_to_publish_ms"] * 0.5
    assert "node (onnxruntime, over DDS)" in res.stdout


def test_bad_input_is_one_error_line(tmp_path):
    for args in ([], ["--onnx", tmp_path / "missing.onnx"], ["--onnx", tmp_path / "m.onnx", "--height", "64"]):
        if len(args) == 4:
            (tmp_path / "m.onnx").write_bytes(b"not onnx")
        res = _bench(*args)
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.stderr


def test_camera_size_platform_state_cold_start_and_a_busy_machine(stereo_onnx, tmp_path):
    """#36 item 8: pairs came at the model's size, so pre/post never included the resize a camera of another size
    needs; platform state, cold start and load were not recorded."""
    from m2s_export.benchmark import busy_warning

    out = tmp_path / "bench.json"
    res = _bench("--onnx", stereo_onnx, "--backends", "onnxruntime-cpu", "--runs", 3, "--warmup", 1,
                 "--camera-size", "1280x720", "--json", out)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(out.read_text())
    cpu = report["results"][0]
    assert report["camera_size"] == [1280, 720] and cpu["camera_size"] == [1280, 720]
    assert cpu["ms"]["pre"]["median"] > 0 and cpu["ms"]["post"]["median"] >= 0
    assert cpu["cold_start_ms"]["load"] > 0 and cpu["cold_start_ms"]["first_call"] > 0 and "cold start" in res.stderr
    for when in ("before", "after"):
        state = report["platform"][when]
        assert len(state["load_average"]) == 3 and state["cpus"] >= 1
    busy = {"load_average": [7.5, 3.0, 1.0], "cpus": 2}
    idle = {"load_average": [0.1, 0.1, 0.1], "cpus": 2}
    assert "the machine was busy: load average 7.5 on 2 CPUs" in busy_warning(idle, busy)
    assert busy_warning(idle, idle) is None
    assert _bench("--onnx", stereo_onnx, "--camera-size", "1280by720").returncode == 2
