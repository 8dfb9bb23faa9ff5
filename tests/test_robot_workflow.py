"""The robot workflow of the README (record -> synth --bag -> LiDAR labels -> pretrain / finetune ->
label-free before/after -> export -> replay), as a CPU smoke run: every step is the product's CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_robot_workflow_runs_end_to_end(opencv_data, tmp_path):
    for module in ("torch", "onnxruntime", "rclpy", "rosbags"):
        pytest.importorskip(module, reason=f"{module} is needed by the robot workflow")
    out = tmp_path / "robot"
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "robot_workflow.py"), "--quick", "--out", str(out)],
                         capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "workflow.json").read_text())
    assert report["synthesis"]["written"] >= 4 and report["synthesis"]["frames"]["source"].startswith("drive:")
    # 32 simulated beams over the lower three quarters of a 120-row image: about a quarter of the pixels
    assert report["labels"]["frames"] == 6 and 0.1 < report["labels"]["density"] < 0.35
    rows = report["holdout"]
    assert len(rows) == 3
    for r in rows.values():  # label-free figures and, the demo bag having GT, EPE for every stage
        assert 0 < r["photometric"] < 1 and 0 <= r["lr_consistency"] <= 1 and r["epe"] > 0
    assert report["replay"]["answered"] == report["replay"]["frames"] == 6
    # no Depth Anything weights offline: the fine-tuning says it learns from the labels alone (a procedural teacher
    # aligned to no label was every image's, and S2DKD with no usable teacher is refused)
    assert "| + LiDAR fine-tuning (labels only) |" in (out / "workflow.md").read_text()
    assert "no --depth-model: the fine-tuning learns from the LiDAR labels alone" in res.stderr
    # a stereo-only recording (no LiDAR), given with paths relative to the caller's directory, not the repo's
    made = subprocess.run([sys.executable, "-m", "m2s_stereo.bag_cli", "make", "--from", "synth:robot/scenes/drive",
                           "--out", "stereo_only", "--storage", "mcap", "--rate", "5", "--focal", "200", "--baseline",
                           "0.06", "--quiet"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    base = next((out / "base" / "checkpoints").glob("step_*")).relative_to(tmp_path)
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "robot_workflow.py"), "--quick", "--out", "mine",
                          "--bag", "stereo_only", "--holdout-bag", "robot/bags/holdout", "--base", str(base)],
                         capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "has no LiDAR topic 'lidar/points'" in res.stderr and "skipped" in res.stderr
    report = json.loads((tmp_path / "mine" / "workflow.json").read_text())
    assert "labels" not in report and len(report["holdout"]) == 2 and report["replay"]["answered"] == 6
