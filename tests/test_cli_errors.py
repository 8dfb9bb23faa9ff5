"""Every CLI as a user runs it, over a table of bad inputs and faults: exit code 2, exactly one
``error:`` line that names the problem, no traceback, and nothing half-written on disk.

Each case is a real subprocess (``python -m ...``), so the figure is the product's, not one
test process's. Cases that need torch, ROS bag support or the opencv-doc data skip where absent.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
torch = pytest.importorskip("torch")

MODULES = {"m2s-train": "m2s_train.cli", "m2s-calib": "calib.cli", "m2s-export": "m2s_export.cli",
           "m2s-bag": "m2s_stereo.bag_cli", "m2s-eval-bag": "m2s_stereo.replay"}


@dataclass
class Case:
    name: str
    argv: list[str]  # first item: the command (a key of MODULES)
    message: str  # regex the one error line must match
    absent: list[str] = field(default_factory=list)  # paths that must not exist afterwards
    unchanged: list[str] = field(default_factory=list)  # paths whose bytes must not change
    needs: str = ""  # "ros" (rosbags), "rclpy", "opencv"


def _photo(rng: np.random.Generator, h: int = 64, w: int = 96) -> np.ndarray:
    img = cv2.resize(rng.uniform(0, 255, (4, 5, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(3):
        cv2.circle(img, (int(rng.integers(10, w - 10)), int(rng.integers(10, h - 10))), int(rng.integers(6, 16)),
                   rng.uniform(0, 255, 3).tolist(), -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def _snapshot(paths: list[Path]) -> dict[str, bytes | None]:
    out = {}
    for p in paths:
        files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p] if p.is_file() else []
        for f in files:
            out[str(f)] = f.read_bytes()
        if not files:
            out[str(p)] = None
    return out


def _manifest(folder: Path, tool: str, written: list[str]) -> None:
    """The manifest a command writes beside its output (calib.safe_files.OwnedOutput.finish)."""
    (folder / ".m2s-output.json").write_text(json.dumps({"tool": tool, "complete": True, "written": written}))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Inputs every case can use: a checkpoint, a run with checkpoints, a dataset, bags, broken files."""
    from m2s_train.models import create_model, save_model
    from m2s_train.synth.pipeline import SynthConfig, list_images, run_synthesis
    from m2s_train.config import load_config
    from m2s_train.train import TrainConfig, train

    w = tmp_path_factory.mktemp("world")
    rng = np.random.default_rng(0)
    (w / "photos").mkdir()
    for i in range(4):
        cv2.imwrite(str(w / "photos" / f"p{i}.png"), _photo(rng))
    synth = load_config(SynthConfig, None, {"disparity.min_max_disparity": 6.0, "disparity.max_max_disparity": 20.0,
                                            "disparity.overshoot_max": 24.0})
    run_synthesis(list_images(str(w / "photos")), w / "ds", synth, progress=False)
    torch.manual_seed(0)
    save_model(create_model("igev-tiny"), w / "ck")
    edited = w / "ck_edited"
    save_model(create_model("igev-tiny"), edited)
    meta = json.loads((edited / "model.json").read_text())
    meta["config"]["max_disp"] = 256
    (edited / "model.json").write_text(json.dumps(meta))
    corrupt = w / "ck_corrupt"
    save_model(create_model("igev-tiny"), corrupt)
    (corrupt / "model.json").write_text('{"name": "igev-tiny", "conf')

    base = {"model": "igev-tiny", "datasets": [f"synth:{w / 'ds'}"], "crop": [64, 96], "batch_size": 2, "steps": 4,
            "num_workers": 0, "checkpoint_every": 2, "log_every": 1000}
    (w / "train.yaml").write_text(json.dumps(base))
    train(load_config(TrainConfig, None, base), w / "run", progress=False)
    # a run whose only checkpoint has a truncated train.json / a state.pt that needs unpickling
    for name in ("run_cut", "run_pickle"):
        train(load_config(TrainConfig, None, {**base, "steps": 2}), w / name, progress=False)
    (w / "run_cut" / "checkpoints" / "step_00000002" / "train.json").write_text('{"step": 2, "con')
    torch.save({"step": 2, "evil": Path("/")}, w / "run_pickle" / "checkpoints" / "step_00000002" / "state.pt")
    (w / "bad_keep.yaml").write_text(json.dumps({**base, "keep_checkpoints": -1}))

    # a dataset whose GT is NaN everywhere; a disparity saved as a Python-object array
    for sub in ("left", "right", "disparity"):
        (w / "nangt" / sub).mkdir(parents=True)
        (w / "objgt" / sub).mkdir(parents=True)
    img = _photo(rng)
    for root in ("nangt", "objgt"):
        cv2.imwrite(str(w / root / "left" / "a.png"), img)
        cv2.imwrite(str(w / root / "right" / "a.png"), img)
    np.save(w / "nangt" / "disparity" / "a.npy", np.full(img.shape[:2], np.nan, np.float32))
    np.save(w / "objgt" / "disparity" / "a.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)

    # synthesis output with a corrupt dataset.json
    (w / "ds_corrupt").mkdir()
    (w / "ds_corrupt" / "dataset.json").write_text('{"format": "m2s-synth-v2", "con')
    (w / "a_file").write_text("not a directory\n")

    # bag sources: a folder with a corrupt image in the middle; a bag whose camera_info is for another size
    for sub in ("left", "right"):
        (w / "pairs" / sub).mkdir(parents=True)
    for i in range(3):
        for sub in ("left", "right"):
            cv2.imwrite(str(w / "pairs" / sub / f"{i}.png"), img)
    (w / "pairs" / "left" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    try:
        _recorded_bag_with_wrong_camera_info(w / "bag_mismatch", img)
        _recorded_bag_with_wrong_camera_info(w / "bag_nan_p", img, nan_p=True)
    except ImportError:
        pass

    # round 3: outputs that exist (never replaced without --overwrite), a run whose checkpoints are gone,
    # labels that cannot train anything
    (w / "broken_photos").mkdir()
    (w / "broken_photos" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (w / "old.onnx").write_bytes(b"an earlier export")
    (w / "old.onnx.json").write_text("{}")
    (w / "old_eval" / "00_synth").mkdir(parents=True)
    (w / "old_eval" / "00_synth" / "metrics.json").write_text("{}")
    (w / "old_eval" / "00_synth" / "error_model_0007.png").write_bytes(b"old figure")
    _manifest(w / "old_eval", "m2s-train eval", ["00_synth/metrics.json", "00_synth/error_model_0007.png"])
    (w / "old_rep").mkdir()
    (w / "old_rep" / "report.json").write_text("{}")
    _manifest(w / "old_rep", "m2s-eval-bag", ["report.json"])
    (w / "mine").mkdir()
    (w / "mine" / "thesis.tex").write_text("not a report")
    train(load_config(TrainConfig, None, {**base, "steps": 2}), w / "run_gone", progress=False)
    import shutil

    shutil.rmtree(w / "run_gone" / "checkpoints" / "step_00000002")  # 'latest' and the summary stay
    for sub in ("left", "right", "disparity"):
        (w / "onepx" / sub).mkdir(parents=True)
    one = np.zeros(img.shape[:2], np.uint16)
    one[10, 10] = 5 * 256
    for i in range(2):
        cv2.imwrite(str(w / "onepx" / "left" / f"{i}.png"), img)
        cv2.imwrite(str(w / "onepx" / "right" / f"{i}.png"), img)
        cv2.imwrite(str(w / "onepx" / "disparity" / f"{i}.png"), one)
    return w


def _recorded_bag_with_wrong_camera_info(path: Path, img: np.ndarray, nan_p: bool = False) -> None:
    """What a robot can record (m2s-bag make refuses to write it): camera_info for 80x60, images 96x64
    (``nan_p``: for 96x64, with a NaN in the right projection instead)."""
    from rosbags.rosbag2 import Writer

    from calib import StereoCamera
    from m2s_stereo.bag_tools import LEFT, LEFT_INFO, RIGHT, RIGHT_INFO, _header, _image, _info, typestore

    ts = typestore()
    cam = StereoCamera.ideal(96 if nan_p else 80, 64 if nan_p else 60, focal_px=80.0, baseline_m=0.1)
    with Writer(path, version=8) as writer:
        conns = {}
        for i in range(2):
            stamp = 10**9 + i * 10**8
            h = _header(ts, stamp, "left_camera_optical_frame")
            right_info = _info(ts, h, cam.right)
            if nan_p:
                right_info.p[3] = np.nan
            for topic, msg in ((LEFT, _image(ts, h, img, "rgb8")), (RIGHT, _image(ts, h, img, "rgb8")),
                               (LEFT_INFO, _info(ts, h, cam.left)), (RIGHT_INFO, right_info)):
                if topic not in conns:
                    conns[topic] = writer.add_connection(topic, msg.__msgtype__, typestore=ts)
                writer.write(conns[topic], stamp, ts.serialize_cdr(msg, msg.__msgtype__))


def cases(w: Path) -> list[Case]:
    ck, run = str(w / "ck"), str(w / "run")
    ds = f"synth:{w / 'ds'}"
    data = ["--dataset", ds, "--model", "igev-tiny", "--crop", "64", "96", "--batch-size", "2", "--num-workers", "0"]
    return [
        # -- nothing lost ------------------------------------------------------------------------------
        Case("pretrain over an existing run", ["m2s-train", "pretrain", "--out", run, *data, "--steps", "2"],
             r"already holds a training run .*--resume.*--overwrite", unchanged=[run]),
        Case("finetune over an existing run", ["m2s-train", "finetune", "--out", run, *data, "--steps", "2",
                                               "--no-s2dkd", "--teacher-cache", str(w / "tc")],
             r"already holds a training run", unchanged=[run]),
        Case("resume with only a corrupt checkpoint", ["m2s-train", "pretrain", "--config", str(w / "train.yaml"),
                                                       "--out", str(w / "run_cut"), "--steps", "2", "--resume"],
             r"none of the 1 checkpoint\(s\) .* is intact .*train\.json is corrupt", unchanged=[str(w / "run_cut")]),
        Case("resume refuses to unpickle", ["m2s-train", "pretrain", "--config", str(w / "train.yaml"),
                                            "--out", str(w / "run_pickle"), "--steps", "2", "--resume"],
             r"refused to unpickle .*state\.pt", unchanged=[str(w / "run_pickle")]),
        Case("keep_checkpoints -1", ["m2s-train", "pretrain", "--config", str(w / "bad_keep.yaml"), "--out",
                                     str(w / "new_run")], r"keep_checkpoints must be >= 1, got -1",
             absent=[str(w / "new_run")]),
        Case("resume and overwrite together", ["m2s-train", "pretrain", "--out", run, *data, "--resume",
                                               "--overwrite"], r"contradict", unchanged=[run]),
        # -- bad numbers -------------------------------------------------------------------------------
        Case("lr -1", ["m2s-train", "pretrain", "--out", str(w / "x"), "--lr", "-1"], r"--lr: must be > 0, got -1",
             absent=[str(w / "x")]),
        Case("lr nan", ["m2s-train", "pretrain", "--out", str(w / "x"), "--lr", "nan"], r"--lr: expected a finite",
             absent=[str(w / "x")]),
        Case("train-iters 0", ["m2s-train", "pretrain", "--out", str(w / "x"), "--train-iters", "0"],
             r"--train-iters: must be >= 1", absent=[str(w / "x")]),
        Case("synth limit -1", ["m2s-train", "synth", "--images", str(w / "photos"), "--out", str(w / "x"),
                                "--limit", "-1"], r"--limit: must be >= 0", absent=[str(w / "x")]),
        Case("eval max-images -1", ["m2s-train", "eval", "--checkpoint", ck, "--dataset", ds, "--max-images", "-1"],
             r"--max-images: must be >= 1"),
        Case("eval iters 0", ["m2s-train", "eval", "--checkpoint", ck, "--dataset", ds, "--iters", "0"],
             r"--iters: must be >= 1"),
        Case("export iters 0", ["m2s-export", "--checkpoint", ck, "--onnx", str(w / "x.onnx"), "--height", "64",
                                "--width", "96", "--iters", "0"], r"--iters: must be >= 1", absent=[str(w / "x.onnx")]),
        Case("bag rate nan", ["m2s-bag", "make", "--from", f"folder:{w / 'pairs'}", "--out", str(w / "xbag"),
                              "--rate", "nan"], r"--rate: expected a finite", absent=[str(w / "xbag")]),
        Case("eval-bag rate nan", ["m2s-eval-bag", "--bag", str(w / "bag_mismatch"), "--model", ck, "--out",
                                   str(w / "xrep"), "--rate", "nan"], r"--rate: expected a finite",
             absent=[str(w / "xrep")]),
        Case("bag hold 0", ["m2s-bag", "make", "--from", f"folder:{w / 'pairs'}", "--out", str(w / "xbag"),
                            "--hold", "0"], r"--hold: must be >= 1", absent=[str(w / "xbag")]),
        Case("bag noise -1", ["m2s-bag", "make", "--from", f"folder:{w / 'pairs'}", "--out", str(w / "xbag"),
                              "--noise", "-1"], r"--noise: must be >= 0", absent=[str(w / "xbag")]),
        Case("eval-bag unknown node parameter", ["m2s-eval-bag", "--bag", str(w / "bag_mismatch"), "--model", ck,
                                                 "--out", str(w / "xrep"), "--param", "confidence=1"],
             r"--param: expected NAME=VALUE with NAME one of the node's parameters", absent=[str(w / "xrep")]),
        Case("eval-bag parameter out of range", ["m2s-eval-bag", "--bag", str(w / "bag_mismatch"), "--model", ck,
                                                 "--out", str(w / "xrep"), "--param", "confidence_threshold=2"],
             r"--param: confidence_threshold must be in \[0.0, 1.0\], got 2.0", absent=[str(w / "xrep")]),
        # -- round 3: outputs never replaced without --overwrite; runs and labels that cannot train ----
        Case("synth that writes nothing", ["m2s-train", "synth", "--images", str(w / "broken_photos"), "--out",
                                           str(w / "ds_none")],
             r"no sample was written: all 1 image\(s\) of this shard were skipped \(the first, .*a\.png: cannot "
             r"decode image"),
        Case("export over an existing ONNX", ["m2s-export", "--checkpoint", ck, "--onnx", str(w / "old.onnx"),
                                              "--height", "64", "--width", "96"],
             r"--onnx .*old\.onnx exists: pass --overwrite to replace it", unchanged=[str(w / "old.onnx"),
                                                                                    str(w / "old.onnx.json")]),
        Case("eval over an earlier report", ["m2s-train", "eval", "--checkpoint", ck, "--dataset", ds, "--out",
                                             str(w / "old_eval")],
             r"--out .*old_eval holds an earlier output of m2s-train eval: pass --overwrite",
             unchanged=[str(w / "old_eval")]),
        Case("eval --overwrite over files that are no report", ["m2s-train", "eval", "--checkpoint", ck, "--dataset",
                                                               ds, "--out", str(w / "mine"), "--overwrite"],
             r"mine holds files that m2s-train eval did not write \(thesis\.tex\): choose a new or empty directory",
             unchanged=[str(w / "mine")]),
        Case("eval-bag over an earlier report", ["m2s-eval-bag", "--bag", str(w / "bag_mismatch"), "--model", ck,
                                                 "--out", str(w / "old_rep"), "--mode", "offline"],
             r"old_rep holds an earlier output of m2s-eval-bag: pass --overwrite", unchanged=[str(w / "old_rep")],
             needs="ros"),
        Case("eval-bag names the cause of every skipped frame", ["m2s-eval-bag", "--bag", str(w / "bag_nan_p"),
                                                                  "--model", ck, "--out", str(w / "rep_nan"), "--mode",
                                                                  "offline"],
             r"no complete stereo frame could be read: skipped frame \d+: P contains NaN or inf",
             absent=[str(w / "rep_nan")], needs="ros"),
        Case("resume with 'latest' but no checkpoint left", ["m2s-train", "pretrain", "--config", str(w / "train.yaml"),
                                                            "--out", str(w / "run_gone"), "--steps", "4", "--resume"],
             r"--resume: .*run_gone holds a run \(checkpoints/latest, train_summary\.json\) but no checkpoint is "
             r"left", unchanged=[str(w / "run_gone")]),
        Case("finetune on labels that are all NaN", ["m2s-train", "finetune", "--out", str(w / "ft_nan"), "--dataset",
                                                    f"folder:{w / 'nangt'}", "--model", "igev-tiny", "--crop", "64",
                                                    "96", "--steps", "2", "--no-s2dkd", "--num-workers", "0",
                                                    "--batch-size", "1"],
             r"no image has labels to train on: each of the 1 image\(s\) has fewer than 64 usable labelled pixels "
             r"\(0 in all\)", absent=[str(w / "ft_nan")]),
        Case("finetune on one label per image", ["m2s-train", "finetune", "--out", str(w / "ft_one"), "--dataset",
                                                f"folder:{w / 'onepx'}", "--model", "igev-tiny", "--crop", "64", "96",
                                                "--steps", "2", "--no-s2dkd", "--num-workers", "0", "--batch-size", "1"],
             r"each of the 2 image\(s\) has fewer than 64 usable labelled pixels \(2 in all\)",
             absent=[str(w / "ft_one")]),
        # -- no silent wrong number -------------------------------------------------------------------
        Case("eval with no valid GT", ["m2s-train", "eval", "--checkpoint", ck, "--dataset", f"folder:{w / 'nangt'}",
                                       "--iters", "1", "--out", str(w / "nan_eval")],
             r"nothing could be measured .*none of its 1 pair\(s\) has a valid GT pixel"),
        Case("edited model.json", ["m2s-train", "eval", "--checkpoint", str(w / "ck_edited"), "--dataset", ds,
                                   "--max-images", "1"], r"does not match the config saved inside .*max_disp 256 vs 64"),
        Case("corrupt model.json", ["m2s-train", "eval", "--checkpoint", str(w / "ck_corrupt"), "--dataset", ds],
             r"model\.json is corrupt"),
        Case("object-dtype npy", ["m2s-train", "eval", "--checkpoint", ck, "--dataset", f"folder:{w / 'objgt'}"],
             r"refused to unpickle"),
        Case("export of model.json (not a checkpoint)", ["m2s-export", "--checkpoint", str(w / "ck" / "model.json"),
                                                         "--onnx", str(w / "y.onnx"), "--height", "64", "--width", "96"],
             r"not a model checkpoint", absent=[str(w / "y.onnx"), str(w / "y.onnx.json")]),
        Case("export of an edited checkpoint", ["m2s-export", "--checkpoint", str(w / "ck_edited"), "--onnx",
                                                str(w / "z.onnx"), "--height", "64", "--width", "96"],
             r"max_disp 256 vs 64", absent=[str(w / "z.onnx"), str(w / "z.onnx.json")]),
        Case("export height 10", ["m2s-export", "--checkpoint", ck, "--onnx", str(w / "h.onnx"), "--height", "10",
                                  "--width", "96"], r"--height: must be >= 64", absent=[str(w / "h.onnx")]),
        # -- files ----------------------------------------------------------------------------------------
        Case("unwritable --out", ["m2s-train", "synth", "--images", str(w / "photos"), "--out",
                                  str(w / "a_file" / "ds")], r"a_file/ds: Not a directory"),
        Case("corrupt dataset.json", ["m2s-train", "synth", "--images", str(w / "photos"), "--out",
                                      str(w / "ds_corrupt"), "--resume"], r"dataset\.json is corrupt",
             unchanged=[str(w / "ds_corrupt")]),
        Case("bag make with a corrupt image", ["m2s-bag", "make", "--from", f"folder:{w / 'pairs'}", "--out",
                                               str(w / "bag_new")], r"cannot decode image .*1\.png",
             absent=[str(w / "bag_new")], needs="ros"),
        Case("eval-bag with nothing evaluated", ["m2s-eval-bag", "--bag", str(w / "bag_mismatch"), "--model", ck,
                                                 "--out", str(w / "rep"), "--mode", "offline"],
             r"no frame was evaluated: 0 of 2 pairs .*camera_info is 80x60 but images are 96x64", needs="ros"),
        Case("live eval-bag with nothing answered", ["m2s-eval-bag", "--bag", str(w / "bag_mismatch"), "--model", ck,
                                                     "--out", str(w / "rep_live"), "--timeout", "2"],
             # 1 or 2: the node keeps only the newest pair, so on a busy machine the second pair can
             # replace the first before the worker takes it (both are bad; either way none is answered)
             r"no frame was evaluated: 0 of 2 pairs \(live mode\): the node answered none of them \([12] bad frame",
             needs="rclpy"),
        # -- calibration ---------------------------------------------------------------------------------
        Case("calib absurd square", ["m2s-calib", "stereo", "--left", "l*.jpg", "--right", "r*.jpg", "--square",
                                     "1e30", "--out", str(w / "cal")], r"square size must be .* got 1e\+30",
             absent=[str(w / "cal")]),
        Case("calib absurd board", ["m2s-calib", "stereo", "--left", "l*.jpg", "--right", "r*.jpg", "--board",
                                    "100000x3", "--out", str(w / "cal")], r"not a real chessboard",
             absent=[str(w / "cal")]),
        Case("calib quality gate", ["m2s-calib", "stereo", "--left", "OPENCV/left*.jpg", "--right",
                                    "OPENCV/right*.jpg", "--max-rms", "0.2", "--out", str(w / "cal_gate")],
             r"quality gate, nothing written: RMS reprojection error 0\.4\d+ px > 0\.2 px .*--force",
             absent=[str(w / "cal_gate")], needs="opencv"),
    ]


def _run(case: Case, opencv: Path | None) -> subprocess.CompletedProcess:
    argv = [a.replace("OPENCV", str(opencv)) for a in case.argv[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", MODULES[case.argv[0]], *argv], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=240)


def test_every_cli_fails_cleanly(world):
    from calib.example_data import find_opencv_examples

    opencv = find_opencv_examples()
    try:
        import rosbags  # noqa: F401

        have_ros = (world / "bag_mismatch").exists()
    except ImportError:
        have_ros = False
    have_rclpy = have_ros and importlib.util.find_spec("rclpy") is not None
    table = [c for c in cases(world) if not (c.needs == "ros" and not have_ros) and not (c.needs == "rclpy" and not have_rclpy)
             and not (c.needs == "opencv" and opencv is None)]
    before = {c.name: _snapshot([Path(p) for p in c.unchanged]) for c in table}
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda c: _run(c, opencv), table))
    failures = []
    for case, res in zip(table, results):
        errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        problems = []
        if res.returncode != 2:
            problems.append(f"exit {res.returncode}")
        if "Traceback" in res.stderr:
            problems.append("traceback")
        if len(errors) != 1:
            problems.append(f"{len(errors)} error: lines")
        elif not re.search(case.message, errors[0]):
            problems.append(f"message {errors[0]!r} !~ {case.message!r}")
        problems += [f"{p} exists" for p in case.absent if Path(p).exists()]
        if _snapshot([Path(p) for p in case.unchanged]) != before[case.name]:
            problems.append("an existing file changed")
        if problems:
            failures.append(f"{case.name}: {', '.join(problems)}\n    stderr: {res.stderr[-600:]}")
    assert not failures, "\n".join(failures)
    assert len(table) >= 25
    # no valid GT: strict JSON with null metrics (never NaN, never a perfect 0 %), n/a in the table
    metrics = json.loads((world / "nan_eval" / "00_folder" / "metrics.json").read_text())
    pixel = metrics["methods"]["model"]["pixel"]
    assert pixel["pixels"] == 0 and all(pixel[k] is None for k in ("epe", "d1", "bad1", "bad2", "bad3"))
    assert "n/a" in (world / "nan_eval" / "00_folder" / "metrics.md").read_text()


def test_a_failed_bag_make_can_be_retried(world):
    pytest.importorskip("rosbags")
    from m2s_stereo.bag_cli import main as bag_main

    src = world / "retry_pairs"
    for sub in ("left", "right"):
        (src / sub).mkdir(parents=True)
    img = _photo(np.random.default_rng(2))
    for i in range(3):
        for sub in ("left", "right"):
            cv2.imwrite(str(src / sub / f"{i}.png"), img)
    (src / "right" / "2.png").write_bytes(b"broken")
    out = world / "retry_bag"
    assert bag_main(["make", "--from", f"folder:{src}", "--out", str(out), "--quiet"]) == 2
    assert not out.exists() and not list(world.glob(".retry_bag*"))
    cv2.imwrite(str(src / "right" / "2.png"), img)
    assert bag_main(["make", "--from", f"folder:{src}", "--out", str(out), "--quiet"]) == 0
    assert out.is_dir()


def test_error_boundary_for_os_and_opencv_failures(capsys):
    """A full disk and an OpenCV assertion reach the user as one line, not a traceback."""
    import argparse
    import errno

    from calib.console import run_command

    def full_disk(_args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/model.safetensors")

    def opencv_assert(_args):
        cv2.resize(np.zeros((0, 0), np.uint8), (4, 4))

    args = argparse.Namespace(debug=False, quiet=True)
    assert run_command(full_disk, args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: /data/out/model.safetensors: No space left on device (free some space or choose another --out)"]
    assert run_command(opencv_assert, args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: OpenCV refused the input: (-215:Assertion failed)")
    with pytest.raises(cv2.error):
        run_command(opencv_assert, argparse.Namespace(debug=True, quiet=True))


def test_overwrite_deletes_the_earlier_report_first(world, tmp_path):
    """--overwrite leaves no figure of the earlier report beside the new metrics."""
    import shutil

    out = tmp_path / "report"
    shutil.copytree(world / "old_eval", out)
    res = subprocess.run([sys.executable, "-m", "m2s_train.cli", "eval", "--checkpoint", str(world / "ck"), "--dataset",
                          f"synth:{world / 'ds'}", "--max-images", "1", "--iters", "1", "--out", str(out), "--overwrite",
                          "--quiet"], capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    assert not (out / "00_synth" / "error_model_0007.png").exists()
    assert json.loads((out / "00_synth" / "metrics.json").read_text())["images"] == 1
