"""The fair SGBM baseline (calib.sgbm): the scene's range, the left band answered, nothing made up."""

from __future__ import annotations

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from calib.errors import DataError  # noqa: E402
from calib.sgbm import SearchRange, fill_invalid, sgbm_disparity, sgbm_disparity_unpadded, sgbm_right_view  # noqa: E402

SHIFT = 20


def _textured_pair(h: int = 96, w: int = 200, shift: int = SHIFT, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fronto-parallel textured plane at ``shift`` px: left(x) = right(x - shift), GT disparity = shift; the
    columns x < shift see what the right image does not."""
    rng = np.random.default_rng(seed)
    scene = cv2.resize(rng.uniform(0, 255, (h // 4, (w + shift) // 4, 3)).astype(np.float32), (w + shift, h),
                       interpolation=cv2.INTER_CUBIC)
    scene = np.clip(scene + rng.normal(0, 12, scene.shape), 0, 255).astype(np.uint8)
    return scene[:, :w], scene[:, shift:]  # right(x) = scene(x + shift): left(x) = right(x - shift)


class TestSearchRange:
    def test_rounds_up_to_sixteen_and_says_where_it_came_from(self):
        gt = np.full((4, 4), np.nan, np.float32)
        gt[1, 1] = 59.9
        r = SearchRange.from_ground_truth(gt)
        assert r.px == 64 and "59.9" in r.source
        assert SearchRange.covering(64.0, "x").px == 64 and SearchRange.covering(0.5, "x").px == 16

    def test_no_ground_truth_is_an_error_not_a_default(self):
        with pytest.raises(DataError, match="no valid ground-truth disparity"):
            SearchRange.from_ground_truth(np.full((4, 4), np.nan, np.float32))
        with pytest.raises(DataError, match="not a disparity"):
            SearchRange.covering(float("nan"), "a camera")


class TestLeftBand:
    def test_the_fair_baseline_answers_the_left_band_the_old_call_left_at_zero(self):
        """Fails on the call the project made before (no padding, then fill_invalid wrote 0 px in the band)."""
        left, right = _textured_pair()
        search = SearchRange.covering(2 * SHIFT, "test")  # 48 px: the left 48 columns could not be searched
        band = np.s_[10:-10, SHIFT + 3:search.px]  # the match is in the image, but beyond an unpadded search
        fair = fill_invalid(sgbm_disparity(left, right, search))
        assert np.isfinite(fair).all()
        assert np.median(np.abs(fair[band] - SHIFT)) < 1.0  # the band carries the plane's disparity
        old = sgbm_disparity_unpadded(left, right, search.px)
        assert np.isnan(old[:, :search.px]).all()  # the old call: no answer at all there
        old_filled = np.nan_to_num(old, nan=0.0)  # what fill_invalid made of it: nothing to its left, so 0 px
        assert (old_filled[band] == 0).all()
        assert np.median(np.abs(fair[10:-10, search.px:] - SHIFT)) < 1.0  # and no worse where both search

    def test_right_view_is_the_mirrored_fair_match(self):
        left, right = _textured_pair()
        right_view = sgbm_right_view(left, right, 48)
        assert np.nanmedian(np.abs(right_view[10:-10, 10:-60] - SHIFT)) < 1.0
        assert np.isfinite(right_view[10:-10, -40:]).mean() > 0.5  # its 'left band' is the right edge: answered


class TestFillInvalid:
    def test_fills_from_the_left_then_the_right_and_never_invents_a_zero(self):
        d = np.array([[np.nan, np.nan, 5.0, np.nan, 7.0], [np.nan] * 5], np.float32)
        out = fill_invalid(d)
        np.testing.assert_array_equal(out[0], [5.0, 5.0, 5.0, 5.0, 7.0])
        assert np.isnan(out[1]).all()  # a row without any answer stays unknown (scored as an error)
        assert np.isnan(fill_invalid(np.full((2, 3), np.nan, np.float32))).all()


def test_fair_sgbm_on_real_aloe_matches_the_honest_baseline_figures(opencv_data):
    """Aloe at quarter size, GT range 64 px: measured EPE 1.33 px, bad-3 9.4 % (the old call with the same
    range and its left band of zeros: far worse)."""
    pytest.importorskip("torch")
    from calib.metrics import disparity_metrics
    from m2s_train.data.stereo_datasets import build_dataset

    left, right, gt, _ = build_dataset("aloe:quarter").load(0)
    search = SearchRange.from_ground_truth(gt)
    fair = disparity_metrics(fill_invalid(sgbm_disparity(left, right, search)), gt)
    old = disparity_metrics(np.nan_to_num(sgbm_disparity_unpadded(left, right, search.px), nan=0.0), gt)
    assert search.px == 64 and fair["bad3"] < 0.11 and fair["epe"] < 1.5
    assert old["bad3"] > fair["bad3"] + 0.05  # the left band of zeros is most of the old figure's gap


def test_sgbm_wls_is_dense_on_the_plane_or_names_the_package_it_needs():
    from calib.sgbm import has_wls, sgbm_wls_disparity

    left, right = _textured_pair()
    if not has_wls():
        with pytest.raises(DataError, match="opencv-contrib-python-headless"):
            sgbm_wls_disparity(left, right, 48)
        return
    dense = sgbm_wls_disparity(left, right, 48)
    assert np.isfinite(dense[10:-10, SHIFT:]).mean() > 0.95
    assert np.nanmedian(np.abs(dense[10:-10, SHIFT + 3:] - SHIFT)) < 1.0
