"""Depth backends: real transformers Depth Anything code path (tiny random model), precomputed maps, prior."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from m2s_train.errors import ConfigError, SynthesisError
from m2s_train.synth.depth import (
    DepthAnythingEstimator,
    PrecomputedDepthEstimator,
    SegmentPlaneDepthPrior,
    create_depth_estimator,
)


@pytest.fixture(scope="module")
def tiny_depth_anything(tmp_path_factory):
    """A randomly initialised Depth Anything (DINOv2 backbone + DPT head) saved like a real checkpoint."""
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    backbone = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, patch_size=14,
        image_size=56, out_features=["stage1", "stage2", "stage3", "stage4"], reshape_hidden_states=False,
    )
    config = transformers.DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[16, 16, 16, 16],
        fusion_hidden_size=16, head_hidden_size=8, depth_estimation_type="relative",
    )
    path = tmp_path_factory.mktemp("tiny-da")
    transformers.DepthAnythingForDepthEstimation(config).save_pretrained(path)
    transformers.DPTImageProcessor(
        do_resize=True, size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
        do_normalize=True, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(path)
    return path


class TestDepthAnything:
    def test_real_code_path_batched_mixed_sizes(self, tiny_depth_anything):
        est = DepthAnythingEstimator(str(tiny_depth_anything), device="cpu", batch_size=2)
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 255, (70, 90, 3), np.uint8) for _ in range(3)] + [rng.integers(0, 255, (64, 64, 3), np.uint8)]
        out = est.estimate(images, ["a", "b", "c", "d"])
        assert [o.shape for o in out] == [(70, 90)] * 3 + [(64, 64)]
        assert all(o.dtype == np.float32 and np.isfinite(o).all() for o in out)
        # batching does not change results
        single = est.estimate(images[1:2], ["b"])[0]
        np.testing.assert_allclose(single, out[1], rtol=1e-4, atol=1e-5)

    def test_missing_model_says_how_to_get_it(self, tmp_path):
        pytest.importorskip("torch")
        pytest.importorskip("transformers")
        with pytest.raises(SynthesisError, match="--depth-model"):
            DepthAnythingEstimator(str(tmp_path / "nope"), device="cpu")


class TestPrecomputed:
    def test_npy_png_and_depth_conversion(self, tmp_path):
        inv = np.random.default_rng(1).uniform(0.1, 2.0, (20, 30)).astype(np.float32)
        np.save(tmp_path / "a.npy", inv)
        cv2.imwrite(str(tmp_path / "b.png"), (inv * 1000).astype(np.uint16))
        img = np.zeros((20, 30, 3), np.uint8)
        a, b = PrecomputedDepthEstimator(tmp_path).estimate([img, img], ["a", "b"])
        np.testing.assert_array_equal(a, inv)
        np.testing.assert_allclose(b, np.floor(inv * 1000), atol=0)
        depth = PrecomputedDepthEstimator(tmp_path, kind="depth").estimate([img], ["a"])[0]
        np.testing.assert_allclose(depth, 1.0 / inv, rtol=1e-6)

    def test_resized_to_image_and_missing_file(self, tmp_path):
        np.save(tmp_path / "a.npy", np.ones((10, 15), np.float32))
        est = PrecomputedDepthEstimator(tmp_path)
        assert est.estimate([np.zeros((20, 30, 3), np.uint8)], ["a"])[0].shape == (20, 30)
        with pytest.raises(SynthesisError, match="zzz"):
            est.estimate([np.zeros((20, 30, 3), np.uint8)], ["zzz"])


class TestSegmentPrior:
    def test_discontinuities_follow_colour_edges_and_deterministic(self):
        img = np.zeros((120, 160, 3), np.uint8)
        img[:, :] = (30, 120, 200)
        img[30:90, 40:110] = (230, 60, 20)
        prior = SegmentPlaneDepthPrior(seed=3)
        a = prior.estimate([img], ["x"])[0]
        np.testing.assert_array_equal(a, prior.estimate([img], ["x"])[0])
        gx = np.abs(np.diff(a, axis=1))
        edge_cols = np.unique(np.nonzero(gx[60] > 0.05)[0])
        # the only strong steps on a middle row are at the square's borders (x = 40, 110)
        assert set(edge_cols.tolist()) <= {38, 39, 40, 41, 108, 109, 110, 111}
        assert len(edge_cols) >= 1

    def test_factory(self, tmp_path):
        assert isinstance(create_depth_estimator("auto"), SegmentPlaneDepthPrior)
        with pytest.raises(ConfigError, match="depth backend"):
            create_depth_estimator("midas")
        with pytest.raises(ConfigError, match="precomputed_dir"):
            create_depth_estimator("precomputed")
