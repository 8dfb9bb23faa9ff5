"""A factory-calibrated stereo camera without ground truth, as a robotics engineer brings one (#28):
known intrinsics -> camera_info YAMLs -> a mono8 bag from NAME_left / NAME_right pictures -> the model on it
with pictures and label-free figures beside OpenCV SGBM, in m2s-eval-bag and in m2s-train eval. Real grey
pairs (Middlebury Aloe from opencv-doc), every step the product's CLI as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("rosbags", reason="rosbags is not installed: pip install 'mono2stereo[ros]'")

W, H = 256, 192
FX, BASELINE = 230.0, 0.075  # an Aloe quarter-scale pair read as a 7.5 cm camera


def _run(module: str, *args: object, cwd: Path) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                         timeout=600)
    assert res.returncode == 0, f"{module} {' '.join(map(str, args))}: {res.stderr[-2000:]}"
    return res


@pytest.fixture(scope="module")
def camera_world(opencv_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("own_camera")
    left = cv2.imread(str(opencv_data / "aloeL.jpg"), cv2.IMREAD_GRAYSCALE)
    right = cv2.imread(str(opencv_data / "aloeR.jpg"), cv2.IMREAD_GRAYSCALE)
    (root / "shots").mkdir()
    for k, x in enumerate((0, 120, 240)):  # three views: crops of the pair, resized to the camera's size
        crop = (slice(100, 100 + 900), slice(x, x + 1000))
        for side, image in (("left", left), ("right", right)):
            cv2.imwrite(str(root / "shots" / f"scene{k}_{side}.png"),
                        cv2.resize(image[crop], (W, H), interpolation=cv2.INTER_AREA))
    _run("calib.cli", "intrinsics", "--fx", FX, "--cx", (W - 1) / 2, "--cy", (H - 1) / 2, "--baseline", BASELINE,
         "--size", f"{W}x{H}", "--out", "cam", cwd=root)
    _run("m2s_stereo.bag_cli", "make", "--from", "folder:shots", "--calib", "cam", "--out", "bag", "--quiet", cwd=root)
    import torch

    from m2s_train.models import create_model, save_model

    torch.manual_seed(0)
    save_model(create_model("igev-tiny"), root / "ckpt")
    _run("m2s_export.cli", "--checkpoint", "ckpt", "--onnx", "model.onnx", "--height", 96, "--width", 128,
         "--no-fp16-check", "--no-verify", "--quiet", cwd=root)
    return root


def test_the_model_on_a_camera_without_ground_truth_is_shown_and_compared_with_sgbm(camera_world):
    root = camera_world
    _run("m2s_stereo.replay", "--bag", "bag", "--model", "model.onnx", "--out", "rep", "--mode", "offline",
         "--param", "lr_check=true", "--param", "confidence_threshold=0", "--quiet", cwd=root)
    report = json.loads((root / "rep" / "report.json").read_text())
    lf = report["accuracy"]["label_free"]
    assert lf["frames"] == 3 and 0 < lf["published_share"] < 1  # the LR check publishes a share, and says which
    for prefix, suffix in (("", ""), ("", "_all"), ("sgbm_", ""), ("sgbm_", "_all")):  # published, all, the baseline
        assert 0 < lf[f"{prefix}photometric{suffix}"] < 1 and 0 <= lf[f"{prefix}lr_consistency{suffix}"] <= 1
        assert 0 <= lf[f"{prefix}at_range_limit{suffix}"] <= 1
    assert 0.3 < lf["sgbm_share"] <= 1
    text = (root / "rep" / "report.md").read_text()
    assert "on the published pixels (" in text and "on all the model's pixels" in text and "OpenCV SGBM (" in text
    # pictures of what the model does: left image, disparity, depth, confidence
    assert "OpenCV SGBM (fair: search range 128 px, the model's range on this camera, left band answered" in text
    assert "on all pixels (its holes filled along the row)" in text
    # pictures of what the model does on every frame: left image, disparity, depth, confidence
    pictures = sorted((root / "rep").glob("result_*.png"))
    assert len(pictures) == 3 and all(cv2.imread(str(p)).shape[1] > 600 for p in pictures)
    _run("m2s_stereo.replay", "--bag", "bag", "--model", "model.onnx", "--out", "rep1", "--mode", "offline",
         "--examples", "1", "--param", "confidence_threshold=0", "--quiet", cwd=root)
    assert len(list((root / "rep1").glob("result_*.png"))) == 1


def test_range_limit_share_is_in_the_cameras_pixels():
    """The node scales the model's maximum disparity from the exported width to the camera's; the replay's
    "at the range limit" share must use the same (it used the exported width's: 19 % flagged, none near it)."""
    from types import SimpleNamespace

    from m2s_stereo.replay import Evaluation

    ev = Evaluation(max_disparity=64)
    frame = SimpleNamespace(left=np.zeros((480, 640, 3), np.uint8))
    assert ev.camera_max_disparity(frame, SimpleNamespace(input_size=(96, 128))) == pytest.approx(320.0)
    assert Evaluation().camera_max_disparity(frame, None) is None


def test_training_eval_gives_sgbm_a_label_free_row_without_a_disparity_folder(camera_world):
    root = camera_world
    for side in ("left", "right"):  # the folder dataset's layout, without disparity/
        (root / "pairs" / side).mkdir(parents=True, exist_ok=True)
        for k in range(2):
            (root / "pairs" / side / f"{k}.png").write_bytes((root / "shots" / f"scene{k}_{side}.png").read_bytes())
    res = _run("m2s_train.cli", "eval", "--checkpoint", "ckpt", "--dataset", "folder:pairs", "--sgbm", "--label-free",
               "--out", "ev", "--quiet", cwd=root)
    free = json.loads(res.stdout)[0]["label_free"]
    assert set(free) == {"model", "sgbm"} and 0 < free["sgbm"]["photometric"] < 1 and 0 < free["sgbm"]["share"] <= 1
    assert "| sgbm |" in (root / "ev" / "00_folder" / "metrics.md").read_text()


def test_synthesis_training_and_export_say_what_the_model_can_measure(camera_world):
    """synth --bag on the camera's own footage with a range the model can hold (and the warning when it cannot),
    pretrain --init, before / after label-free, the export's measurable depth interval, a replay."""
    root = camera_world
    fb = FX * BASELINE  # 17.25 px m: 0.2 m is 86 px at 256 px width, beyond igev-tiny's 64; 0.5 m is 35 px
    common = ["--init", "ckpt", "--steps", 2, "--batch-size", 1, "--crop", 64, 128, "--num-workers", 0]
    for name, near in (("near", 0.2), ("fits", 0.5)):
        _run("m2s_train.cli", "synth", "--bag", "bag", "--topic", "left/image_rect", "--depth-range", near, 5.0,
             "--out", f"synth_{name}", "--quiet", cwd=root)
        res = _run("m2s_train.cli", "pretrain", *common, "--dataset", f"synth:synth_{name}", "--out", f"pre_{name}",
                   "--quiet", cwd=root)
        summary = json.loads((root / f"pre_{name}" / "train_summary.json").read_text())["labels_beyond_max_disp"]
        warned = "at or beyond the model's maximum disparity 64 px" in res.stderr
        assert warned == (name == "near") and (summary["share"] > 0.01) == (name == "near"), (name, summary)
    step = sorted((root / "pre_fits" / "checkpoints").glob("step_*"))[-1]
    res = _run("m2s_export.cli", "--checkpoint", step, "--onnx", "after.onnx", "--height", 96, "--width", 128,
               "--camera", "cam", "--no-fp16-check", "--no-verify", "--quiet", cwd=root)
    depth = json.loads(res.stdout)["depth_range"]
    assert depth["nearest_depth_m"] == pytest.approx(fb / (64 * W / 128)) and "from 0.135 m" in res.stderr
    for name, model in (("before", "model.onnx"), ("after", "after.onnx")):  # label-free before / after, and SGBM
        _run("m2s_stereo.replay", "--bag", "bag", "--model", model, "--out", f"rep_{name}", "--mode", "offline",
             "--quiet", cwd=root)
        lf = json.loads((root / f"rep_{name}" / "report.json").read_text())["accuracy"]["label_free"]
        assert np.isfinite(lf["photometric_all"]) and np.isfinite(lf["sgbm_photometric"])
