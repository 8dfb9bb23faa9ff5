"""S2DKD: alignment, the KL and gradient terms, masking, bad inputs, and fine-tuning end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from m2s_train.config import load_config  # noqa: E402
from m2s_train.models import model_config, save_model, create_model  # noqa: E402
from m2s_train.models.igev import StereoOutput  # noqa: E402
from m2s_train.s2dkd import (  # noqa: E402
    TEACHER_OK,
    TEACHER_REJECTED,
    TEACHER_RESIZED,
    AlignConfig,
    DistillationDataset,
    S2DKDConfig,
    TeacherCache,
    align_scale_shift,
    gradient_loss,
    kl_distillation,
    laplacian_target,
    s2dkd_loss,
    sparsify_lidar_like,
)

MODEL_CFG = model_config("igev-tiny")  # max_disp 64 -> 16 candidates


class TestAlignment:
    def test_recovers_scale_shift_under_20_percent_outliers(self):
        rng = np.random.default_rng(0)
        mono = rng.uniform(0.1, 1.0, (60, 80)).astype(np.float32)
        gt = 37.5 * mono + 4.25
        sparse = np.full_like(gt, np.nan)
        idx = rng.random(gt.shape) < 0.2
        sparse[idx] = gt[idx]
        outliers = idx & (rng.random(gt.shape) < 0.2)
        sparse[outliers] += rng.uniform(5, 40, int(outliers.sum()))  # one-sided, like parallax errors
        fit = align_scale_shift(mono, sparse)
        assert fit.ok and fit.scale == pytest.approx(37.5, rel=1e-3) and fit.shift == pytest.approx(4.25, abs=0.05)
        # plain least squares is pulled off by the same outliers
        v = np.isfinite(sparse)
        s, t = np.polyfit(mono[v], sparse[v], 1)
        assert abs(s - 37.5) > 10 * abs(fit.scale - 37.5)

    def test_rejections(self):
        mono = np.random.default_rng(1).uniform(0, 1, (20, 20)).astype(np.float32)
        few = np.full((20, 20), np.nan, np.float32)
        few[0, :10] = 5.0
        assert not align_scale_shift(mono, few).ok and "labelled" in align_scale_shift(mono, few).reason
        inverted = -10 * mono + 20
        assert "scale" in align_scale_shift(mono, inverted).reason
        noisy = 30 * mono + 5 + np.random.default_rng(2).normal(0, 10, (20, 20)).astype(np.float32)
        assert "residual" in align_scale_shift(mono, noisy, AlignConfig(max_residual=3.0)).reason


class TestLossTerms:
    def test_kl_zero_iff_equal_and_gradient_only_to_prediction(self):
        teacher_q = torch.full((1, 1, 3, 4), 5.3)
        target = laplacian_target(teacher_q, 16, 1.0)
        weight = torch.ones(1, 1, 3, 4)
        assert float(kl_distillation(target.clone(), target, weight)) == pytest.approx(0.0, abs=1e-7)
        logits = torch.randn(1, 16, 3, 4, requires_grad=True)
        t_in = teacher_q.clone().requires_grad_(True)
        kl = kl_distillation(torch.softmax(logits, 1), laplacian_target(t_in, 16, 1.0), weight)
        assert float(kl.detach()) > 0
        kl.backward()
        assert logits.grad is not None and logits.grad.abs().sum() > 0
        assert t_in.grad is None  # the teacher is a constant target

    def test_gradient_term(self):
        ramp = torch.arange(12.0).view(1, 1, 3, 4)
        valid = torch.ones(1, 1, 3, 4, dtype=torch.bool)
        assert float(gradient_loss(ramp + 7.0, ramp, valid)) == 0.0  # shift-invariant: only structure
        pred = (ramp * 2).requires_grad_(True)
        teacher = ramp.clone().requires_grad_(True)
        loss = gradient_loss(pred, teacher, valid)
        loss.backward()
        assert float(loss.detach()) > 0 and pred.grad.abs().sum() > 0 and teacher.grad is None

    def _batch_and_output(self, seed=0, h=32, w=48):
        g = torch.Generator().manual_seed(seed)
        logits = torch.randn(1, 16, h // 4, w // 4, generator=g, requires_grad=True)
        disp = torch.rand(1, 1, h, w, generator=g) * 40
        disp.requires_grad_(True)
        out = StereoOutput(disp, [disp], disp, torch.softmax(logits, 1), torch.full_like(disp, 0.5), torch.zeros_like(disp))
        gt = torch.full((1, 1, h, w), float("nan"))
        gt[..., ::4, :] = 20.0
        teacher = torch.rand(1, 1, h, w, generator=g) * 40
        batch = {"disparity": torch.nan_to_num(gt), "valid": torch.isfinite(gt), "teacher": teacher,
                 "teacher_valid": torch.ones(1, 1, h, w, dtype=torch.bool), "teacher_status": torch.tensor([TEACHER_OK])}
        return out, batch, logits, disp

    def test_masks_respected(self):
        out, batch, _, _ = self._batch_and_output()
        loss, _ = s2dkd_loss(out, batch, MODEL_CFG)
        # change teacher values where teacher_valid is False and GT where valid is False: same loss
        batch2 = dict(batch)
        tv = batch["teacher_valid"].clone()
        tv[..., :8, :] = False
        batch["teacher_valid"], batch2["teacher_valid"] = tv, tv
        ref, _ = s2dkd_loss(out, batch, MODEL_CFG)
        teacher2 = batch["teacher"].clone()
        teacher2[..., :8, :] = 1000.0
        gt2 = batch["disparity"].clone()
        gt2[~batch["valid"]] = 999.0
        batch2["teacher"], batch2["disparity"] = teacher2, gt2
        other, _ = s2dkd_loss(out, batch2, MODEL_CFG)
        assert float(ref) == pytest.approx(float(other), rel=1e-6)
        assert float(loss) != pytest.approx(float(ref))

    def test_switches_and_degenerate_batches(self):
        out, batch, logits, disp = self._batch_and_output()
        full, stats = s2dkd_loss(out, batch, MODEL_CFG)
        assert stats["kd"] > 0 and stats["grad"] > 0
        off, stats_off = s2dkd_loss(out, batch, MODEL_CFG, S2DKDConfig(enabled=False))
        assert stats_off["kd"] == 0.0 and float(off) < float(full)
        # no labels at all and no valid teacher: finite (zero) loss, never NaN
        empty = dict(batch, disparity=torch.zeros_like(batch["disparity"]), valid=torch.zeros_like(batch["valid"]),
                     teacher_valid=torch.zeros_like(batch["teacher_valid"]),
                     teacher_status=torch.tensor([TEACHER_REJECTED]))
        loss, stats = s2dkd_loss(out, empty, MODEL_CFG)
        assert torch.isfinite(loss) and stats["teacher_rejected"] == 1.0


def test_sparsify_density_and_sky():
    rng = np.random.default_rng(0)
    dense = np.full((375, 1242), 30.0, np.float32)
    sparse = sparsify_lidar_like(dense, rng)
    density = np.isfinite(sparse).mean()
    assert 0.05 <= density <= 0.30, density
    assert not np.isfinite(sparse[: int(375 * 0.3) - 2]).any()


class _Base:
    """A GT dataset with load(): one textured pair with dense disparity."""

    def __init__(self, h=48, w=64, n=2):
        rng = np.random.default_rng(0)
        self.items = []
        for _ in range(n):
            left = rng.integers(0, 255, (h, w, 3), np.uint8)
            disp = np.tile(np.linspace(5, 20, w, dtype=np.float32), (h, 1))
            self.items.append((left, left.copy(), disp, None))

    def __len__(self):
        return len(self.items)

    def load(self, i):
        return self.items[i]


class TestDistillationDataset:
    def test_bad_teachers_are_counted_not_fatal(self, tmp_path):
        from m2s_train.data.augment import AugmentConfig

        base = _Base()
        cache = TeacherCache(tmp_path, "unit-teacher")
        left0, _, disp0, _ = base.load(0)
        small = (disp0[::2, ::2] - 2.0) / 3.0  # another resolution, affine to the GT
        small[3, 3] = np.nan
        cache.put(left0, small)
        ds = DistillationDataset(base, cache, AugmentConfig(crop=None), 64, sparsify="lidar-like")
        item = ds[0]
        assert item["teacher_status"] == TEACHER_RESIZED
        assert item["teacher_valid"].float().mean() > 0.9 and not item["teacher_valid"][0, 6, 6]
        gt = item["disparity"][0].numpy()
        v = item["teacher_valid"][0].numpy()
        np.testing.assert_allclose(item["teacher"][0].numpy()[v].mean(), np.tile(np.linspace(5, 20, 64), (48, 1))[v].mean(), rtol=0.05)
        assert item["valid"].float().mean() < 0.35 and gt[0].sum() == 0  # sparsified, no labels on top rows
        missing = ds[1]  # no cache entry
        assert missing["teacher_status"] == 1 and not missing["teacher_valid"].any()
        # an image with no labels at all: teacher rejected, item still usable
        base.items[0] = (left0, left0, np.full_like(disp0, np.nan), None)
        item = DistillationDataset(base, cache, AugmentConfig(crop=None), 64)[0]
        assert item["teacher_status"] == TEACHER_REJECTED and not item["valid"].any()


def test_finetune_end_to_end_with_precomputed_teacher(tmp_path, folder_dataset):
    from m2s_train.cli import main as train_main
    from m2s_train.finetune import FinetuneConfig, run_finetune

    # a tiny dense-GT dataset in the generic folder layout + a teacher per left image
    root, teachers = folder_dataset(4, 96, (30, 60))
    save_model(create_model("igev-tiny"), tmp_path / "init")
    overrides = {"train.model": "igev-tiny", "train.init": str(tmp_path / "init"), "train.datasets": [f"folder:{root}"],
                 "train.crop": [64, 96], "train.batch_size": 2, "train.steps": 4, "train.num_workers": 0,
                 "train.checkpoint_every": 2, "depth.backend": "precomputed", "depth.precomputed_dir": str(teachers),
                 "teacher_cache": str(tmp_path / "cache"), "sparsify": "lidar-like"}
    cfg = load_config(FinetuneConfig, None, overrides)
    summary = run_finetune(cfg, tmp_path / "ft", progress=False)
    assert summary["steps"] == 4 and np.isfinite(summary["last_loss"])
    saved = json.loads((tmp_path / "ft" / "train_summary.json").read_text())["config"]
    assert saved["extra"]["s2dkd"]["enabled"] is True and saved["extra"]["sparsify"] == "lidar-like"
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 4
    # the ablation baseline through the CLI, from the same code
    rc = train_main(["finetune", "--dataset", f"folder:{root}", "--model", "igev-tiny", "--init", str(tmp_path / "init"),
                     "--out", str(tmp_path / "ft_sparse"), "--no-s2dkd", "--sparsify", "lidar-like", "--steps", "2",
                     "--batch-size", "2", "--crop", "64", "96", "--num-workers", "0", "--quiet"])
    assert rc == 0
    saved = json.loads((tmp_path / "ft_sparse" / "train_summary.json").read_text())["config"]
    assert saved["extra"]["s2dkd"]["enabled"] is False


def test_unusable_teachers_are_recomputed_named_or_refused(tmp_path, folder_dataset, caplog):
    """An all-NaN cache entry was never recomputed, 0.5 % of pixels at 3e38 rejected the whole teacher, and
    fine-tuning with every teacher rejected carried on as plain sparse training with a count only."""
    import logging

    from m2s_train.errors import ConfigError as TrainConfigError
    from m2s_train.finetune import FinetuneConfig, run_finetune
    from m2s_train.s2dkd import unusable_teacher

    root, teachers = folder_dataset(4, 96, (30, 60))
    save_model(create_model("igev-tiny"), tmp_path / "init")
    base = {"train.model": "igev-tiny", "train.init": str(tmp_path / "init"), "train.datasets": [f"folder:{root}"],
            "train.crop": [64, 96], "train.batch_size": 2, "train.steps": 2, "train.num_workers": 0,
            "train.checkpoint_every": 2, "depth.backend": "precomputed", "depth.precomputed_dir": str(teachers),
            "teacher_cache": str(tmp_path / "cache"), "sparsify": "lidar-like"}
    run_finetune(load_config(FinetuneConfig, None, base), tmp_path / "ft", progress=False)
    entries = sorted((tmp_path / "cache").rglob("*.npy"))
    good = np.load(entries[0])
    np.save(entries[0], np.full_like(good, np.nan))
    broken = good.copy()
    broken.reshape(-1)[: max(1, broken.size // 200)] = 3e38
    np.save(entries[1], broken)
    assert unusable_teacher(np.load(entries[0])) and "beyond" in unusable_teacher(np.load(entries[1]))
    with caplog.at_level(logging.WARNING):
        summary = run_finetune(load_config(FinetuneConfig, None, base), tmp_path / "ft2", progress=False)
    assert sum("unusable" in r.message and "recomputing" in r.message for r in caplog.records) == 2
    assert unusable_teacher(np.load(entries[0])) is None and unusable_teacher(np.load(entries[1])) is None
    assert summary["teachers"]["ok"] == 4 and summary["teachers"]["procedural_prior"] is False
    assert json.loads((tmp_path / "ft2" / "train_summary.json").read_text())["teachers"]["images"] == 4
    # teachers that no alignment accepts: refused before any step, with the way out
    strict = {**base, "align.min_labels": 10**7}  # more labels than any image has: every alignment rejected
    with pytest.raises(TrainConfigError, match=r"none of the 4 training images has a usable teacher \(4 rejected"):
        run_finetune(load_config(FinetuneConfig, None, strict), tmp_path / "ft3", progress=False)
    assert not (tmp_path / "ft3" / "checkpoints").exists()


def test_the_procedural_teacher_fallback_is_named_in_the_output_and_the_summary(tmp_path, folder_dataset, caplog):
    """The documented finetune command without --depth-model fell back to the segment-plane prior silently."""
    import logging

    from m2s_train.finetune import FinetuneConfig, run_finetune

    root, _ = folder_dataset(2, 96, (30, 60))
    save_model(create_model("igev-tiny"), tmp_path / "init")
    cfg = load_config(FinetuneConfig, None, {
        "train.model": "igev-tiny", "train.init": str(tmp_path / "init"), "train.datasets": [f"folder:{root}"],
        "train.crop": [64, 96], "train.batch_size": 2, "train.steps": 1, "train.num_workers": 0,
        "train.checkpoint_every": 1, "teacher_cache": str(tmp_path / "cache"), "sparsify": "lidar-like"})
    with caplog.at_level(logging.WARNING):
        summary = run_finetune(cfg, tmp_path / "ft", progress=False)
    assert any("S2DKD teacher is the offline segment-plane depth prior" in r.message for r in caplog.records)
    saved = json.loads((tmp_path / "ft" / "train_summary.json").read_text())["teachers"]
    assert saved["procedural_prior"] is True and saved["teacher_model"] == "segment-plane-prior-v1"
    assert summary["teachers"] == saved
