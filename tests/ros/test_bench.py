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
