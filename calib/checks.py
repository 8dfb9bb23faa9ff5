"""One check per kind of geometric input, shared by every entry point that takes it.

A pose, an intrinsic matrix, a point cloud or a depth range that is not geometry (NaN, a mirror, a
focal length of 1e-300 px, a point a nanometre in front of the lens) gives wrong labels, depths or
points without any error downstream. Each function here either returns the checked value or raises
:class:`calib.errors.CalibrationError` naming the input, the field and the value.

Who calls what:

- :func:`check_pose`: ``m2s-bag labels`` (``--extrinsic`` YAML, each ``/tf_static`` transform and the
  chained result) and :meth:`calib.StereoCamera.lidar_to_disparity`.
- :func:`check_rotation`: :func:`check_pose`, and the camera_info ``R`` used to move LiDAR points.
- :func:`check_projection`: every :class:`calib.CameraInfo` (YAML, ``camera_info`` messages in the node,
  bags and replay, KITTI calibration files).
- :func:`check_baseline`: every :class:`calib.StereoCamera`.
- :func:`check_depth_range`: ``m2s-train synth --depth-range`` (refused up front when its near end cannot be
  represented). LiDAR points nearer than a disparity of the image width are dropped and counted by
  :func:`calib.geometry.points_to_sparse_disparity`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from calib.errors import CalibrationError

# A focal length outside [MIN_FOCAL_FRACTION, MAX_FOCAL_FRACTION] x the image's larger side is not a
# camera: 0.05 is a 169 degree field of view, 1000 a 0.06 degree one.
MIN_FOCAL_FRACTION = 0.05
MAX_FOCAL_FRACTION = 1000.0
MAX_TRANSLATION_M = 1000.0  # a LiDAR more than a kilometre from its camera: a unit error (mm?) or garbage
BASELINE_RANGE_M = (1e-3, 100.0)  # 1 mm .. 100 m


def _finite(name: str, array: np.ndarray) -> np.ndarray:
    bad = ~np.isfinite(array)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise CalibrationError(f"{name} is not finite: element {list(where)} is {array[where]}")
    return array


def check_rotation(R: Any, name: str = "rotation", atol: float = 1e-4) -> np.ndarray:
    """A proper 3x3 rotation (orthonormal, det +1), finite; a mirror (det -1) is refused."""
    try:
        R = np.asarray(R, np.float64).reshape(3, 3)
    except (TypeError, ValueError):
        raise CalibrationError(f"{name} must be 3x3, got {np.size(R)} values") from None
    _finite(name, R)
    err = float(np.abs(R @ R.T - np.eye(3)).max())
    if err > atol:
        raise CalibrationError(f"{name} is not a rotation: R R^T differs from the identity by {err:.3g}")
    det = float(np.linalg.det(R))
    if det < 0:
        raise CalibrationError(f"{name} is a mirror, not a rotation (det = {det:.3g}): an axis is flipped; check the "
                               "frame conventions (the camera's optical frame is x right, y down, z forward)")
    return R


def check_pose(T: Any, name: str = "transform") -> np.ndarray:
    """A rigid transform as 4x4: finite, last row 0 0 0 1, a proper rotation, a translation under
    :data:`MAX_TRANSLATION_M`."""
    try:
        T = np.asarray(T, np.float64)
    except (TypeError, ValueError):
        raise CalibrationError(f"{name} must be a 4x4 matrix of numbers") from None
    if T.shape != (4, 4):
        raise CalibrationError(f"{name} must be 4x4, got shape {T.shape}")
    _finite(name, T)
    if not np.allclose(T[3], [0, 0, 0, 1]):
        raise CalibrationError(f"{name} must have the last row 0 0 0 1, got {T[3].tolist()}")
    check_rotation(T[:3, :3], f"the rotation of {name}")
    t = float(np.linalg.norm(T[:3, 3]))
    if t > MAX_TRANSLATION_M:
        raise CalibrationError(f"{name} moves {t:.4g} m (more than {MAX_TRANSLATION_M:g} m): is it in millimetres? "
                               "Translations are in metres")
    return T


def quaternion_pose(translation: Any, rotation: Any, name: str = "transform") -> np.ndarray:
    """4x4 from ``translation`` [x, y, z] (m) and ``rotation`` [qx, qy, qz, qw], checked as :func:`check_pose`.
    A quaternion far from unit length is refused (it is not normalised by the tools that write one)."""
    try:
        t = np.asarray([float(v) for v in translation], np.float64)
        q = np.asarray([float(v) for v in rotation], np.float64)
    except (TypeError, ValueError):
        raise CalibrationError(f"{name}: translation and rotation must be lists of numbers") from None
    if t.shape != (3,) or q.shape != (4,):
        raise CalibrationError(f"{name}: translation needs 3 values and rotation 4 (qx qy qz qw), got {t.size} and "
                               f"{q.size}")
    _finite(f"{name} translation", t)
    _finite(f"{name} rotation", q)
    n = float(np.linalg.norm(q))
    if not 0.9 < n < 1.1:
        raise CalibrationError(f"{name}: the quaternion has length {n:.4g}, not 1 (is it qx qy qz qw?)")
    x, y, z, w = q / n
    T = np.eye(4)
    T[:3, :3] = [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                 [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                 [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]
    T[:3, 3] = t
    return check_pose(T, name)


def check_projection(P: np.ndarray, width: int, height: int, name: str = "camera") -> None:
    """A rectified projection's focal lengths and principal point are those of a camera of this
    image size: fx, fy within [0.05, 1000] x the larger side, (cx, cy) within one image size of the image."""
    side = max(int(width), int(height))
    lo, hi = MIN_FOCAL_FRACTION * side, MAX_FOCAL_FRACTION * side
    for label, f in (("fx", P[0, 0]), ("fy", P[1, 1])):
        if not lo <= f <= hi:
            raise CalibrationError(f"{name}: projection {label} = {f:.6g} px is not a focal length of a "
                                   f"{width}x{height} camera (expected {lo:g} .. {hi:g} px)")
    cx, cy = P[0, 2], P[1, 2]
    if not (-width <= cx <= 2 * width and -height <= cy <= 2 * height):
        raise CalibrationError(f"{name}: principal point ({cx:.6g}, {cy:.6g}) is far outside the {width}x{height} "
                               "image")


def check_baseline(baseline_m: float, name: str = "stereo camera") -> float:
    lo, hi = BASELINE_RANGE_M
    if not lo <= baseline_m <= hi:
        raise CalibrationError(f"{name}: baseline {baseline_m:.6g} m is outside {lo:g} .. {hi:g} m (P_R[0,3] = -fx B "
                               "with B in metres)")
    return float(baseline_m)


def check_depth_range(min_depth: float, max_depth: float, *, fb: float, width: int, max_disp: float | None = None,
                      name: str = "--depth-range") -> None:
    """Refuse a depth range whose near end needs a disparity the image (``width`` px) or the model
    (``max_disp`` px, at this width) cannot hold: every pixel nearer would be lost."""
    if not (np.isfinite(min_depth) and np.isfinite(max_depth) and 0 < min_depth < max_depth):
        raise CalibrationError(f"{name} needs 0 < MIN < MAX metres, got {min_depth:g} {max_depth:g}")
    near = fb / min_depth
    limit, what = float(width), f"the image width ({width} px)"
    if max_disp is not None and max_disp < limit:
        limit, what = float(max_disp), f"the model's maximum disparity ({max_disp:g} px at {width} px width)"
    if near > limit:
        raise CalibrationError(f"{name}: MIN {min_depth:g} m needs a disparity of f B / MIN = {near:.1f} px, more than "
                               f"{what}; the nearest depth this camera can give is {fb / limit:.3g} m: raise MIN to at "
                               "least that")


__all__ = ["BASELINE_RANGE_M", "check_baseline", "check_depth_range", "check_pose", "check_projection",
           "check_rotation", "quaternion_pose"]
