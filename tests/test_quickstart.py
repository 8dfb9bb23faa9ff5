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
    assert summary["pretrain"]["steps"] == 8 and summary["onnx"]["max_mean_abs_diff_px"] < 0.01
    assert summary["replay"]["answered"] + summary["replay"]["dropped"] == 3 and summary["replay"]["answered"] >= 1
    for path in ("calib/left.yaml", "synth/previews", "eval_aloe/metrics.md", "replay/report.md", "replay/report.json"):
        assert (out / path).exists(), path
    assert "cannot do" in res.stderr  # says honestly what the offline default lacks
