"""Every kind of picture the tools write, rendered on tiny data: the file is written, titled, each map with a
colour bar (the figure module is the one place their look is decided: calib.figures)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")
cv2 = pytest.importorskip("cv2")

from calib.figures import (  # noqa: E402
    Panel,
    confidence_panel,
    disparity_panel,
    error_panel,
    image_panel,
    panel_figure,
    stereo_result_figure,
)


def _png(path):
    image = cv2.imread(str(path))
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 200, path
    return image


def test_stereo_result_figure_has_every_panel_and_a_shared_scale(tmp_path):
    rng = np.random.default_rng(0)
    left = rng.integers(0, 255, (48, 64, 3), np.uint8)
    gt = np.full((48, 64), 20.0, np.float32)
    gt[:10] = 0  # no ground truth there
    pred = gt + rng.normal(0, 1, gt.shape).astype(np.float32)
    pred[0, 0] = np.nan
    conf = rng.random((48, 64)).astype(np.float32)
    path = stereo_result_figure(tmp_path / "error.png", "model on aloe: EPE 0.8 px", left, pred, gt, conf, vmax=40)
    _png(path)
    with_gt = _png(path)
    only = _png(stereo_result_figure(tmp_path / "no_gt.png", "model on my camera", left, pred))
    assert with_gt.shape[0] > only.shape[0]  # two rows of panels with GT, error and confidence; one without


def test_panel_kinds_and_their_units(tmp_path, monkeypatch):
    import matplotlib.figure

    labels, titles = [], []
    real = matplotlib.figure.Figure.colorbar

    def spy(self, mappable, **kw):
        bar = real(self, mappable, **kw)
        original = bar.set_label
        bar.set_label = lambda text, **k: (labels.append(text), original(text, **k))[1]
        return bar

    monkeypatch.setattr(matplotlib.figure.Figure, "colorbar", spy)
    d = np.linspace(0, 30, 48 * 64, dtype=np.float32).reshape(48, 64)
    panels = [image_panel(np.zeros((48, 64, 3), np.uint8), "left"), disparity_panel(d, "disparity"),
              error_panel(d + 1, d, 3.0), confidence_panel(d / 30), Panel(d / 60, "residual", "residual", 0, 0.3),
              Panel(np.zeros((48, 64, 3), np.uint8), "masks", "mask", legend=(("hole", (255, 0, 0)),))]
    for p in panels:
        titles.append(p.title)
    _png(panel_figure(tmp_path / "all.png", "every kind", panels, columns=3))
    assert labels == ["disparity (px)", "|error| (px)", "confidence (0 = unsure, 1 = sure)", "|left - warped right| (0..1)"]
    with pytest.raises(ValueError):
        panel_figure(tmp_path / "none.png", "empty", [])


def test_synthesis_preview_and_sparsification_plot(tmp_path):
    from calib.metrics import sparsification_plot
    from m2s_train.synth.pipeline import preview_figure
    from m2s_train.synth.shards import StereoSample

    pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    left = rng.integers(0, 255, (40, 60, 3), np.uint8)
    mask = np.zeros((40, 60), bool)
    mask[5:10, 5:10] = True
    sample = StereoSample.__new__(StereoSample)
    fields = dict(sample_id="s1", left=left, right=left, disparity=np.full((40, 60), 7.0, np.float32), hole=mask,
                  ea_mask=mask, visible=~mask, meta={"max_disparity": 40.0})
    for k, v in fields.items():
        object.__setattr__(sample, k, v)
    _png(preview_figure(tmp_path / "preview.png", sample))
    summary = {"densities": [0.1, 0.5, 1.0], "curve_epe": {k: [1, 2, 3] for k in ("confidence", "oracle", "random")},
               "curve_bad3": {k: [0.1, 0.2, 0.3] for k in ("confidence", "oracle", "random")},
               "auc_epe": {k: 2.0 for k in ("confidence", "oracle", "random")},
               "auc_bad3": {k: 0.2 for k in ("confidence", "oracle", "random")}}
    sparsification_plot(summary, tmp_path / "sparsification.png", "model on aloe")
    _png(tmp_path / "sparsification.png")


def test_replay_report_figures_share_one_disparity_scale(tmp_path, monkeypatch):
    """The replay report's pictures (error maps, latency, per-frame error): written, titled, one disparity range
    for every example of the sequence."""
    pytest.importorskip("rosbags")
    from m2s_stereo import replay
    from m2s_stereo.bag_tools import Frame

    import calib.figures

    scales = []
    real = calib.figures.stereo_result_figure

    def spy(path, title, *a, vmax=None, **kw):
        scales.append((title, vmax))
        return real(path, title, *a, vmax=vmax, **kw)

    monkeypatch.setattr(replay, "stereo_result_figure", spy)
    rng = np.random.default_rng(2)
    preds = []
    for k, level in enumerate((10.0, 30.0)):  # two frames with different disparity ranges
        gt = np.full((40, 56), level, np.float32)
        disp = gt + rng.normal(0, 0.5, gt.shape).astype(np.float32)
        disp[:4] = np.nan  # not published (below the confidence threshold)
        frame = Frame(k, rng.integers(0, 255, (40, 56, 3), np.uint8), None, None, gt_disparity=gt)
        preds.append((frame, disp, rng.random(gt.shape).astype(np.float32)))
    result = {"mode": "offline", "frames": 2, "answered": 2, "dropped": 0, "latency_ms": [(0, 5.0), (1, 6.0)],
              "per_frame": [{"frame": 0, "epe": 0.4}, {"frame": 1, "epe": 0.5}], "accuracy": {}, "_preds": preds}
    replay.write_report(result, tmp_path)
    for name in ("error_map_0.png", "error_map_1.png", "latency.png", "per_frame_error.png"):
        _png(tmp_path / name)
    assert len(scales) == 2 and scales[0][1] == scales[1][1] and 29 < scales[0][1] < 32
    assert all("EPE" in title and "90 % of the ground truth it published" in title for title, _ in scales)
    assert "frames: 2" in (tmp_path / "report.md").read_text()
