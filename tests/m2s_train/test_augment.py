"""The training augmentations keep disparity exact: spatial scale (with stretch) and occlusion patches."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

pytest.importorskip("torch", reason="the training datasets need torch: pip install 'mono2stereo[training]'")

from m2s_train.config import load_config  # noqa: E402
from m2s_train.data.augment import AugmentConfig, random_scale  # noqa: E402
from m2s_train.data.stereo_datasets import make_item  # noqa: E402
from m2s_train.errors import ConfigError, DatasetError  # noqa: E402
from m2s_train.train import TrainConfig  # noqa: E402

D0 = 12.0  # the pair's true disparity, px


def textured_pair(h: int = 160, w: int = 240) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A smooth random texture seen at constant disparity D0: right(x) = left(x + D0)."""
    rng = np.random.default_rng(3)
    wide = cv2.GaussianBlur(rng.uniform(0, 255, (h, w + int(D0), 3)).astype(np.float32), (0, 0), 2.0)
    left = wide[:, : w].astype(np.uint8)
    right = wide[:, int(D0) : int(D0) + w].astype(np.uint8)
    return left, right, np.full((h, w), D0, np.float32)


def match_error(left: np.ndarray, right: np.ndarray, disparity: np.ndarray) -> float:
    """Mean |left(x) - right(x - d)| over the pixels whose match lies inside the right view."""
    h, w = disparity.shape
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    warped = cv2.remap(right, xs - disparity, ys, cv2.INTER_LINEAR)
    inside = (xs - disparity >= 2) & (xs < w - 2) & (ys >= 2) & (ys < h - 2)
    return float(np.abs(warped.astype(np.float32) - left.astype(np.float32))[inside].mean())


@pytest.mark.parametrize("crop", [(64, 96), None])
def test_scaled_pairs_keep_the_true_disparity(crop):
    left, right, disp = textured_pair()
    config = AugmentConfig(crop=crop, scale_prob=1.0, scale_log2=(-0.5, 0.7), stretch_prob=1.0, stretch_log2=(-0.3, 0.3))
    rng = np.random.default_rng(0)
    factors = []
    for _ in range(12):
        l2, r2, d2, noc = random_scale(rng, config, left, right, disp, np.ones(disp.shape, bool))
        assert l2.shape[:2] == r2.shape[:2] == d2.shape == noc.shape
        if crop is not None:
            assert d2.shape == crop
        factor = float(d2[0, 0]) / D0
        factors.append(factor)
        assert np.allclose(d2, D0 * factor)  # one factor over the whole window
        exact, unscaled = match_error(l2, r2, d2), match_error(l2, r2, np.full_like(d2, D0))
        assert exact < 2.0, f"factor {factor:.3f}: {exact:.2f} grey levels off with the scaled disparity"
        if abs(factor - 1) > 0.15:
            assert unscaled > 3 * exact
    assert max(factors) > 1.2 and min(factors) < 0.9  # the draws really scale both ways


def test_unknown_labels_stay_unknown_and_are_never_blended():
    left, right, disp = textured_pair()
    disp[:, 100:] = np.nan
    disp[:, 60:100] = 30.0
    config = AugmentConfig(crop=None, scale_prob=1.0, scale_log2=(0.5, 0.5))
    l2, r2, d2, _ = random_scale(np.random.default_rng(1), config, left, right, disp, np.ones(disp.shape, bool))
    factor = d2.shape[1] / disp.shape[1]
    values = np.unique(d2[np.isfinite(d2)])
    assert np.all(np.isclose(values[:, None], [D0 * factor, 30.0 * factor], rtol=1e-5).any(1)), values
    assert np.isnan(d2).mean() == pytest.approx(np.isnan(disp).mean(), abs=0.02)


def test_eraser_patches_the_right_view_only():
    left, right, disp = textured_pair()
    config = AugmentConfig(crop=None, eraser_prob=1.0, eraser_max=2, eraser_size=(0.2, 0.3))
    item = make_item(left, right, disp, None, "s", config, np.random.default_rng(5))
    plain = make_item(left, right, disp, None, "s", AugmentConfig(crop=None), np.random.default_rng(5))
    assert np.array_equal(item["left"].numpy(), plain["left"].numpy())
    assert np.array_equal(item["disparity"].numpy(), plain["disparity"].numpy())
    changed = np.any(item["right"].numpy() != plain["right"].numpy(), axis=0)
    assert 0.03 < changed.mean() < 0.2
    patch = item["right"].numpy()[:, changed]
    assert np.ptp(patch, axis=1).max() < 1e-6  # one flat colour per patch (here: one mean colour)


def test_extra_maps_refuse_the_spatial_scale():
    left, right, disp = textured_pair()
    with pytest.raises(DatasetError, match="teacher.*scale_prob"):
        make_item(left, right, disp, None, "s", AugmentConfig(crop=(64, 96), scale_prob=0.5), np.random.default_rng(0),
                  extras={"teacher": disp.copy()})


@pytest.mark.parametrize("augment, message", [
    ({"scale_prob": 1.5}, "augment: scale_prob must be <= 1"),
    ({"erasor_prob": 0.5}, "augment.erasor_prob is not an augmentation setting"),
    ({"crop": [64, 64]}, "augment.crop: the crop is the top-level 'crop' setting"),
    ({"scale_log2": [0.4, -0.2]}, "scale_log2 must be \\[low, high\\]"),
])
def test_bad_augment_settings_are_named(augment, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, None, {"augment": augment})


def test_fine_tuning_refuses_the_spatial_scale(tmp_path):
    from m2s_train.finetune import FinetuneConfig, run_finetune

    config = load_config(FinetuneConfig, None, {"train.augment": {"scale_prob": 0.5}})
    with pytest.raises(ConfigError, match="scale_prob must be 0 for fine-tuning"):
        run_finetune(config, tmp_path / "ft")
    assert not (tmp_path / "ft").exists()
