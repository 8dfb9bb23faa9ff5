"""The README's main command, end to end, with a reduced step count (CI-like: fresh output dir)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_runs_the_whole_chain(opencv_data, tmp_path):
    for module in ("torch", "onnxruntime", "rclpy", "rosbags"):
        pytest.importorskip(module, reason=f"{module} is needed by the quickstart chain")
    out = tmp_path / "qs"
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "quickstart.py"), "--out", str(out), "--steps", "8",
                          "--synth-images", "6", "--bag-frames", "3", "--replay-rate", "0", "--quiet"],
                         capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["calibration"]["rms_px"] <= 0.5 and summary["synthesis"]["pairs"] == 6
    assert summary["model"]["steps"] == 8 and summary["onnx"]["max_mean_abs_diff_px"] < 0.01
    assert summary["replay"]["answered"] + summary["replay"]["dropped"] == 3 and summary["replay"]["answered"] >= 1
    for path in ("calib/left.yaml", "synth/previews", "eval_aloe/metrics.md", "replay/report.md", "replay/report.json"):
        assert (out / path).exists(), path
    assert "cannot do" in res.stderr  # says honestly what the offline default lacks


def test_quickstart_on_a_published_checkpoint(opencv_data, tmp_path):
    """``quickstart.sh --weights FILE.pth --arch rt-igev``: the chain on an imported model (a file in the
    authors' published format, made by the reference oracle) instead of the 300-step one."""
    for module in ("torch", "onnxruntime", "rclpy", "rosbags"):
        pytest.importorskip(module, reason=f"{module} is needed by the quickstart chain")
    import torch

    from m2s_train.errors import ConfigError
    from m2s_train.models.reference_oracle import load_oracle, reference_network

    try:
        oracle = load_oracle()
    except ConfigError as exc:
        pytest.skip(str(exc))
    weights = tmp_path / "igev_rt" / "sceneflow.pth"
    weights.parent.mkdir()
    torch.save(oracle.official_state_dict(reference_network("rt-igev", seed=1)), weights)
    out = tmp_path / "qs"
    cmd = [sys.executable, str(ROOT / "scripts" / "quickstart.py"), "--out", str(out), "--weights", str(weights),
           "--arch", "rt-igev", "--synth-images", "3", "--bag-frames", "2", "--replay-rate", "0",
           "--export-height", "96", "--export-width", "128", "--quiet"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["name"] == "rt-igev" and summary["model"]["imported_from"] == str(weights)
    assert (out / "imported" / "MODEL_CARD.md").is_file() and "Scene Flow" in res.stderr
    assert summary["onnx"]["max_mean_abs_diff_px"] < 0.01 and summary["replay"]["answered"] >= 1
    meta = json.loads(Path(summary["onnx"]["path"] + ".json").read_text())
    assert meta["model_card"]["licence"] == "MIT" and meta["model_card"]["source"]["file"] == "sceneflow.pth"
    # run again: the import is reused, not repeated
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert res.returncode == 0 and "already imported" in res.stderr, res.stderr[-2000:]
