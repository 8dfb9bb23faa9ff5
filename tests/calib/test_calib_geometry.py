from __future__ import annotations

import dataclasses

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

    def test_depth_range_is_rep117_inf_not_nan(self):
        d = np.array([[1.0, 10.0, 100.0, np.nan]])
        z = disparity_to_depth(d, 100.0, 1.0, min_depth=2.0, max_depth=50.0)
        # 100 m: too far -> +inf; 1 m: too close -> -inf; no measurement stays NaN (REP 117)
        assert z[0, 0] == np.inf and z[0, 2] == -np.inf and z[0, 1] == pytest.approx(10.0) and np.isnan(z[0, 3])

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


def _camera(w, h, focal_px, baseline_m, doffs=0.0):
    """An ideal pair whose right principal point is ``doffs`` pixels right of the left one."""
    ideal = StereoCamera.ideal(w, h, focal_px=focal_px, baseline_m=baseline_m)
    p_right = ideal.right.P.copy()
    p_right[0, 2] += doffs
    return StereoCamera(ideal.left, dataclasses.replace(ideal.right, P=p_right))


def _fill_case(rng, h, w):
    """Disparities with every kind of invalid value, and an RGB image."""
    d = rng.uniform(-3.0, 60.0, (h, w)).astype(np.float32)
    bad = rng.random((h, w)) < 0.15
    d[bad] = rng.choice(np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30], np.float32), int(bad.sum()))
    return d, rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _fill_all(cam, d, colors, stride, backend, **kw):
    h, w = d.shape
    hs, ws = -(-h // stride), -(-w // stride)
    disp, depth = np.full((h, w), 7.0, np.float32), np.full((h, w), 7.0, np.float32)
    packed = np.full((hs, ws, 4), 7.0, np.float32)
    cam.fill_outputs(d, disparity_out=disp, depth_out=depth, points_out=packed, rgb_out=packed[:, :, 3].view(np.uint32),
                     colors=colors, stride=stride, backend=backend, **kw)
    return disp, depth, packed


def _assert_same_bits(a, b, msg=""):
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    np.testing.assert_array_equal(nan_a, nan_b, err_msg=msg)
    np.testing.assert_array_equal(a.view(np.uint32)[~nan_a], b.view(np.uint32)[~nan_b], err_msg=msg)


class TestFillOutputs:
    """One pass for everything the node publishes: the values of the separate functions, exactly."""

    @pytest.mark.parametrize("stride", [1, 3])
    def test_numpy_path_equals_the_separate_functions(self, rng, stride):
        cam = _camera(23, 17, 30.0, 0.2, doffs=1.5)
        d, rgb = _fill_case(rng, 17, 23)
        disp, depth, packed = _fill_all(cam, d, rgb, stride, "numpy", min_depth=0.3, max_depth=3.0)
        with np.errstate(invalid="ignore"):
            _assert_same_bits(disp, np.where(d > 0, d + np.float32(1.5), np.float32(np.nan)))
        _assert_same_bits(depth, cam.disparity_to_depth(d, 0.3, 3.0))
        cloud = cam.disparity_to_points(d, rgb, stride=stride, min_depth=0.3, max_depth=3.0)
        _assert_same_bits(packed[:, :, :3], cloud.points)
        c = cloud.colors.astype(np.uint32)
        np.testing.assert_array_equal(packed[:, :, 3].view(np.uint32), (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2])

    def test_numba_equals_numpy_bit_for_bit(self):
        pytest.importorskip("numba", reason="numba not installed (optional compiled output pass)")
        rng = np.random.default_rng(1)
        for case in range(30):
            h, w = int(rng.integers(1, 25)), int(rng.integers(1, 40))
            cam = _camera(w, h, float(rng.uniform(5, 80)), float(rng.uniform(0.05, 1)),
                          doffs=float(rng.choice([0.0, 2.25, -1.0])))
            d, rgb = _fill_case(rng, h, w)
            colors = [rgb, rgb[:, :, 1], None][case % 3]
            kw = {"stride": int(rng.integers(1, 4)), "min_depth": [None, 0.5][case % 2], "max_depth": [None, 4.0][case % 4 // 2]}
            a = _fill_all(cam, d, colors, backend="numpy", **kw)
            b = _fill_all(cam, d, colors, backend="numba", **kw)
            for name, x, y in zip(("disparity", "depth", "points+rgb"), a, b):
                _assert_same_bits(x, y, f"case {case}: {name}")

    @pytest.mark.parametrize("backend", ["numpy", "auto"])
    def test_only_the_outputs_asked_for(self, backend):
        cam = StereoCamera.ideal(8, 6, focal_px=100.0, baseline_m=0.5)
        d = np.full((6, 8), 10.0, np.float32)
        depth = np.zeros((6, 8), np.float32)
        cam.fill_outputs(d, depth_out=depth, backend=backend)
        np.testing.assert_array_equal(depth, 5.0)
        packed = np.full((6, 8, 4), 9.0, np.float32)
        cam.fill_outputs(d, points_out=packed, backend=backend)  # x, y, z only: the 4th channel untouched
        assert (packed[:, :, 3] == 9.0).all() and (packed[:, :, 2] == 5.0).all()
        rgb = np.full((6, 8), 1, np.uint32)
        cam.fill_outputs(d, rgb_out=rgb, backend=backend)  # no colours: packed rgb 0
        assert (rgb == 0).all()

    def test_checks(self):
        cam = StereoCamera.ideal(8, 6, focal_px=100.0, baseline_m=0.5)
        d = np.ones((6, 8), np.float32)
        with pytest.raises(ShapeError, match="depth_out must be a writeable float32 array of shape \\(6, 8\\)"):
            cam.fill_outputs(d, depth_out=np.zeros((6, 7), np.float32))
        with pytest.raises(ShapeError, match="points_out"):
            cam.fill_outputs(d, points_out=np.zeros((6, 8, 4), np.float64))
        with pytest.raises(ShapeError, match="points_out"):
            cam.fill_outputs(d, stride=2, points_out=np.zeros((6, 8, 4), np.float32))
        frozen = np.zeros((6, 8), np.float32)
        frozen.flags.writeable = False
        with pytest.raises(ShapeError, match="writeable"):
            cam.fill_outputs(d, disparity_out=frozen)
        with pytest.raises(ShapeError, match="must not exceed"):
            cam.fill_outputs(d, depth_out=np.zeros((6, 8), np.float32), min_depth=3.0, max_depth=1.0)
        with pytest.raises(ShapeError, match="backend"):
            cam.fill_outputs(d, depth_out=np.zeros((6, 8), np.float32), backend="cuda")
        with pytest.raises(Exception, match="image is 8x5"):
            cam.fill_outputs(np.ones((5, 8), np.float32))


class TestLeftRightConsistency:
    def test_a_plane_is_consistent_where_its_match_is_in_the_image(self):
        from calib.geometry import left_right_consistency

        left = np.full((4, 20), 5.0, np.float32)
        right = np.full((4, 20), 5.0, np.float32)
        consistent, checkable = left_right_consistency(left, right, 1.0)
        np.testing.assert_array_equal(checkable[0], np.arange(20) >= 5)  # x_R = x - 5 inside the right image
        np.testing.assert_array_equal(consistent, checkable)

    def test_a_disagreeing_right_view_and_invalid_pixels(self):
        from calib.geometry import left_right_consistency

        left = np.full((3, 30), 4.0, np.float32)
        left[:, 20] = np.nan
        right = np.full((3, 30), 4.0, np.float32)
        right[:, 10] = 7.5  # read by left x = 14 (exactly) and, interpolated, nobody else
        right[:, 11] = 4.9  # within 1 px: still consistent
        consistent, checkable = left_right_consistency(left, right, 1.0)
        assert not checkable[:, 20].any() and not consistent[:, 20].any()  # NaN: nothing to check
        assert not consistent[:, 14].any() and consistent[:, 15].all() and checkable[:, 14].all()
        assert consistent[:, 13].all()
        with pytest.raises(ShapeError):
            left_right_consistency(left, right[:, :10])
