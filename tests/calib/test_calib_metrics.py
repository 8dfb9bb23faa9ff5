from __future__ import annotations

import numpy as np
import pytest

from calib.errors import ShapeError
from calib.metrics import MetricAccumulator, disparity_metrics


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
