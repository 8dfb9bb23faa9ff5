"""Training end to end on CPU: learning, kill + resume bit for bit, torchrun DDP, bad inputs, eval."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from m2s_train.config import load_config  # noqa: E402
from m2s_train.data.stereo_datasets import build_dataset, read_pfm  # noqa: E402
from m2s_train.errors import ConfigError, DataError, DatasetError  # noqa: E402
from m2s_train.losses import sequence_loss  # noqa: E402
from m2s_train.models import create_model, load_model  # noqa: E402
from m2s_train.models.igev import StereoOutput  # noqa: E402
from m2s_train.synth.pipeline import SynthConfig, list_images, run_synthesis  # noqa: E402
from m2s_train.train import TrainConfig, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _photo(rng, h=64, w=96):
    img = cv2.resize(rng.uniform(0, 255, (4, 5, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(3):
        cv2.circle(img, (int(rng.integers(10, w - 10)), int(rng.integers(10, h - 10))), int(rng.integers(6, 16)),
                   rng.uniform(0, 255, 3).tolist(), -1)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def synth_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(0)
    (root / "photos").mkdir()
    for i in range(8):
        cv2.imwrite(str(root / "photos" / f"{i}.png"), _photo(rng))
    cfg = load_config(SynthConfig, None, {"disparity.min_max_disparity": 6.0, "disparity.max_max_disparity": 20.0,
                                          "disparity.overshoot_max": 24.0})
    run_synthesis(list_images(str(root / "photos")), root / "ds", cfg, progress=False)
    return root / "ds"


def _config(dataset: Path, **kw) -> TrainConfig:
    base = {"model": "igev-tiny", "datasets": [f"synth:{dataset}"], "crop": [64, 96], "batch_size": 2, "steps": 40,
            "lr": 1e-3, "pct_start": 0.1, "num_workers": 0, "checkpoint_every": 1000, "log_every": 1000}
    base.update(kw)
    return load_config(TrainConfig, None, base)


def test_loss_falls_substantially(synth_dataset, tmp_path, monkeypatch):
    losses = []
    import m2s_train.train as train_module

    def recording(*args, **kwargs):
        loss, stats = sequence_loss(*args, **kwargs)
        losses.append(stats["loss"])
        return loss, stats

    monkeypatch.setattr(train_module, "sequence_loss", recording)
    summary = train(_config(synth_dataset), tmp_path / "run", progress=False)
    assert summary["steps"] == 40 and len(losses) == 40
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.5 * first, (first, last)  # measured: 65 -> 11.5
    assert (tmp_path / "run" / "checkpoints" / "step_00000040" / "model.safetensors").is_file()
    assert list((tmp_path / "run" / "tensorboard").iterdir())


def test_kill_and_resume_is_bit_exact(synth_dataset, tmp_path):
    cfg = _config(synth_dataset, steps=12, checkpoint_every=4)
    train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "cut", progress=False, stop_after=7)  # dies after step 7; last checkpoint at 4
    assert (tmp_path / "cut" / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    summary = train(cfg, tmp_path / "cut", progress=False, resume=True)
    assert summary["steps"] == 12
    a = load_model(tmp_path / "full" / "checkpoints" / "step_00000012").state_dict()
    b = load_model(tmp_path / "cut" / "checkpoints" / "step_00000012").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="another config"):
        train(_config(synth_dataset, steps=12, checkpoint_every=4, lr=5e-4), tmp_path / "cut", progress=False, resume=True)


def test_torchrun_two_processes_keep_identical_weights(synth_dataset, tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun not found next to the Python interpreter")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps({"model": "igev-tiny", "datasets": [f"synth:{synth_dataset}"], "crop": [64, 96],
                               "batch_size": 1, "steps": 3, "num_workers": 0, "checkpoint_every": 3}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "m2s_train.cli", "pretrain",
                          "--config", str(cfg), "--out", str(tmp_path / "ddp"), "--quiet"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((tmp_path / "ddp" / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3
    assert summary["max_weight_difference_across_ranks"] == 0.0


class TestLossMasking:
    def test_nan_inf_gt_is_masked(self):
        out = StereoOutput(torch.ones(1, 1, 4, 4), [torch.ones(1, 1, 4, 4)] * 2, torch.ones(1, 1, 4, 4), torch.ones(1, 2, 1, 1),
                           torch.full((1, 1, 4, 4), 0.5), torch.zeros(1, 1, 4, 4))
        gt = torch.full((1, 1, 4, 4), 2.0)
        gt[0, 0, 0, :2] = float("nan")
        gt[0, 0, 1, :2] = float("inf")
        loss, stats = sequence_loss(out, gt, None, max_disp=64)
        assert torch.isfinite(loss) and stats["epe"] == pytest.approx(1.0)
        empty, _ = sequence_loss(out, torch.zeros(1, 1, 4, 4), None, max_disp=64)
        assert float(empty) == 0.0


class TestDatasets:
    def test_layout_errors_name_what_is_missing(self, tmp_path):
        with pytest.raises(DatasetError, match="image_2"):
            build_dataset(f"kitti2015:{tmp_path}")
        with pytest.raises(DatasetError, match="frames_finalpass"):
            build_dataset(f"sceneflow:{tmp_path}")
        with pytest.raises(DatasetError, match="im0.png"):
            build_dataset(f"middlebury:{tmp_path}")
        with pytest.raises(DatasetError, match="does not exist"):
            build_dataset(f"folder:{tmp_path / 'nope'}")
        with pytest.raises(DatasetError, match="unknown dataset kind"):
            build_dataset(f"nyu:{tmp_path}")

    def test_folder_and_kitti_formats(self, tmp_path):
        rng = np.random.default_rng(0)
        for sub in ("left", "right", "disparity"):
            (tmp_path / "f" / sub).mkdir(parents=True)
        img = _photo(rng)
        cv2.imwrite(str(tmp_path / "f" / "left" / "a.png"), img)
        cv2.imwrite(str(tmp_path / "f" / "right" / "a.png"), img)
        disp = np.full((64, 96), 5.5, np.float32)
        disp[0, 0] = np.inf
        disp[1, 1] = np.nan
        np.save(tmp_path / "f" / "disparity" / "a.npy", disp)
        item = build_dataset(f"folder:{tmp_path / 'f'}")[0]
        assert item["disparity"].shape == (1, 64, 96) and not item["valid"][0, 0, 0] and not item["valid"][0, 1, 1]
        assert float(item["disparity"][0, 5, 5]) == pytest.approx(5.5)
        # KITTI 2015 layout with 16-bit PNG GT (value / 256, 0 = unknown)
        base = tmp_path / "kitti" / "training"
        for sub in ("image_2", "image_3", "disp_occ_0"):
            (base / sub).mkdir(parents=True)
        cv2.imwrite(str(base / "image_2" / "000000_10.png"), img)
        cv2.imwrite(str(base / "image_3" / "000000_10.png"), img[:, :, ::-1])
        gt = np.zeros((64, 96), np.uint16)
        gt[10:20, 10:20] = 256 * 12 + 128
        cv2.imwrite(str(base / "disp_occ_0" / "000000_10.png"), gt)
        kitti = build_dataset(f"kitti2015:{tmp_path / 'kitti'}")[0]
        assert float(kitti["disparity"][0, 15, 15]) == 12.5 and int(kitti["valid"].sum()) == 100

    def test_mismatched_sizes(self, tmp_path):
        for sub in ("left", "right", "disparity"):
            (tmp_path / sub).mkdir()
        cv2.imwrite(str(tmp_path / "left" / "a.png"), np.zeros((32, 48, 3), np.uint8))
        cv2.imwrite(str(tmp_path / "right" / "a.png"), np.zeros((32, 40, 3), np.uint8))
        np.save(tmp_path / "disparity" / "a.npy", np.ones((32, 48), np.float32))
        with pytest.raises(DatasetError, match="differ in size"):
            build_dataset(f"folder:{tmp_path}")[0]

    def test_pfm_reader(self, tmp_path):
        data = np.arange(12, dtype="<f4").reshape(3, 4)
        (tmp_path / "a.pfm").write_bytes(b"Pf\n4 3\n-1.0\n" + data[::-1].tobytes())
        np.testing.assert_array_equal(read_pfm(tmp_path / "a.pfm"), data)
        (tmp_path / "b.pfm").write_bytes(b"Pf\n4 3\n-1.0\n" + data[:1].tobytes())
        with pytest.raises(DataError, match="truncated"):
            read_pfm(tmp_path / "b.pfm")


def test_init_decides_the_model_and_its_config(synth_dataset, tmp_path):
    """--init: the checkpoint's model and saved config (what its weights were trained with) are trained,
    a learned confidence head added; an override that no longer fits its weights, or another --model, is refused."""
    from m2s_train.models import load_model, save_model

    torch.manual_seed(0)
    save_model(create_model("igev-tiny", hidden_dim=24, pad_mode="end", confidence_head=False), tmp_path / "other")
    summary = train(_config(synth_dataset, model=None, steps=1, init=str(tmp_path / "other")), tmp_path / "run",
                    progress=False)
    trained = load_model(summary["checkpoint"])
    assert (trained.model_name, trained.config.hidden_dim, trained.config.pad_mode) == ("igev-tiny", 24, "end")
    assert trained.config.confidence_head is True
    with pytest.raises(ConfigError, match="another model config"):
        train(_config(synth_dataset, model=None, steps=1, init=str(tmp_path / "other"),
                      model_overrides={"hidden_dim": 16}), tmp_path / "run2", progress=False)
    with pytest.raises(ConfigError, match="holds a 'igev-tiny' model but --model"):
        train(_config(synth_dataset, model="igev-rt", steps=1, init=str(tmp_path / "other")), tmp_path / "run3",
              progress=False)


def test_eval_on_real_aloe_with_sgbm(opencv_data, tmp_path):
    from m2s_train.evaluate import evaluate

    result = evaluate(create_model("igev-tiny"), "aloe:quarter", iters=2, out=tmp_path, sgbm=True, error_maps=1,
                      progress=False)
    sgbm = result["methods"]["sgbm"]["pixel"]
    assert result["images"] == 1 and sgbm["pixels"] > 10000
    assert sgbm["epe"] < 1.5 and sgbm["bad3"] < 0.11  # the fair SGBM on real data, quarter size: 1.33 px / 9.4 %
    assert (tmp_path / "metrics.md").read_text().count("|") > 10
    assert (tmp_path / "error_model_0000.png").is_file() and (tmp_path / "error_sgbm_0000.png").is_file()


def test_motorcycle_is_a_second_real_pair_whose_gt_explains_the_views(tmp_path):
    """scikit-image's Middlebury Motorcycle: the right view sampled at x - GT matches the left (a wrong GT would not)."""
    pytest.importorskip("skimage", reason="the Motorcycle pair comes with scikit-image (the 'training' extra)")
    from m2s_train.evaluate import evaluate

    with pytest.raises(DatasetError, match="built-in pair and takes no path"):
        build_dataset("motorcycle:/some/folder")
    left, right, gt, _ = build_dataset("motorcycle:half").load(0)
    assert left.shape == right.shape == (250, 370, 3) and gt.shape == (250, 370)
    known = np.isfinite(gt)
    assert 0.85 < known.mean() < 0.99 and 3 < np.nanmin(gt) and np.nanmax(gt) < 31  # NaN = unknown, half-size px

    def photometric(disparity: np.ndarray) -> float:
        ys, xs = np.mgrid[0:250, 0:370].astype(np.float32)
        warped = cv2.remap(right.astype(np.float32), xs - disparity, ys, cv2.INTER_LINEAR)
        inside = known & (xs - np.nan_to_num(gt) >= 0)
        return float(np.abs(warped - left.astype(np.float32)).mean(-1)[inside].mean())

    assert photometric(np.nan_to_num(gt)) < 0.5 * photometric(np.nan_to_num(gt) + 3)  # 7.8 against 21.8 grey levels

    result = evaluate(None, "motorcycle:half", sgbm=True, out=tmp_path, progress=False)
    sgbm = result["methods"]["sgbm"]["pixel"]
    # the fair SGBM (range from the GT, 32 px; left band answered): measured bad-3 7.6 % (0.56 before, with a
    # 192 px search and its left band at 0 px)
    assert result["images"] == 1 and sgbm["pixels"] > 50000 and sgbm["bad3"] < 0.10
    assert result["search_range"][0]["px"] == 32 and result["methods"]["sgbm"]["full_search"]["bad3"] < 0.10


class TestRunsAreNeverLost:
    """Each of these lost or mixed a run before: an --out that holds a run, damaged checkpoints on resume."""

    def test_new_run_over_old_one_is_refused_and_overwrite_removes_it_whole(self, synth_dataset, tmp_path):
        cfg = _config(synth_dataset, steps=12, checkpoint_every=4)
        train(cfg, tmp_path / "run", progress=False)
        before = {p.name: (p / "model.safetensors").read_bytes() for p in (tmp_path / "run" / "checkpoints").glob("step_*")}
        with pytest.raises(ConfigError, match="already holds a training run.*--resume.*--overwrite"):
            train(_config(synth_dataset, steps=4, checkpoint_every=4, seed=3), tmp_path / "run", progress=False)
        after = {p.name: (p / "model.safetensors").read_bytes() for p in (tmp_path / "run" / "checkpoints").glob("step_*")}
        assert after == before and sorted(before) == ["step_00000004", "step_00000008", "step_00000012"]
        train(_config(synth_dataset, steps=4, checkpoint_every=4, seed=3), tmp_path / "run", progress=False, overwrite=True)
        assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*")) == ["step_00000004"]
        assert json.loads((tmp_path / "run" / "train_summary.json").read_text())["config"]["seed"] == 3

    @pytest.fixture(scope="class")
    def full_run(self, synth_dataset, tmp_path_factory) -> Path:
        out = tmp_path_factory.mktemp("full") / "run"
        train(_config(synth_dataset, steps=12, checkpoint_every=4), out, progress=False)
        return out

    @pytest.mark.parametrize("damage", ["safetensors", "state", "train_json"])
    def test_resume_falls_back_to_the_newest_intact_checkpoint(self, synth_dataset, full_run, tmp_path, damage, caplog):
        import shutil

        cfg = _config(synth_dataset, steps=12, checkpoint_every=4)
        run = tmp_path / "run"
        shutil.copytree(full_run, run)
        newest = run / "checkpoints" / "step_00000012"
        target = {"safetensors": "model.safetensors", "state": "state.pt", "train_json": "train.json"}[damage]
        data = (newest / target).read_bytes()
        (newest / target).write_bytes(data[: len(data) // 2])  # truncated by a crash of the file system
        (run / "checkpoints" / "latest").write_text("step_00000099\n")  # and a dangling pointer
        caplog.set_level("WARNING")
        summary = train(cfg, run, progress=False, resume=True)
        assert summary["steps"] == 12
        assert "step_00000012 is unusable" in caplog.text and "resuming from step_00000008" in caplog.text
        assert (run / "checkpoints" / "unusable" / "step_00000012" / target).read_bytes() == data[: len(data) // 2]
        a = load_model(full_run / "checkpoints" / "step_00000012").state_dict()
        b = load_model(newest).state_dict()  # redone from step 8: the same weights as the uninterrupted run
        assert all(torch.equal(a[k], b[k]) for k in a)
        with pytest.raises(ConfigError, match="another config"):  # the config is still checked after a fallback
            train(_config(synth_dataset, steps=12, checkpoint_every=4, lr=5e-4), run, progress=False, resume=True)

    def test_resume_with_no_intact_checkpoint_refuses_instead_of_starting_over(self, synth_dataset, tmp_path):
        run = tmp_path / "run"
        cfg = _config(synth_dataset, steps=4, checkpoint_every=4)
        train(cfg, run, progress=False)
        state = run / "checkpoints" / "step_00000004" / "state.pt"
        state.write_bytes(state.read_bytes()[:100])
        with pytest.raises(ConfigError, match="none of the 1 checkpoint.*is intact.*state.pt is corrupt"):
            train(cfg, run, progress=False, resume=True)
        assert (run / "checkpoints" / "step_00000004" / "model.safetensors").is_file()

    def test_nan_in_the_network_stops_training_with_the_lr_message(self, synth_dataset, tmp_path):
        from m2s_train.models import save_model

        model = create_model("igev-tiny")
        with torch.no_grad():
            next(iter(model.update.parameters())).fill_(float("nan"))  # a diverged update block
        save_model(model, tmp_path / "nan")
        with torch.no_grad():  # inference: NaN pixels, not an out-of-range gather
            out = model.eval()(torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96)).disparity
        assert torch.isnan(out).any()
        # such a checkpoint is refused where it is loaded, naming the tensor (it used to train into a NaN loss)
        with pytest.raises(ConfigError, match=r"nan/model.safetensors: 400 non-finite value\(s\) .*update\."):
            train(_config(synth_dataset, steps=2, init=str(tmp_path / "nan")), tmp_path / "run", progress=False)
        # a run that diverges on its own still stops at the first non-finite loss with the advice
        with pytest.raises(ConfigError, match=r"loss became (nan|inf) at step \d+; lower --lr"):
            train(_config(synth_dataset, steps=6, lr=1e30), tmp_path / "run2", progress=False)

    def test_keep_checkpoints_and_other_numbers_are_validated_naming_the_key(self, tmp_path):
        for key, value, message in (("keep_checkpoints", -1, "keep_checkpoints must be >= 1"),
                                    ("lr", 0.0, "lr must be > 0"), ("pct_start", 1.5, "pct_start must be < 1"),
                                    ("gamma", 0.0, "gamma must be > 0"), ("num_workers", -2, "num_workers must be >= 0"),
                                    ("crop", [16, 64], "crop must be >= 32")):
            with pytest.raises(ConfigError, match=message):
                load_config(TrainConfig, None, {key: value})
        bad = tmp_path / "t.yaml"
        bad.write_text("lr: .nan\n")
        with pytest.raises(ConfigError, match=r"t.yaml.lr: expected a finite number"):
            load_config(TrainConfig, bad)


def test_augment_settings_reach_the_samples_and_older_runs_still_resume(synth_dataset, tmp_path):
    """``augment`` (scale, eraser) changes what the network sees; a run saved before the setting existed
    resumes with it at its default, and not with another value."""
    import json

    plain = _config(synth_dataset, steps=6, checkpoint_every=3)
    augmented = _config(synth_dataset, steps=6, checkpoint_every=3,
                        augment={"scale_prob": 1.0, "scale_log2": [0.3, 0.4], "stretch_prob": 1.0, "eraser_prob": 1.0})
    from m2s_train.data.stereo_datasets import build_dataset

    a = build_dataset(f"synth:{synth_dataset}", plain.augmentation(), seed=0)[0]
    b = build_dataset(f"synth:{synth_dataset}", augmented.augmentation(), seed=0)[0]
    assert a["left"].shape == b["left"].shape == (3, 64, 96)
    assert not torch.equal(a["right"], b["right"]) and not torch.equal(a["disparity"], b["disparity"])

    train(plain, tmp_path / "old", progress=False, stop_after=4)  # checkpoint at step 3, as an older version saved it
    saved = tmp_path / "old" / "checkpoints" / "step_00000003" / "train.json"
    record = json.loads(saved.read_text())
    del record["config"]["augment"]
    saved.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="differs in: augment"):
        train(augmented, tmp_path / "old", progress=False, resume=True)
    assert train(plain, tmp_path / "old", progress=False, resume=True)["steps"] == 6
