"""Disparity <-> depth <-> 3-D points for a rectified stereo pair.

Conventions (DESIGN.md §4):
- disparity in pixels, left image reference, positive: x_R = x_L - d;
- depth in metres along the optical axis (REP 103 optical frame: x right, y down, z forward);
- pixel (u, v) = (column, row) with integer coordinates at pixel centres (OpenCV);
- ``Z = fx * B / (d + doffs)`` where ``doffs = cx_R - cx_L`` (0 for a pair rectified with
  ``CALIB_ZERO_DISPARITY``), fx and B from the right camera's projection matrix;
- invalid is NaN in float outputs: disparity <= 0 (or d + doffs <= 0), NaN/inf input and
  depths outside [min_depth, max_depth]. No epsilon in a denominator: unknown never
  becomes "very far".
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import cv2
import numpy as np

from calib.errors import ShapeError

__all__ = [
    "PointCloud",
    "depth_to_disparity",
    "depth_to_points",
    "disparity_to_depth",
    "disparity_to_points",
    "fill_outputs",
    "left_right_consistency",
    "points_to_sparse_disparity",
    "q_matrix",
]


def _check_image_2d(name: str, array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise ShapeError(f"{name} must be a 2-D HxW array, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ShapeError(f"{name} must be numeric, got dtype {array.dtype}")
    return array


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not np.isfinite(value) or value <= 0.0:
        raise ShapeError(f"{name} must be a finite positive number, got {value}")
    return value


def _apply_depth_range(depth: np.ndarray, min_depth: float | None, max_depth: float | None) -> None:
    """Depths below ``min_depth`` become -inf (too close), above ``max_depth`` +inf (too far), in
    place (REP 117: a measurement out of range is not "no measurement", which stays NaN)."""
    if min_depth is not None and max_depth is not None and min_depth > max_depth:
        raise ShapeError(f"min_depth ({min_depth}) must not exceed max_depth ({max_depth})")
    with np.errstate(invalid="ignore"):
        if min_depth is not None:
            np.copyto(depth, -np.inf, where=depth < min_depth)
        if max_depth is not None:
            np.copyto(depth, np.inf, where=depth > max_depth)


def disparity_to_depth(
    disparity: np.ndarray,
    focal_px: float,
    baseline_m: float,
    doffs: float = 0.0,
    min_depth: float | None = None,
    max_depth: float | None = None,
) -> np.ndarray:
    """Depth from disparity: ``Z = f * B / (d + doffs)``.

    Args:
        disparity: HxW disparity in pixels (any float or integer dtype).
        focal_px: rectified focal length fx in pixels (``P_R[0, 0]``).
        baseline_m: baseline in metres (``-P_R[0, 3] / P_R[0, 0]``), > 0.
        doffs: ``cx_R - cx_L`` of the rectified projections, pixels.
        min_depth, max_depth: optional range in metres; depths outside become -inf (too close) /
            +inf (too far), as REP 117 asks.

    Returns:
        HxW float32 depth in metres, NaN where there is no measurement, -inf/+inf out of range
        (``np.isfinite`` is the valid mask).
    """
    disparity = _check_image_2d("disparity", disparity)
    focal_px = _check_positive("focal_px", focal_px)
    baseline_m = _check_positive("baseline_m", baseline_m)
    # float32 throughout (within 2 ulp of a float64 evaluation): the node runs this per frame
    shifted = disparity.astype(np.float32, copy=bool(doffs))
    if doffs:
        shifted += np.float32(doffs)
    depth = np.full(disparity.shape, np.nan, dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        valid = (disparity > 0) & (shifted > 0) & np.isfinite(shifted)
        np.divide(np.float32(focal_px * baseline_m), shifted, out=depth, where=valid)
    _apply_depth_range(depth, min_depth, max_depth)
    return depth


def depth_to_disparity(
    depth: np.ndarray,
    focal_px: float,
    baseline_m: float,
    doffs: float = 0.0,
) -> np.ndarray:
    """Disparity from depth: ``d = f * B / Z - doffs``; the inverse of :func:`disparity_to_depth`.

    Args:
        depth: HxW depth in metres; Z <= 0, NaN and inf are invalid.
        focal_px, baseline_m, doffs: as in :func:`disparity_to_depth`.

    Returns:
        HxW float32 disparity in pixels, NaN where the depth is invalid or the disparity
        would not be positive.
    """
    depth = _check_image_2d("depth", depth)
    focal_px = _check_positive("focal_px", focal_px)
    baseline_m = _check_positive("baseline_m", baseline_m)
    depth64 = depth.astype(np.float64)
    disparity = np.full(depth.shape, np.nan, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        valid = (depth64 > 0) & np.isfinite(depth64)
    np.divide(focal_px * baseline_m, depth64, out=disparity, where=valid)
    disparity -= float(doffs)
    with np.errstate(invalid="ignore"):
        disparity[~(disparity > 0)] = np.nan
    return disparity.astype(np.float32)


def q_matrix(focal_px: float, cx: float, cy: float, baseline_m: float, doffs: float = 0.0) -> np.ndarray:
    """The 4x4 disparity-to-depth matrix of ``cv2.stereoRectify``.

    ``[X Y Z W]^T = Q [u v d 1]^T`` gives the point ``(X/W, Y/W, Z/W)`` in the left rectified
    optical frame, metres. Same numbers as OpenCV's Q (with ``Tx = -baseline``), so it can be
    fed to ``cv2.reprojectImageTo3D``.
    """
    focal_px = _check_positive("focal_px", focal_px)
    baseline_m = _check_positive("baseline_m", baseline_m)
    q = np.zeros((4, 4), dtype=np.float64)
    q[0, 0] = q[1, 1] = 1.0
    q[0, 3] = -float(cx)
    q[1, 3] = -float(cy)
    q[2, 3] = focal_px
    q[3, 2] = 1.0 / baseline_m
    q[3, 3] = float(doffs) / baseline_m
    return q


class PointCloud(NamedTuple):
    """Points in the left rectified optical frame (metres) and optional colours.

    Organised: ``points`` HxWx3 float32 with NaN rows where invalid, ``colors`` HxWx3 uint8.
    Valid-only: ``points`` Nx3 float32, ``colors`` Nx3 uint8. ``colors`` is None when none given.
    """

    points: np.ndarray
    colors: np.ndarray | None


def disparity_to_points(
    disparity: np.ndarray,
    *,
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    baseline_m: float,
    doffs: float = 0.0,
    colors: np.ndarray | None = None,
    organized: bool = True,
    stride: int = 1,
    min_depth: float | None = None,
    max_depth: float | None = None,
) -> PointCloud:
    """Back-project a disparity map to 3-D points in the left rectified optical frame.

    ``Z = fx * B / (d + doffs)``, ``X = (u - cx) * Z / fx``, ``Y = (v - cy) * Z / fy``.

    Args:
        disparity: HxW disparity in pixels (left reference).
        fx, fy, cx, cy: left rectified intrinsics (``P_L``), pixels.
        baseline_m, doffs: as in :func:`disparity_to_depth`.
        colors: optional HxWx3 (RGB) or HxW (mono) uint8 image aligned with ``disparity``.
        organized: True for HxWx3 output with NaN for invalid pixels, False for Nx3 valid points.
        stride: keep every ``stride``-th row and column (decimation), >= 1.
        min_depth, max_depth: optional depth range in metres; outside is invalid.

    Returns:
        :class:`PointCloud`.
    """
    disparity, colors = _decimate("disparity", disparity, colors, stride)
    fy = _check_positive("fy", fy)
    depth = disparity_to_depth(disparity, fx, baseline_m, doffs, min_depth, max_depth)
    return _back_project(depth, fx, fy, cx, cy, colors, organized, stride)


def depth_to_points(depth: np.ndarray, *, fx: float, fy: float, cx: float, cy: float, colors: np.ndarray | None = None,
                    organized: bool = True, stride: int = 1, out: np.ndarray | None = None) -> PointCloud:
    """Back-project a depth map (metres, NaN = invalid) like :func:`disparity_to_points`.

    ``X = (u - cx) * Z / fx``, ``Y = (v - cy) * Z / fy``; ``stride`` decimates (``u = column * stride``).
    Use it when the depth is already computed (the ROS node publishes both).

    ``out`` (organised only): a float32 array of shape (h', w', k >= 3), h' x w' the decimated
    size, whose first three channels receive X, Y, Z (e.g. the x/y/z slots of a point-cloud
    message buffer, so no separate copy is packed); the result's points are a view of it.
    """
    depth, colors = _decimate("depth", depth, colors, stride)
    fx, fy = _check_positive("fx", fx), _check_positive("fy", fy)
    if out is not None:
        if not organized:
            raise ShapeError("depth_to_points(out=...) writes an organised cloud; organized must be True")
        if out.dtype != np.float32 or out.ndim != 3 or out.shape[:2] != depth.shape or out.shape[2] < 3:
            raise ShapeError(f"out must be float32 of shape {depth.shape + (3,)} or more channels, "
                             f"got {out.dtype} {out.shape}")
    return _back_project(depth, fx, fy, cx, cy, colors, organized, stride, out)


def left_right_consistency(disp_left: np.ndarray, disp_right: np.ndarray, max_diff: float = 1.0
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Which left-view disparities the right view's disparity confirms.

    ``disp_left`` HxW (left reference, ``x_R = x_L - d``) and ``disp_right`` HxW (right reference,
    ``x_L = x_R + d``), both px. For each left pixel, the right disparity is read (linear
    interpolation along the row) at ``x_L - d_L``. Returns ``(consistent, checkable)``, HxW bool:
    ``checkable`` where ``d_L`` is finite and its match falls inside the right image, ``consistent``
    where also ``|d_L - d_R(x_L - d_L)| <= max_diff`` (px). A pixel that is not checkable (no match
    in the right image, typically occluded at the left border) is not consistent either.
    """
    left = _check_image_2d("disp_left", disp_left).astype(np.float32, copy=False)
    right = _check_image_2d("disp_right", disp_right).astype(np.float32, copy=False)
    if left.shape != right.shape:
        raise ShapeError(f"disp_left {left.shape} and disp_right {right.shape} differ in size")
    if not max_diff > 0:
        raise ShapeError(f"max_diff must be > 0 px, got {max_diff}")
    h, w = left.shape
    with np.errstate(invalid="ignore"):
        xr = np.arange(w, dtype=np.float32)[None, :] - left  # HxW, NaN where d_L is NaN
        checkable = np.isfinite(xr) & (xr >= 0) & (xr <= w - 1)
    # x_R outside the image reads a border value (remap clamps), and those pixels are not checkable anyway
    sampled = cv2.remap(right, np.where(checkable, xr, 0).astype(np.float32),
                        np.repeat(np.arange(h, dtype=np.float32)[:, None], w, 1), cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE)
    with np.errstate(invalid="ignore"):
        consistent = checkable & (np.abs(left - sampled) <= np.float32(max_diff))
    return consistent, checkable


MAX_POINT_RANGE_M = 1e4  # a LiDAR "return" farther than this is garbage (a float overflow, an uninitialised field)


class SparseDisparity(NamedTuple):
    """``disparity`` HxW float32 (NaN = no label) from projected points, and what became of the points."""

    disparity: np.ndarray
    projected: int  # points in front of the camera and inside the image
    hidden: int  # of those, removed: seen by the LiDAR but hidden from the camera (z-buffer test)
    behind: int  # points with Z <= 0 (behind the camera)
    too_near: int = 0  # points in front but nearer than f B / width: a disparity wider than the image (not a label)


def points_to_sparse_disparity(points: np.ndarray, *, fx: float, fy: float, cx: float, cy: float, fb: float,
                               doffs: float, width: int, height: int, window: int = 5,
                               tolerance: tuple[float, float] = (0.05, 0.1)) -> SparseDisparity:
    """Sparse disparity labels from 3-D points in the rectified left camera frame (REP 103 optical: x right,
    y down, z forward; metres), e.g. a LiDAR sweep moved there with its extrinsic.

    Each point with ``Z > 0`` projects to the nearest pixel ``(round(fx X/Z + cx), round(fy Y/Z + cy))``
    and gets ``d = f B / Z - doffs`` (the inverse of ``Z = f B / (d + doffs)``). A LiDAR mounted apart
    from the camera sees surfaces the camera does not (behind a foreground edge, from the camera's
    view): such a point projects among nearer points of the occluder, so a point farther than
    ``(1 + rel) * Z_min + abs`` (``tolerance`` = (rel, abs m)) where ``Z_min`` is the nearest point within
    ``window`` x ``window`` px is dropped (a local z-buffer), as is every point but the nearest in a pixel.
    Points nearer than ``fb / width`` (a disparity wider than the image) are dropped and counted (``too_near``).
    """
    pts = np.asarray(points, np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ShapeError(f"points must be Nx3, got shape {pts.shape}")
    if window < 1 or window % 2 == 0:
        raise ShapeError(f"window must be a positive odd number of pixels, got {window}")
    with np.errstate(over="ignore", invalid="ignore"):  # not finite, or no return at all (farther than 10 km)
        pts = pts[np.isfinite(pts).all(1) & (np.abs(pts).max(1, initial=0.0) <= MAX_POINT_RANGE_M)]
    front = pts[:, 2] > 0
    behind = int((~front).sum())
    # a point nearer than f B / width would need a disparity wider than the image: no pixel of both views
    # sees it (a LiDAR return off its own housing, a point at z = 1e-9 m); it is no label, only counted
    near = front & (pts[:, 2] <= fb / width)
    too_near = int(near.sum())
    x, y, z = pts[front & ~near].T
    u = np.rint(fx * x / z + cx).astype(np.int64)
    v = np.rint(fy * y / z + cy).astype(np.int64)
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    u, v, z = u[inside], v[inside], z[inside]
    zbuf = np.full((height, width), np.inf, np.float64)
    np.minimum.at(zbuf, (v, u), z)
    nearest = cv2.erode(zbuf.astype(np.float32), np.ones((window, window), np.uint8), borderType=cv2.BORDER_CONSTANT,
                        borderValue=np.inf).astype(np.float64)
    rel, absolute = tolerance
    visible = z <= (1.0 + rel) * nearest[v, u] + absolute
    keep = visible & (z == zbuf[v, u])  # the nearest point of its pixel
    out = np.full((height, width), np.nan, np.float32)
    out[v[keep], u[keep]] = (fb / z[keep] - doffs).astype(np.float32)
    return SparseDisparity(out, int(z.size), int((~visible).sum()), behind, too_near)


def _check_stride(stride: int) -> None:
    if int(stride) != stride or stride < 1:
        raise ShapeError(f"stride must be an integer >= 1, got {stride}")


def _ray_factors(index: np.ndarray, stride: int, c: float, f: float) -> np.ndarray:
    """``(index * stride - c) / f`` in float32: X/Z (or Y/Z) of the pixels whose decimated column
    (or row) is ``index``; every back-projection path uses these same numbers."""
    return (index.astype(np.float32, copy=False) * stride - np.float32(c)) / np.float32(f)


def _decimate(name: str, image: np.ndarray, colors: np.ndarray | None,
              stride: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Check ``image`` (HxW), ``stride`` and ``colors`` (HxWx3 or HxW uint8, mono replicated to RGB),
    then keep every ``stride``-th row and column of both."""
    image = _check_image_2d(name, image)
    _check_stride(stride)
    if colors is not None:
        colors = np.asarray(colors)
        if colors.shape[:2] != image.shape or colors.ndim not in (2, 3) or (colors.ndim == 3 and colors.shape[2] != 3):
            raise ShapeError(f"colors must be HxWx3 or HxW matching {name} {image.shape}, got {colors.shape}")
        if colors.dtype != np.uint8:
            raise ShapeError(f"colors must be uint8, got {colors.dtype}")
        if colors.ndim == 2:
            colors = np.repeat(colors[:, :, None], 3, axis=2)
    if stride > 1:
        image = image[::stride, ::stride]
        colors = None if colors is None else colors[::stride, ::stride]
    return image, colors


def _back_project(depth: np.ndarray, fx: float, fy: float, cx: float, cy: float, colors: np.ndarray | None,
                  organized: bool, stride: int, out: np.ndarray | None = None) -> PointCloud:
    """Points of an already decimated depth map whose pixel (i, j) is full-resolution (i, j) * stride."""
    depth = depth.astype(np.float32, copy=False)
    h, w = depth.shape
    if not organized:  # compute only the valid points (no HxWx3 intermediate, no gather of it)
        keep = np.flatnonzero(np.isfinite(depth))
        z = depth.ravel()[keep]
        rows, cols = np.divmod(keep, w)
        points = np.empty((keep.size, 3), dtype=np.float32)
        np.multiply(_ray_factors(cols, stride, cx, fx), z, out=points[:, 0])
        np.multiply(_ray_factors(rows, stride, cy, fy), z, out=points[:, 1])
        points[:, 2] = z
        return PointCloud(points, None if colors is None else np.take(colors.reshape(-1, 3), keep, axis=0))
    points = np.empty((h, w, 3), dtype=np.float32) if out is None else out[:, :, :3]
    if not np.isfinite(depth).all():  # out-of-range depths (+-inf) are invalid points: NaN, like no depth
        depth = np.where(np.isfinite(depth), depth, np.float32(np.nan))
    # NaN depth propagates into X and Y, so invalid pixels are NaN in all three coordinates.
    np.multiply(depth, _ray_factors(np.arange(w), stride, cx, fx)[None, :], out=points[:, :, 0])
    np.multiply(depth, _ray_factors(np.arange(h), stride, cy, fy)[:, None], out=points[:, :, 1])
    points[:, :, 2] = depth
    return PointCloud(points, None if colors is None else np.ascontiguousarray(colors))


@functools.cache
def _numba_fill():
    """The compiled one-pass kernel of :func:`fill_outputs`, or None where numba is not installed."""
    try:
        from calib._outputs_numba import fill
    except ImportError:
        return None
    return fill


def fill_outputs_backend() -> str:
    """The backend ``fill_outputs(backend="auto")`` uses here: ``"numba"`` or ``"numpy"``."""
    return "numba" if _numba_fill() is not None else "numpy"


def fill_outputs(
    disparity: np.ndarray,
    *,
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    baseline_m: float,
    doffs: float = 0.0,
    min_depth: float | None = None,
    max_depth: float | None = None,
    disparity_out: np.ndarray | None = None,
    depth_out: np.ndarray | None = None,
    points_out: np.ndarray | None = None,
    rgb_out: np.ndarray | None = None,
    colors: np.ndarray | None = None,
    stride: int = 1,
    backend: str = "auto",
) -> None:
    """Everything a stereo frame publishes, written into the caller's buffers in one go.

    The values are those of the functions above, bit for bit:

    - ``disparity_out`` (HxW float32): ``d + doffs`` where ``d > 0`` and ``d + doffs > 0``, NaN
      elsewhere: the disparity for which ``Z = fx * B / d`` (the ``stereo_msgs/DisparityImage``
      convention);
    - ``depth_out`` (HxW float32): :func:`disparity_to_depth` with ``min_depth`` / ``max_depth``
      (NaN without a measurement, -inf/+inf out of range);
    - ``points_out`` (h' x w' x k, k >= 3, float32, any strides): X, Y, Z of the organised cloud of
      :func:`depth_to_points` with ``stride`` (h' x w' the decimated size) in its first 3 channels
      (NaN for every invalid point, out of range included);
    - ``rgb_out`` (h' x w' uint32, any strides): ``0x00RRGGBB`` of ``colors`` (HxWx3 RGB or HxW mono
      uint8) at the same pixels, 0 without colours (the packed-rgb field of a point cloud).

    Outputs left as None are not computed. ``backend``: ``"numba"`` (one compiled pass over the
    frame, row by row while it is in cache), ``"numpy"`` (whole-array passes, no extra dependency)
    or ``"auto"``: numba when it is installed.
    """
    disparity = _check_image_2d("disparity", disparity)
    fx, fy = _check_positive("fx", fx), _check_positive("fy", fy)
    baseline_m = _check_positive("baseline_m", baseline_m)
    if min_depth is not None and max_depth is not None and min_depth > max_depth:
        raise ShapeError(f"min_depth ({min_depth}) must not exceed max_depth ({max_depth})")
    _check_stride(stride)
    _, colors = _decimate("disparity", disparity, colors, 1)  # checked, mono -> RGB, full resolution
    h, w = disparity.shape
    hs, ws = -(-h // stride), -(-w // stride)
    for name, out, shape, dtype in (("disparity_out", disparity_out, (h, w), np.float32),
                                    ("depth_out", depth_out, (h, w), np.float32),
                                    ("points_out", points_out, (hs, ws), np.float32),
                                    ("rgb_out", rgb_out, (hs, ws), np.uint32)):
        if out is None:
            continue
        ok = out.dtype == dtype and out.shape[:2] == shape and (
            out.ndim == 3 and out.shape[2] >= 3 if name == "points_out" else out.ndim == 2)
        if not ok or not out.flags.writeable:
            want = f"{shape + (3,)} or more channels" if name == "points_out" else str(shape)
            raise ShapeError(f"{name} must be a writeable {np.dtype(dtype)} array of shape {want}, "
                             f"got {out.dtype} {out.shape}")
    if backend == "auto":
        backend = fill_outputs_backend()
    if backend == "numba":
        kernel = _numba_fill()
        if kernel is None:
            raise ShapeError("fill_outputs(backend='numba') needs numba: pip install numba (or use backend='numpy')")
        f32 = np.float32
        none2, none3 = np.empty((0, 0), f32), np.empty((0, 0, 3), f32)
        kernel(np.ascontiguousarray(disparity, dtype=f32), f32(doffs), f32(fx * baseline_m),
               f32(-np.inf if min_depth is None else min_depth), f32(np.inf if max_depth is None else max_depth),
               _ray_factors(np.arange(ws), stride, cx, fx), _ray_factors(np.arange(hs), stride, cy, fy), int(stride),
               np.empty((0, 0, 3), np.uint8) if colors is None else np.ascontiguousarray(colors),
               none2 if disparity_out is None else disparity_out, none2 if depth_out is None else depth_out,
               none3 if points_out is None else points_out,
               np.empty((0, 0), np.uint32) if rgb_out is None else rgb_out)
        return
    if backend != "numpy":
        raise ShapeError(f"fill_outputs backend must be 'auto', 'numba' or 'numpy', got {backend!r}")
    if disparity_out is not None:
        with np.errstate(invalid="ignore"):
            np.add(disparity, np.float32(doffs), out=disparity_out, casting="unsafe")
            disparity_out[~((disparity > 0) & (disparity_out > 0))] = np.nan  # d > 0 with a positive d + doffs
    if depth_out is None and points_out is None:
        if rgb_out is not None:
            _pack_rgb(colors, rgb_out, stride)
        return
    depth = disparity_to_depth(disparity, fx, baseline_m, doffs, min_depth, max_depth)
    if depth_out is not None:
        depth_out[...] = depth
    if points_out is not None:
        _back_project(depth[::stride, ::stride], fx, fy, cx, cy, None, True, stride, points_out)
    if rgb_out is not None:
        _pack_rgb(colors, rgb_out, stride)


def _pack_rgb(colors: np.ndarray | None, out: np.ndarray, stride: int) -> None:
    """``0x00RRGGBB`` of every ``stride``-th pixel of an HxWx3 RGB uint8 image into ``out``
    (uint32), 0 without colours."""
    if colors is None:
        out[...] = 0
        return
    # RGB -> BGRA gives the bytes B, G, R, 255: the little-endian uint32 0xFFRRGGBB
    bgra = cv2.cvtColor(np.ascontiguousarray(colors[::stride, ::stride]), cv2.COLOR_RGB2BGRA)
    np.bitwise_and(bgra.view("<u4")[:, :, 0], np.uint32(0x00FFFFFF), out=out)
