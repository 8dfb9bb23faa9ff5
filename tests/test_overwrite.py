"""``--overwrite`` never deletes what the project did not write (calib.safe_files.OwnedOutput).

For every command with an output, five targets, each run as a subprocess inside a throwaway tree with
HOME pointed into it: its own earlier output with a user's file beside it (replaced, the user's file
kept); a folder of user files; ``.`` (the working directory, holding an earlier output and user files);
a symlink to a folder of user files; the folder that holds the command's own input. In every cell
nothing of the user's is deleted, and a refusal is one ``error:`` line with exit status 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")

ROOT = Path(__file__).resolve().parents[1]
MODULES = {"m2s-train": "m2s_train.cli", "m2s-export": "m2s_export.cli", "m2s-eval-bag": "m2s_stereo.replay"}
USER_FILES = {"thesis.txt": b"three years of work", "sub/data.csv": b"1,2,3"}


def _run(argv: list[str], cwd: Path, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "ros2_ws/src/m2s_stereo"),
                                                                         os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", MODULES[argv[0]], *map(str, argv[1:])], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _user_files(folder: Path) -> None:
    for name, data in USER_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def _user_files_intact(folder: Path) -> bool:
    return all((folder / n).is_file() and (folder / n).read_bytes() == d for n, d in USER_FILES.items())


def _one_error(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith(("WARNING", "[m2s]"))]
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A checkpoint, a folder dataset with GT, a bag of it, a training config and (where the authors' code is
    beside the checkout) a published-format RT-IGEV++ file, in a throwaway tree."""
    from m2s_train.models import create_model, save_model

    w = tmp_path_factory.mktemp("overwrite_inputs")
    torch.manual_seed(0)
    save_model(create_model("igev-tiny"), w / "ck")
    rng = np.random.default_rng(0)
    for sub in ("left", "right", "disparity"):
        (w / "data" / sub).mkdir(parents=True)
    for i in range(2):
        left = cv2.resize(rng.uniform(0, 255, (6, 8, 3)).astype(np.float32), (96, 64)).astype(np.uint8)
        cv2.imwrite(str(w / "data" / "left" / f"{i}.png"), left)
        cv2.imwrite(str(w / "data" / "right" / f"{i}.png"), np.roll(left, -4, axis=1))
        np.save(w / "data" / "disparity" / f"{i}.npy", np.full((64, 96), 4.0, np.float32))
    (w / "train.yaml").write_text(json.dumps({
        "model": "igev-tiny", "datasets": [f"folder:{w / 'data'}"], "crop": [64, 96], "batch_size": 1, "steps": 2,
        "num_workers": 0, "checkpoint_every": 2, "log_every": 1000, "train_iters": 1}))
    found = {"root": w, "ck": w / "ck", "data": w / "data", "yaml": w / "train.yaml"}
    try:
        from m2s_stereo.bag_tools import frames_from_folder, write_bag

        write_bag(w / "bags" / "bag", frames_from_folder(w / "data", None, 10.0, 10**18), storage="mcap")
        found["bag"] = w / "bags" / "bag"
    except ImportError:
        pass
    try:
        from m2s_train.models.reference_oracle import load_oracle, reference_network

        torch.save(load_oracle().official_state_dict(reference_network("rt-igev", seed=1)), w / "sceneflow.pth")
        found["pth"] = w / "sceneflow.pth"
    except Exception:  # noqa: BLE001 -- the authors' code is not beside the checkout: the import row skips
        pass
    return found


def _commands(i: dict[str, Path]) -> dict[str, dict]:
    """Per command: its argv up to the output flag, and the input a 'folder that holds the input' is built on."""
    return {
        "m2s-train eval": {"argv": ["m2s-train", "eval", "--checkpoint", i["ck"], "--dataset", f"folder:{i['data']}",
                                    "--max-images", "1", "--iters", "1", "--quiet", "--out"], "input": "data"},
        "m2s-train pretrain": {"argv": ["m2s-train", "pretrain", "--config", i["yaml"], "--quiet", "--out"],
                               "input": None},
        "m2s-export": {"argv": ["m2s-export", "--checkpoint", i["ck"], "--height", "64", "--width", "96", "--iters",
                                "1", "--no-fp16-check", "--onnx"], "input": None},
        "m2s-eval-bag": {"argv": ["m2s-eval-bag", "--bag", i.get("bag"), "--model", i["ck"], "--mode", "offline",
                                  "--quiet", "--out"], "input": "bag"},
        "m2s-train import": {"argv": ["m2s-train", "import", i.get("pth"), "--arch", "rt-igev", "--out"],
                             "input": "pth"},
    }


def _out_arg(command: str, folder: Path) -> Path:
    return folder / "model.onnx" if command == "m2s-export" else folder


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file() and not p.is_symlink()}


TARGETS = ("own output + user file", "folder of user files", "the working directory", "symlink to user files",
           "folder holding the input")


@pytest.mark.parametrize("command", ["m2s-train eval", "m2s-train pretrain", "m2s-export", "m2s-eval-bag",
                                     "m2s-train import"])
def test_overwrite_keeps_everything_the_user_wrote(inputs, command, tmp_path):
    import shutil

    spec = _commands(inputs)[command]
    if None in spec["argv"]:
        pytest.skip("needs " + ("rosbags (the ros extra)" if command == "m2s-eval-bag" else
                                "the authors' reference code beside the checkout (../shared/reference)"))
    home = tmp_path / "home"
    home.mkdir()
    _user_files(home)
    cells = {}

    # 1. its own earlier output with a user's file beside it: replaced, the user's file kept
    own = tmp_path / "own"
    first = _run([*spec["argv"], _out_arg(command, own)], tmp_path, home)
    assert first.returncode == 0, first.stderr[-3000:]
    pristine = tmp_path / "pristine"  # an earlier output as the command wrote it, copied for the other targets
    shutil.copytree(own, pristine, symlinks=True)
    _user_files(own)
    again = _run([*spec["argv"], _out_arg(command, own), "--overwrite"], tmp_path, home)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _user_files_intact(own)
    cells[TARGETS[0]] = "exit 0: replaced; the user's files kept"

    # 2. a folder of user files: refused (for export: a user's file under the ONNX's name)
    mine = tmp_path / "mine"
    mine.mkdir()
    _user_files(mine)
    if command == "m2s-export":
        (mine / "model.onnx").write_bytes(b"the user's own model")
    before = _snapshot(mine)
    proc = _run([*spec["argv"], _out_arg(command, mine), "--overwrite"], tmp_path, home)
    if command == "m2s-train pretrain":  # no run there: the new run is written beside the user's files
        assert proc.returncode == 0 and _user_files_intact(mine), proc.stderr[-3000:]
        cells[TARGETS[1]] = "exit 0: a new run written beside the user's files, nothing deleted"
    else:
        cells[TARGETS[1]] = _one_error(proc)
        assert _snapshot(mine) == before

    # 3. the working directory, holding an earlier output of the command and user files
    cwd = tmp_path / "cwd"
    shutil.copytree(pristine, cwd, symlinks=True)
    _user_files(cwd)
    before = {k: v for k, v in _snapshot(cwd).items() if k in USER_FILES}
    proc = _run([*spec["argv"], _out_arg(command, Path(".")), "--overwrite"], cwd, home)
    assert {k: v for k, v in _snapshot(cwd).items() if k in USER_FILES} == before
    if command == "m2s-export":  # a file output: the ONNX it wrote is replaced, nothing else is touched
        assert proc.returncode == 0, proc.stderr[-3000:]
        cells[TARGETS[2]] = "exit 0: its ONNX replaced; the user's files kept"
    else:
        cells[TARGETS[2]] = _one_error(proc)
        assert "working directory" in cells[TARGETS[2]] and _snapshot(cwd) == {**_snapshot(pristine), **before}

    # 4. a symlink to a folder of user files (which holds an earlier output too)
    real = tmp_path / "real"
    shutil.copytree(pristine, real, symlinks=True)
    _user_files(real)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    before = _snapshot(real)
    proc = _run([*spec["argv"], _out_arg(command, link), "--overwrite"], tmp_path, home)
    if command == "m2s-export":  # the ONNX inside the linked folder is a file the command wrote
        assert proc.returncode == 0 and _user_files_intact(real), proc.stderr[-3000:]
        cells[TARGETS[3]] = "exit 0: its ONNX replaced; the user's files kept"
    else:
        cells[TARGETS[3]] = _one_error(proc)
        assert "symbolic link" in cells[TARGETS[3]] and _snapshot(real) == before

    # 5. the folder holding the command's own input (and an earlier output)
    holder = tmp_path / "holder"
    shutil.copytree(pristine, holder, symlinks=True)
    if command == "m2s-train pretrain":  # --init: a checkpoint of the run --overwrite would delete
        init = next((holder / "checkpoints").glob("step_*"))
        before = _snapshot(holder)
        cells[TARGETS[4]] = _one_error(_run([*spec["argv"], holder, "--overwrite", "--init", init], tmp_path, home))
        assert "--init" in cells[TARGETS[4]] and _snapshot(holder) == before
    elif command == "m2s-export":  # the checkpoint's own weights file as --onnx
        weights = inputs["ck"] / "model.safetensors"
        before = weights.read_bytes()
        cells[TARGETS[4]] = _one_error(_run([*spec["argv"], weights, "--overwrite"], tmp_path, home))
        assert "own input" in cells[TARGETS[4]] and weights.read_bytes() == before
    else:
        source = inputs[spec["input"]]
        moved = holder / source.name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, moved)
        argv = [str(a).replace(str(source), str(moved)) for a in spec["argv"]]
        before = _snapshot(holder)
        cells[TARGETS[4]] = _one_error(_run([*argv, holder, "--overwrite"], tmp_path, home))
        assert "own input" in cells[TARGETS[4]] and _snapshot(holder) == before
    assert _user_files_intact(home)
    print(json.dumps({command: cells}, indent=1))


def test_pretrain_overwrite_deletes_only_the_runs_files_and_only_after_its_inputs_load(inputs, tmp_path):
    """A bad --dataset leaves the old run whole; a good one replaces the run's own files and keeps the user's
    checkpoints/my_best/ and tensorboard/notes.txt."""
    home = tmp_path
    run = tmp_path / "run"
    argv = ["m2s-train", "pretrain", "--config", inputs["yaml"], "--quiet", "--out", run]
    assert _run(argv, tmp_path, home).returncode == 0
    (run / "checkpoints" / "my_best").mkdir()
    (run / "checkpoints" / "my_best" / "model.safetensors").write_bytes(b"my favourite")
    (run / "tensorboard" / "notes.txt").write_text("lr too high")
    old = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    line = _one_error(_run([*argv, "--overwrite", "--dataset", f"folder:{tmp_path / 'missing'}"], tmp_path, home))
    assert "missing" in line
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == old  # nothing deleted before the check
    assert _run([*argv, "--overwrite"], tmp_path, home).returncode == 0
    assert (run / "checkpoints" / "my_best" / "model.safetensors").read_bytes() == b"my favourite"
    assert (run / "tensorboard" / "notes.txt").read_text() == "lr too high"
    assert json.loads((run / "train_summary.json").read_text())["steps"] == 2


def test_eval_overwrite_checks_its_inputs_before_deleting(inputs, tmp_path):
    out = tmp_path / "report"
    argv = ["m2s-train", "eval", "--dataset", f"folder:{inputs['data']}", "--max-images", "1", "--iters", "1",
            "--quiet", "--out", out]
    assert _run([*argv, "--checkpoint", inputs["ck"]], tmp_path, tmp_path).returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    _one_error(_run([*argv, "--checkpoint", tmp_path / "no_such_model", "--overwrite"], tmp_path, tmp_path))
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


class TestOwnedOutput:
    """The shared rule in-process: what is refused, what one clear() deletes."""

    def test_home_root_and_cwd_are_never_cleared(self, tmp_path, monkeypatch):
        from calib.errors import DataError
        from calib.safe_files import OwnedOutput

        home = tmp_path / "home"
        home.mkdir()
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.chdir(tmp_path)
        for target in (home, tmp_path, Path("/")):
            claim = OwnedOutput(tmp_path / "fresh", tool="t", overwrite=True)  # a new folder is fine
            assert claim.to_delete == []
            if target != Path("/"):
                (target / ".m2s-output.json").write_text(json.dumps({"tool": "t", "complete": True, "written": []}))
            with pytest.raises(DataError, match="home directory|working directory|root directory|did not write"):
                OwnedOutput(target, tool="t", overwrite=True)

    def test_a_tampered_manifest_reaches_nothing_outside(self, tmp_path):
        from calib.safe_files import OwnedOutput

        (tmp_path / "victim.txt").write_text("keep")
        out = tmp_path / "out"
        out.mkdir()
        (out / "a.png").write_bytes(b"ours")
        (out / ".m2s-output.json").write_text(json.dumps({"tool": "t", "complete": True,
                                                          "written": ["a.png", "../victim.txt", "/etc/hostname"]}))
        claim = OwnedOutput(out, tool="t", overwrite=True)
        claim.begin()
        assert not (out / "a.png").exists() and (tmp_path / "victim.txt").read_text() == "keep"

    def test_a_killed_run_is_cleared_except_what_was_there_before(self, tmp_path):
        from calib.safe_files import OwnedOutput

        out = tmp_path / "out"
        out.mkdir()
        (out / "a.png").write_bytes(b"earlier output")
        (out / ".m2s-output.json").write_text(json.dumps({"tool": "t", "complete": True, "written": ["a.png"]}))
        (out / "notes.txt").write_text("the user's")
        claim = OwnedOutput(out, tool="t", overwrite=True)
        claim.begin()  # the earlier output goes; the run starts writing, then is killed (no finish())
        assert not (out / "a.png").exists()
        (out / "sub").mkdir()
        (out / "sub" / "b.png").write_bytes(b"half of a report")
        OwnedOutput(out, tool="t", overwrite=True).begin()
        assert sorted(p.name for p in out.iterdir()) == [".m2s-output.json", "notes.txt"]
        with pytest.raises(Exception, match="holds the output of .t., not of other"):
            OwnedOutput(out, tool="other", overwrite=True)
