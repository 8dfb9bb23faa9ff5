"""Files the project writes: atomic, normal permissions, strict JSON, no unpickling."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from calib import StereoCamera
from calib.errors import DataError
from calib.safe_files import (
    json_safe,
    load_npy,
    read_json,
    staged_directory,
    write_bytes_if_absent,
    write_json_atomic,
    write_text_atomic,
)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_written_files_get_umask_permissions(tmp_path, umask_022):
    """mkstemp + rename left camera_info 0600: a ROS node running as another user could not read it."""
    StereoCamera.ideal(64, 48, focal_px=50.0, baseline_m=0.1).to_dir(tmp_path / "calib")
    write_json_atomic(tmp_path / "r.json", {"a": 1})
    assert write_bytes_if_absent(tmp_path / "once", b"x")
    for path in (tmp_path / "calib" / "left.yaml", tmp_path / "calib" / "right.yaml", tmp_path / "r.json",
                 tmp_path / "once"):
        assert _mode(path) == 0o644, (path, oct(_mode(path)))
    assert not list(tmp_path.rglob(".*.tmp"))


def test_checkpoint_files_are_readable_by_others(tmp_path, umask_022):
    torch = pytest.importorskip("torch")
    from m2s_train.checkpoints import save_checkpoint
    from m2s_train.models import create_model

    model = create_model("igev-tiny")
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    path = save_checkpoint(tmp_path, 1, model, opt, sched, scaler, {"x": 1}, {"cpu": torch.get_rng_state()}, keep=2)
    for f in sorted(path.iterdir()) + [tmp_path / "checkpoints" / "latest"]:
        assert _mode(f) == 0o644, (f, oct(_mode(f)))


def test_dataset_files_are_readable_by_others(tmp_path, umask_022):
    import cv2

    from m2s_train.synth.pipeline import SynthConfig, list_images, run_synthesis

    (tmp_path / "photos").mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "photos" / "a.png"),
                cv2.resize(rng.uniform(0, 255, (4, 5, 3)).astype(np.uint8), (96, 64), interpolation=cv2.INTER_NEAREST))
    run_synthesis(list_images(str(tmp_path / "photos")), tmp_path / "ds", SynthConfig(), progress=False)
    files = [f for f in (tmp_path / "ds").rglob("*") if f.is_file() and f.name != ".lock"]
    assert len(files) >= 4 and all(_mode(f) == 0o644 for f in files), [(f.name, oct(_mode(f))) for f in files]


def test_strict_json(tmp_path):
    write_json_atomic(tmp_path / "m.json", {"epe": float("nan"), "d1": np.float32(np.inf), "n": np.int64(3),
                                            "rows": [1.5, float("-inf")], "ok": np.bool_(True)})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"epe": None, "d1": None, "n": 3, "rows": [1.5, None], "ok": True}
    assert json_safe((1.0, float("nan"))) == [1.0, None]
    (tmp_path / "cut.json").write_text('{"a": ')
    with pytest.raises(DataError, match="cut.json is corrupt"):
        read_json(tmp_path / "cut.json", "summary")
    with pytest.raises(DataError, match="not found"):
        read_json(tmp_path / "none.json")


def test_npy_never_unpickles(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="refused to unpickle"):
        load_npy(tmp_path / "obj.npy")
    np.save(tmp_path / "s.npy", np.array(["text"]))
    with pytest.raises(DataError, match="expected a numeric array"):
        load_npy(tmp_path / "s.npy")
    (tmp_path / "cut.npy").write_bytes(b"\x93NUMPY\x01\x00v\x00{'descr'")
    with pytest.raises(DataError, match="corrupt"):
        load_npy(tmp_path / "cut.npy")
    np.save(tmp_path / "ok.npy", np.ones((2, 3), np.float32))
    assert load_npy(tmp_path / "ok.npy").shape == (2, 3)


def test_staged_directory_appears_whole_or_not_at_all(tmp_path):
    with pytest.raises(RuntimeError):
        with staged_directory(tmp_path / "bag") as stage:
            stage.mkdir()
            (stage / "part.db3").write_bytes(b"half")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
    with staged_directory(tmp_path / "bag") as stage:
        stage.mkdir()
        write_text_atomic(stage / "metadata.yaml", "ok\n")
    assert [p.name for p in tmp_path.iterdir()] == ["bag"] and (tmp_path / "bag" / "metadata.yaml").is_file()
    with pytest.raises(DataError, match="exists"):
        with staged_directory(tmp_path / "bag"):
            pass


def test_create_if_absent_keeps_the_first(tmp_path):
    assert write_bytes_if_absent(tmp_path / "d.json", b"first")
    assert not write_bytes_if_absent(tmp_path / "d.json", b"second")
    assert (tmp_path / "d.json").read_bytes() == b"first"
