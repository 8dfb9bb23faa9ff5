"""Property-based tests (hypothesis): the CLI flag validators and the metrics on random NaN/inf/empty input."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from calib.console import bounded, non_negative_int, positive_float, positive_int  # noqa: E402
from calib.metrics import MetricAccumulator, disparity_metrics  # noqa: E402
from calib.safe_files import dumps_json  # noqa: E402

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True)
weird_text = st.one_of(st.text(max_size=12), st.sampled_from(["nan", "-nan", "inf", "-inf", "1e999", "0x10", " 3",
                                                               "3.0", "-0", "1_000", "", "NaN", "Infinity"]))


@SETTINGS
@given(weird_text)
def test_validators_accept_exactly_the_values_in_range(text):
    for parse, kind, ok in ((positive_int, int, lambda v: v >= 1), (non_negative_int, int, lambda v: v >= 0),
                            (positive_float, float, lambda v: v > 0), (bounded(float, ge=-1, le=1), float,
                                                                      lambda v: -1 <= v <= 1)):
        try:
            expected = kind(text)
        except ValueError:
            expected = None
        if expected is not None and kind is float and not math.isfinite(expected):
            expected = None
        if expected is not None and not ok(expected):
            expected = None
        if expected is None:
            with pytest.raises(argparse.ArgumentTypeError) as info:
                parse(text)
            assert "got" in str(info.value)  # says what it wanted and what it got
        else:
            assert parse(text) == expected and isinstance(parse(text), kind)


floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                   st.sampled_from([0.0, -0.0, float(np.float32(1e-30))]))
maps = hnp.arrays(np.float32, st.tuples(st.integers(0, 6), st.integers(1, 6)), elements=floats)


@SETTINGS
@given(maps, st.data())
def test_metrics_on_any_input_are_rates_or_null_never_a_fake_score(gt, data):
    pred = data.draw(hnp.arrays(np.float32, gt.shape, elements=floats))
    m = disparity_metrics(pred, gt)
    with np.errstate(invalid="ignore"):
        valid = int((np.isfinite(gt) & (gt > 0)).sum())
    assert m["pixels"] == valid
    for key in ("d1", "bad1", "bad2", "bad3"):
        if valid:
            assert 0.0 <= m[key] <= 1.0
        else:
            assert math.isnan(m[key])  # nothing measured: not 0 %
    assert (math.isnan(m["epe"]) if not valid else m["epe"] >= 0)
    acc = MetricAccumulator()
    acc.add(pred, gt)
    text = dumps_json(acc.summary())  # always strict JSON
    assert "NaN" not in text and "Infinity" not in text


# -- round 3: the geometry validators (calib.checks) on random NaN / inf / degenerate input -----------------
any_f64 = st.floats(allow_nan=True, allow_infinity=True, width=64)
small_f64 = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)


def _proper(T: np.ndarray) -> bool:
    R = T[:3, :3]
    return (np.isfinite(T).all() and np.allclose(T[3], [0, 0, 0, 1]) and np.allclose(R @ R.T, np.eye(3), atol=1e-3)
            and abs(np.linalg.det(R) - 1) < 1e-3)


@SETTINGS
@given(st.one_of(hnp.arrays(np.float64, (4, 4), elements=any_f64),
                 st.builds(lambda q, t, flip: _pose(q, t, flip), st.lists(small_f64, min_size=4, max_size=4),
                           st.lists(small_f64, min_size=3, max_size=3), st.booleans())))
def test_a_pose_is_a_rigid_motion_or_a_clear_error(T):
    from calib.checks import check_pose
    from calib.errors import CalibrationError

    try:
        out = check_pose(T, "T")
    except CalibrationError as exc:
        assert str(exc).startswith(("T ", "the rotation of T"))
        return
    assert _proper(out)


def _pose(q, t, flip):
    q = np.asarray(q, np.float64)
    n = np.linalg.norm(q)
    q = q / n if n > 0 else np.array([0, 0, 0, 1.0])
    x, y, z, w = q
    T = np.eye(4)
    T[:3, :3] = [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                 [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                 [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]
    if flip:
        T[:3, 0] *= -1  # a mirror
    T[:3, 3] = t
    return T


@SETTINGS
@given(st.lists(any_f64, min_size=3, max_size=3), st.lists(any_f64, min_size=4, max_size=4))
def test_a_quaternion_pose_is_proper_or_a_clear_error(t, q):
    from calib.checks import quaternion_pose
    from calib.errors import CalibrationError

    try:
        T = quaternion_pose(t, q, "the extrinsic")
    except CalibrationError as exc:
        assert str(exc).startswith(("the extrinsic", "the rotation of the extrinsic"))
        return
    assert _proper(T)


@SETTINGS
@given(st.lists(any_f64, min_size=4, max_size=4), st.integers(1, 4096), st.integers(1, 4096))
def test_intrinsics_are_a_camera_of_that_size_or_a_clear_error(fxycxy, width, height):
    from calib.camera import CameraInfo
    from calib.errors import CalibrationError

    fx, fy, cx, cy = fxycxy
    P = [[fx, 0, cx, 0], [0, fy, cy, 0], [0, 0, 1, 0]]
    try:
        info = CameraInfo(width, height, np.eye(3), np.zeros(5), np.eye(3), P, camera_name="cam")
    except CalibrationError:
        return
    side = max(width, height)
    assert 0.05 * side <= info.P[0, 0] <= 1000 * side and 0.05 * side <= info.P[1, 1] <= 1000 * side
    assert np.isfinite(info.P).all()


@SETTINGS
@given(any_f64, any_f64, st.floats(min_value=1e-3, max_value=1e4), st.integers(1, 8192),
       st.one_of(st.none(), st.floats(min_value=1, max_value=1024)))
def test_a_depth_range_is_representable_or_a_clear_error(lo, hi, fb, width, max_disp):
    from calib.checks import check_depth_range
    from calib.errors import CalibrationError

    try:
        check_depth_range(lo, hi, fb=fb, width=width, max_disp=max_disp)
    except CalibrationError:
        return
    assert 0 < lo < hi and math.isfinite(hi)
    assert fb / lo <= width and (max_disp is None or fb / lo <= max_disp)


@SETTINGS
@given(hnp.arrays(np.float64, st.tuples(st.integers(0, 40), st.just(3)), elements=any_f64))
def test_lidar_points_give_labels_the_image_can_hold(points):
    from calib import StereoCamera

    cam = StereoCamera.ideal(64, 48, focal_px=50.0, baseline_m=0.2)
    labels = cam.lidar_to_disparity(points, np.eye(4))
    d = labels.disparity[np.isfinite(labels.disparity)]
    assert ((d > 0) & (d <= 64)).all()  # never a label wider than the image (a point at z = 1e-9 m)
    assert labels.projected + labels.behind + labels.too_near <= len(points)


@SETTINGS
@given(st.integers(0, 4), st.integers(0, 4), st.integers(0, 24), st.integers(0, 200),
       st.lists(st.integers(-4, 30), min_size=3, max_size=3), st.binary(max_size=300))
def test_a_point_cloud_layout_is_read_or_a_clear_error(width, height, step, row_step, offsets, data):
    pytest.importorskip("rosbags")
    from types import SimpleNamespace

    from calib.rosbag_io import BagError
    from m2s_stereo.bag_tools import cloud_points

    msg = SimpleNamespace(fields=[SimpleNamespace(name=n, offset=o, datatype=7) for n, o in zip("xyz", offsets)],
                          width=width, height=height, point_step=step, row_step=row_step, is_bigendian=False,
                          data=np.frombuffer(data, np.uint8))
    try:
        pts = cloud_points(msg, "cloud")
    except BagError as exc:
        assert str(exc).startswith("cloud")
        return
    assert pts.ndim == 2 and pts.shape[1] == 3 and np.isfinite(pts).all() and len(pts) <= width * height
