from __future__ import annotations

import cv2
import numpy as np
import pytest

from calib import ShapeError, StereoCamera, depth_to_disparity, disparity_to_depth, disparity_to_points, q_matrix


class TestDisparityToDepth:
    def test_convention_pin(self):
        d = np.array([[10.0, 20.0]], dtype=np.float32)
        z = disparity_to_depth(d, focal_px=500.0, baseline_m=0.1)
        np.testing.assert_allclose(z, [[5.0, 2.5]], rtol=1e-7)
        assert z.dtype == np.float32

    def test_invalid_is_nan_not_far(self):
        d = np.array([[0.0, -3.0, np.nan, np.inf, 1e-3]], dtype=np.float64)
        z = disparity_to_depth(d, 500.0, 0.1)
        assert np.isnan(z[0, :4]).all()
        # a tiny positive disparity is a (far) valid depth, not altered by an epsilon
        assert z[0, 4] == pytest.approx(5e4)

    def test_doffs(self):
        d = np.array([[10.0, 2.0]])
        z = disparity_to_depth(d, 100.0, 1.0, doffs=-5.0)
        assert z[0, 0] == pytest.approx(100.0 / 5.0)
        assert np.isnan(z[0, 1])  # d + doffs <= 0

    def test_depth_range_clipping(self):
        d = np.array([[1.0, 10.0, 100.0]])
        z = disparity_to_depth(d, 100.0, 1.0, min_depth=2.0, max_depth=50.0)
        assert np.isnan(z[0, 0]) and np.isnan(z[0, 2]) and z[0, 1] == pytest.approx(10.0)

    def test_shape_and_parameter_checks(self):
        with pytest.raises(ShapeError, match="2-D"):
            disparity_to_depth(np.zeros((2, 3, 1)), 1.0, 1.0)
        with pytest.raises(ShapeError, match="baseline_m"):
            disparity_to_depth(np.zeros((2, 3)), 1.0, 0.0)
        with pytest.raises(ShapeError, match="min_depth"):
            disparity_to_depth(np.ones((2, 3)), 1.0, 1.0, min_depth=5.0, max_depth=1.0)


class TestDepthToDisparity:
    def test_round_trip_float_precision(self, rng):
        z = rng.uniform(0.3, 80.0, size=(64, 80)).astype(np.float32)
        for doffs in (0.0, 3.5):
            back = disparity_to_depth(depth_to_disparity(z, 721.5, 0.54, doffs), 721.5, 0.54, doffs)
            np.testing.assert_allclose(back, z, rtol=2e-7, atol=0)

    def test_invalid_depth(self):
        d = depth_to_disparity(np.array([[0.0, -1.0, np.nan, np.inf, 2.0]]), 100.0, 0.5)
        assert np.isnan(d[0, :4]).all() and d[0, 4] == pytest.approx(25.0)


class TestQMatrix:
    def test_matches_opencv_reprojection(self, rng):
        cam = StereoCamera.ideal(64, 48, focal_px=300.0, baseline_m=0.12, cx=30.5, cy=22.0)
        d = rng.uniform(2.0, 40.0, size=(48, 64)).astype(np.float32)
        ours = cam.disparity_to_points(d).points
        ocv = cv2.reprojectImageTo3D(d, cam.q_matrix)
        np.testing.assert_allclose(ours, ocv, rtol=1e-5, atol=1e-6)

    def test_values(self):
        q = q_matrix(500.0, 320.0, 240.0, 0.1)
        u, v, d = 400.0, 100.0, 25.0
        x, y, z, w = q @ np.array([u, v, d, 1.0])
        assert z / w == pytest.approx(500.0 * 0.1 / 25.0)
        assert x / w == pytest.approx((u - 320.0) * (z / w) / 500.0)


class TestDisparityToPoints:
    def test_fronto_parallel_plane(self):
        cam = StereoCamera.ideal(80, 60, focal_px=250.0, baseline_m=0.2)
        z0 = 4.0
        d = np.full((60, 80), 250.0 * 0.2 / z0, dtype=np.float32)
        pts = cam.disparity_to_points(d).points
        np.testing.assert_allclose(pts[:, :, 2], z0, rtol=1e-6)
        # X grows with u, Y with v, through the principal point
        np.testing.assert_allclose(pts[30, :, 0], (np.arange(80) - cam.cx) * z0 / 250.0, rtol=1e-5, atol=1e-6)

    def test_slanted_plane_points_lie_on_plane(self):
        # plane n.X = c with n = (0.2, -0.1, 1): disparity is affine in (u, v) for a plane
        cam = StereoCamera.ideal(96, 72, focal_px=200.0, baseline_m=0.1)
        n, c = np.array([0.2, -0.1, 1.0]), 3.0
        u, v = np.meshgrid(np.arange(96.0), np.arange(72.0))
        rays = np.stack([(u - cam.cx) / 200.0, (v - cam.cy) / 200.0, np.ones_like(u)], -1)
        z = c / (rays @ n)
        d = (200.0 * 0.1 / z).astype(np.float32)
        pts = cam.disparity_to_points(d).points.reshape(-1, 3).astype(np.float64)
        np.testing.assert_allclose(pts @ n, c, rtol=1e-5)

    def test_invalid_nan_and_valid_only_with_colours(self, rng):
        cam = StereoCamera.ideal(20, 10, focal_px=100.0, baseline_m=0.1)
        d = rng.uniform(1, 5, size=(10, 20)).astype(np.float32)
        d[2, 3] = 0
        d[5, 5] = np.nan
        rgb = rng.integers(0, 255, size=(10, 20, 3), dtype=np.uint8)
        org = cam.disparity_to_points(d, rgb)
        assert np.isnan(org.points[2, 3]).all() and np.isnan(org.points[5, 5]).all()
        flat = cam.disparity_to_points(d, rgb, organized=False)
        assert flat.points.shape == (198, 3) and flat.colors.shape == (198, 3)
        assert np.isfinite(flat.points).all()
        np.testing.assert_array_equal(flat.colors[0], rgb[0, 0])

    def test_stride_keeps_pixel_coordinates(self):
        cam = StereoCamera.ideal(40, 30, focal_px=100.0, baseline_m=0.1)
        d = np.full((30, 40), 5.0, np.float32)
        full = cam.disparity_to_points(d).points
        dec = cam.disparity_to_points(d, stride=4).points
        np.testing.assert_array_equal(dec, full[::4, ::4])

    def test_depth_to_points_into_a_padded_buffer(self):
        cam = StereoCamera.ideal(40, 30, focal_px=100.0, baseline_m=0.1)
        z = np.full((30, 40), 2.0, np.float32)
        z[3, 4] = np.nan
        buf = np.full((8, 10, 4), 7.0, np.float32)  # stride 4: 8 x 10 points, a 4th channel left alone
        cloud = cam.depth_to_points(z, stride=4, out=buf)
        np.testing.assert_array_equal(buf[:, :, :3], cam.depth_to_points(z, stride=4).points)
        assert np.shares_memory(cloud.points, buf) and (buf[:, :, 3] == 7.0).all()
        with pytest.raises(ShapeError, match="organised"):
            cam.depth_to_points(z, organized=False, out=np.empty((30, 40, 4), np.float32))
        with pytest.raises(ShapeError, match="out must be float32"):
            cam.depth_to_points(z, out=np.empty((30, 40, 2), np.float32))

    def test_checks(self):
        with pytest.raises(ShapeError, match="stride"):
            disparity_to_points(np.ones((4, 4)), fx=1, fy=1, cx=0, cy=0, baseline_m=1, stride=0)
        with pytest.raises(ShapeError, match="colors"):
            disparity_to_points(np.ones((4, 4)), fx=1, fy=1, cx=0, cy=0, baseline_m=1,
                                colors=np.zeros((4, 5, 3), np.uint8))
