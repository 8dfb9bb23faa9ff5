from __future__ import annotations

import numpy as np
import pytest

from calib.errors import ShapeError
from calib.metrics import (MetricAccumulator, SparsificationAccumulator, disparity_metrics, sparsification,
                          sparsification_of_errors)


def test_definitions_on_a_known_case():
    gt = np.array([[10.0, 10.0, 100.0, 0.0], [np.nan, 20.0, 50.0, 4.0]], np.float32)
    pred = gt + np.array([[0.5, 1.5, 4.0, 9.0], [9.0, 2.5, 3.5, -3.5]], np.float32)
    m = disparity_metrics(pred, gt)
    # valid: 6 pixels (0 and NaN excluded); errors 0.5 1.5 4 2.5 3.5 3.5
    assert m["pixels"] == 6
    assert m["epe"] == pytest.approx((0.5 + 1.5 + 4 + 2.5 + 3.5 + 3.5) / 6)
    assert m["bad1"] == pytest.approx(5 / 6) and m["bad2"] == pytest.approx(4 / 6) and m["bad3"] == pytest.approx(3 / 6)
    # D1: > 3 px and > 5 % of GT: 4 (of 100: 4 % -> no), 3.5 (of 50 -> 7 %, yes), 3.5 (of 4, yes)
    assert m["d1"] == pytest.approx(2 / 6)


def test_torch_inputs_masks_and_splits():
    torch = pytest.importorskip("torch")
    gt = torch.full((1, 1, 4, 4), 8.0)
    pred = gt.clone()
    pred[..., :2] += 5.0
    noc = np.ones((4, 4), bool)
    noc[:, :2] = False
    m = disparity_metrics(pred, gt, noc_mask=noc)
    assert m["epe"] == pytest.approx(2.5) and m["noc_epe"] == 0.0 and m["occ_epe"] == pytest.approx(5.0)
    pred[0, 0, 0, 0] = float("nan")
    assert disparity_metrics(pred, gt)["bad1"] == pytest.approx(0.5)


def test_accumulator_pixel_vs_image_mean():
    acc = MetricAccumulator()
    acc.add(np.ones((2, 2)), np.full((2, 2), 2.0))  # 4 px, EPE 1
    acc.add(np.full((1, 4), 5.0), np.full((1, 4), 2.0), mask=np.array([[1, 0, 0, 0]], bool))  # 1 px, EPE 3
    s = acc.summary()
    assert s["pixel"]["epe"] == pytest.approx(7 / 5) and s["image"]["epe"] == pytest.approx(2.0)


def test_shape_mismatch():
    with pytest.raises(ShapeError, match="resize"):
        disparity_metrics(np.zeros((4, 4)), np.zeros((4, 5)))


class TestSparsification:
    def _case(self, seed=0, n=4000):
        rng = np.random.default_rng(seed)
        gt = rng.uniform(5, 50, (40, n // 40)).astype(np.float32)
        err = rng.exponential(1.5, gt.shape).astype(np.float32)
        return gt, gt + err * rng.choice([-1, 1], gt.shape), err

    def test_a_perfect_confidence_is_the_oracle_and_a_useless_one_is_random(self):
        gt, pred, err = self._case()
        perfect = sparsification(pred, gt, 1.0 / (1.0 + err))
        assert perfect["gap_closed_epe"] == pytest.approx(1.0) and perfect["gap_closed_bad3"] == pytest.approx(1.0)
        assert perfect["auc_epe"]["confidence"] == pytest.approx(perfect["auc_epe"]["oracle"])
        constant = sparsification(pred, gt, np.full(gt.shape, 0.5))  # ties keep pixel order: a random order here
        assert abs(constant["gap_closed_epe"]) < 0.1 and abs(constant["gap_closed_bad3"]) < 0.15
        inverted = sparsification(pred, gt, err)  # most confident where the error is largest
        assert inverted["gap_closed_epe"] < -0.5

    def test_curve_values_by_hand(self):
        gt = np.full((1, 4), 10.0, np.float32)
        pred = gt + np.array([[0.0, 1.0, 4.0, 10.0]], np.float32)
        conf = np.array([[0.9, 0.1, 0.8, 0.2]], np.float32)  # order by confidence: errors 0, 4, 10, 1
        r = sparsification(pred, gt, conf, densities=(0.25, 0.5, 0.75, 1.0))
        np.testing.assert_allclose(r["curve_epe"]["confidence"], [0.0, 2.0, 14 / 3, 15 / 4])
        np.testing.assert_allclose(r["curve_epe"]["oracle"], [0.0, 0.5, 5 / 3, 15 / 4])
        np.testing.assert_allclose(r["curve_bad3"]["confidence"], [0.0, 0.5, 2 / 3, 0.5])
        np.testing.assert_allclose(r["curve_epe"]["random"], [15 / 4] * 4)
        assert r["bad3_all"] == 0.5 and r["pixels"] == 4

    def test_invalid_gt_nan_confidence_and_nothing_valid(self):
        gt, pred, err = self._case()
        gt[:, :10] = np.nan
        conf = 1.0 / (1.0 + err)
        conf[0, 20] = np.nan  # counts as 0, not an error
        r = sparsification(pred, gt, conf)
        assert r["pixels"] == gt.size - 400 and np.isfinite(r["auc_epe"]["confidence"])
        assert sparsification(pred, np.full(gt.shape, np.nan), conf) is None
        acc = SparsificationAccumulator()
        assert acc.add(pred, np.zeros_like(gt), conf) is None and acc.summary() is None
        with pytest.raises(ShapeError):
            sparsification(pred, gt, conf[:, :5])

    def test_accumulator_averages_images(self):
        acc = SparsificationAccumulator()
        rows = []
        for seed in (1, 2):
            gt, pred, err = self._case(seed)
            rows.append(acc.add(pred, gt, 1.0 / (1.0 + err + np.random.default_rng(seed).exponential(1, err.shape))))
        s = acc.summary()
        assert s["images"] == 2
        assert s["auc_epe"]["confidence"] == pytest.approx(np.mean([r["auc_epe"]["confidence"] for r in rows]))
        assert 0 < s["gap_closed_epe"] < 1 and s["bad3_at_50"] < s["bad3_all"]
        assert "pooled" not in s  # only on request: it keeps every pixel

    def test_pooled_ranks_the_test_sets_pixels_together(self):
        """An image the model gets 80 % wrong next to one it gets all right: per image even the oracle's
        bad-3 at 50 % stays above 0 (the bad image has too few good pixels), pooled it is 0."""
        rng = np.random.default_rng(0)
        gt = np.full((10, 10), 20.0, np.float32)
        bad_pred = gt + np.where(rng.random(gt.shape) < 0.8, 10.0, 0.0).astype(np.float32)
        err_bad = np.abs(bad_pred - gt)
        acc = SparsificationAccumulator(pooled=True)
        acc.add(bad_pred, gt, 1.0 / (1.0 + err_bad))  # a perfect ranking inside each image
        acc.add(gt.copy(), gt, np.full(gt.shape, 0.5, np.float32))
        s = acc.summary()
        assert s["bad3_at_50"] == pytest.approx((err_bad > 3).mean() - 0.5, abs=0.02)  # (0.8 - 0.5) / 0.5 / 2 images
        pooled = s["pooled"]
        assert pooled["pixels"] == 200 and pooled["bad3_all"] == pytest.approx((err_bad > 3).sum() / 200)
        assert pooled["bad3_at_50"] == 0.0 and pooled["gap_closed_bad3"] == pytest.approx(1.0)
        errs = np.concatenate([err_bad.ravel(), np.zeros(100)])
        confs = np.concatenate([(1.0 / (1.0 + err_bad)).ravel(), np.full(100, 0.5)])
        assert pooled["auc_epe"] == pytest.approx(sparsification_of_errors(errs, confs)["auc_epe"])
        with pytest.raises(ShapeError):
            sparsification_of_errors(errs, confs[:5])


class TestLabelFree:
    def test_true_disparity_beats_wrong_ones_on_real_aloe(self, opencv_data):
        """No GT used by the metric: on Middlebury Aloe the GT disparity reconstructs the left view better,
        and is seen at the range limits less, than a scaled or a constant one."""
        import cv2

        from calib.image_io import read_rgb
        from calib.metrics import label_free_metrics

        left, right = read_rgb(opencv_data / "aloeL.jpg"), read_rgb(opencv_data / "aloeR.jpg")
        gt = cv2.imread(str(opencv_data / "aloeGT.png"), cv2.IMREAD_UNCHANGED).astype(np.float32)  # 8-bit, px
        gt = np.where(gt > 0, gt, np.nan).astype(np.float32)
        filled = np.where(np.isfinite(gt), gt, np.nanmedian(gt)).astype(np.float32)
        true = label_free_metrics(left, right, filled, max_disparity=256)
        for wrong in (filled * 0.8, np.full_like(filled, float(np.nanmedian(gt))), filled + 6.0):
            other = label_free_metrics(left, right, wrong.astype(np.float32), max_disparity=256)
            assert true["photometric"] < 0.8 * other["photometric"], (true["photometric"], other["photometric"])
        assert true["at_range_limit"] < 0.01 and 0.5 < true["visible_fraction"] <= 1.0
        zero = label_free_metrics(left, right, np.zeros_like(filled), max_disparity=256)
        assert zero["at_range_limit"] == 1.0

    def test_left_right_consistency_of_an_exact_synthetic_pair(self):
        from calib.metrics import label_free_metrics, visible_in_right

        rng = np.random.default_rng(0)
        h, w = 40, 80
        left = rng.integers(0, 255, (h, w, 3), np.uint8)
        d = np.full((h, w), 6.0, np.float32)
        d[10:30, 30:50] = 14.0  # a nearer square
        # the right view by construction: right(x - d) = left(x), nearest surface wins
        right = np.zeros_like(left)
        right_d = np.full((h, w), np.nan, np.float32)
        for y in range(h):
            for x in np.argsort(d[y], kind="stable"):  # far first, near overwrite
                xr = int(x - d[y, x])
                if 0 <= xr < w:
                    right[y, xr], right_d[y, xr] = left[y, x], d[y, x]
        right_d = np.where(np.isfinite(right_d), right_d, 6.0).astype(np.float32)
        good = label_free_metrics(left, right, d, right_d, max_disparity=64)
        # what fails is what the right camera cannot see (8 columns of background beside the square: 5 %)
        vis = visible_in_right(d)
        failed = ~good["lr_map"] & vis
        assert good["lr_consistency"] > 0.93 and failed.sum() <= 2 * h and good["photometric"] < 0.05
        bad = label_free_metrics(left, right, d + 3.0, right_d, max_disparity=64)
        assert bad["lr_consistency"] < 0.2 and bad["photometric"] > 3 * good["photometric"]
        assert vis[20, 30:50].all()  # the square itself is seen
        assert not vis[20, 22:30].any() and vis[20, 21]  # the 8 px of background left of it are hidden by it


def test_label_free_refuses_to_score_texture_less_or_identical_views():
    """An all-black pair scored photometric 0.0 and one image on both topics an LR consistency of 0.72, both
    better than the real pair: such pairs get NaN and the reason, never a good score."""
    import cv2

    from calib.metrics import label_free_metrics

    rng = np.random.default_rng(0)
    scene = cv2.resize(rng.uniform(0, 255, (12, 16, 3)).astype(np.float32), (128, 96), interpolation=cv2.INTER_CUBIC)
    wide = np.clip(scene + rng.normal(0, 8, scene.shape), 0, 255).astype(np.uint8)
    left, right = wide[:, 8:], wide[:, :-8]  # a real pair: disparity 8 px
    disp = np.full(left.shape[:2], 8.0, np.float32)
    real = label_free_metrics(left, right, disp, disp, 64)
    assert np.isfinite(real["photometric"]) and "unscorable" not in real
    black = label_free_metrics(np.zeros_like(left), np.zeros_like(right), disp, disp, 64)
    same = label_free_metrics(left, left, np.zeros_like(disp), np.zeros_like(disp), 64)
    assert np.isnan(black["photometric"]) and np.isnan(black["lr_consistency"]) and "no texture" in black["unscorable"]
    assert np.isnan(same["photometric"]) and np.isnan(same["lr_consistency"]) and "identical" in same["unscorable"]


def test_dead_cameras_with_sensor_noise_are_not_scored(opencv_data):
    """A black pair with sensor noise (m2s-bag make --noise 3) scored photometric 0.058 against 0.331 on the real
    pair, and identical views plus noise passed as a pair: the checks look at what the views carry beyond noise.
    The real Aloe pair, noisy or not, is still scored."""
    import cv2

    from calib.metrics import label_free_metrics, unscorable_pair

    rng = np.random.default_rng(1)

    def noisy(image, sigma=3.0):
        return np.clip(image.astype(np.float32) + rng.normal(0, sigma, image.shape), 0, 255).astype(np.uint8)

    def grey(image):
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0

    left = cv2.resize(cv2.imread(str(opencv_data / "aloeL.jpg")), (320, 278), interpolation=cv2.INTER_AREA)
    right = cv2.resize(cv2.imread(str(opencv_data / "aloeR.jpg")), (320, 278), interpolation=cv2.INTER_AREA)
    black = np.zeros_like(left)
    assert "no texture beyond noise" in unscorable_pair(grey(noisy(black)), grey(noisy(black)))
    assert "identical but for noise" in unscorable_pair(grey(noisy(left)), grey(noisy(left)))
    assert unscorable_pair(grey(left), grey(right)) is None
    assert unscorable_pair(grey(noisy(left)), grey(noisy(right))) is None
    disp = np.full(left.shape[:2], 10.0, np.float32)
    dead = label_free_metrics(noisy(black), noisy(black), disp, disp, 64)
    assert np.isnan(dead["photometric"]) and "no texture" in dead["unscorable"]
