"""Message builders for the node's outputs; geometry comes from calib.StereoCamera only."""

from __future__ import annotations

import array
from typing import Any, NamedTuple

import numpy as np

from calib import StereoCamera
from calib.geometry import fill_outputs_backend
from m2s_stereo.image_codec import BufferPool, new_message

DELTA_D = 1.0 / 32.0  # the network regresses continuous disparity; report a fine increment


class FrameOutputs(NamedTuple):
    """The messages of one frame (None for an output not asked for)."""

    disparity: Any
    depth: Any
    points: Any


def frame_messages(types: Any, camera: StereoCamera, disparity: np.ndarray, header: Any, *, disparity_out: bool,
                   depth_out: bool, points_out: bool, colors: np.ndarray | None, organized: bool, stride: int,
                   min_depth: float | None, max_depth: float | None, max_disparity: float,
                   pool: BufferPool | None = None, backend: str = "auto") -> FrameOutputs:
    """The frame's ``stereo_msgs/DisparityImage``, REP 118 depth ``sensor_msgs/Image`` and
    ``sensor_msgs/PointCloud2``, all stamped with ``header``.

    Every payload is computed by the camera model (:meth:`calib.StereoCamera.fill_outputs`, one
    pass over the frame with numba) straight into the messages' own buffers (``pool``'s, reused
    from frame to frame), so nothing is copied before ``publish`` (a valid-only cloud is gathered
    once from a scratch cloud into a buffer of its exact size):

    - disparity: 32FC1, ``d + doffs`` (so that ``Z = f * T / d``, the message's convention), NaN
      where the network gave no positive disparity; f, T, min/max disparity, delta_d, valid window;
    - depth: 32FC1 metres along the optical axis, NaN where unknown, -Inf / +Inf closer than
      min_depth / farther than max_depth (REP 117);
    - points: x, y, z float32 (m, left optical frame) + optional packed rgb, 16 bytes per point,
      every ``stride``-th pixel; organised (h x w, NaN = invalid, as stereo_image_proc) or the
      valid points only (1 x n, is_dense).
    """
    pool = pool or BufferPool()  # none given: fresh buffers
    h, w = disparity.shape
    fill: dict[str, Any] = {"min_depth": min_depth, "max_depth": max_depth, "stride": stride, "backend": backend}
    buffers = {}
    for name, wanted in (("disparity", disparity_out), ("depth", depth_out)):
        if wanted:
            buffers[name], view = pool.take(name, h * w * 4)
            fill[f"{name}_out"] = view.view(np.float32).reshape(h, w)
    if points_out:
        hs, ws = -(-h // stride), -(-w // stride)
        # organised: the message buffer itself; valid-only: a scratch cloud gathered from below
        buffers["points"], view = pool.take("points" if organized else "points_scratch", hs * ws * 16)
        packed = view.view(np.float32).reshape(hs, ws, 4)
        fill.update(points_out=packed, rgb_out=packed[:, :, 3].view(np.uint32), colors=colors)
    camera.fill_outputs(disparity, **fill)
    disp_msg = depth = cloud = None
    if disparity_out:
        disp_msg = new_message(types.DisparityImage)
        disp_msg.header = header
        disp_msg.image = float_image(types.Image, buffers["disparity"], h, w, header)
        disp_msg.f = float(camera.focal_px)
        disp_msg.t = float(camera.baseline_m)
        disp_msg.valid_window.x_offset, disp_msg.valid_window.y_offset = 0, 0
        disp_msg.valid_window.width, disp_msg.valid_window.height = w, h
        # the range of the *published* values, d + doffs (d in (0, max_disparity])
        disp_msg.min_disparity = float(max(camera.doffs, 0.0))
        disp_msg.max_disparity = float(max_disparity + camera.doffs)
        disp_msg.delta_d = DELTA_D
    if depth_out:
        depth = float_image(types.Image, buffers["depth"], h, w, header)
    if points_out:
        cloud = new_message(types.PointCloud2)
        cloud.header = header
        if organized:
            data = buffers["points"]
            cloud.height, cloud.width = packed.shape[:2]
        else:
            # each point's 16 bytes as one complex128 item: boolean selection copies whole points
            kept = packed.reshape(-1, 4).view(np.complex128)[:, 0][np.isfinite(packed[:, :, 2]).reshape(-1)]
            data = array.array("B")  # a fresh buffer of exactly the valid points (its size varies per frame)
            data.frombytes(kept.view(np.uint8))
            cloud.height, cloud.width = 1, kept.size
        names = ["x", "y", "z"] + (["rgb"] if colors is not None else [])
        # rgb as FLOAT32 carrying the packed 0x00RRGGBB bits: the PCL / rviz convention
        cloud.fields = [types.PointField(name=n, offset=4 * i, datatype=types.PointField.FLOAT32, count=1)
                        for i, n in enumerate(names)]
        cloud.is_bigendian = False
        cloud.point_step = 16
        cloud.row_step = cloud.point_step * cloud.width
        cloud.is_dense = not organized
        cloud.data = data
    return FrameOutputs(disp_msg, depth, cloud)


def warm_up(types: Any) -> str:
    """Build every output of a tiny frame once, so that the first real frame does not pay for
    compiling (or loading the cached) output pass; returns the backend in use (numba / numpy).

    Twice: with the point cloud and without it. Its packed-rgb channel is a strided view, the empty
    stand-in of a frame without points a contiguous one, and numba compiles each layout on its own
    (about a second on a fresh install): a node publishing disparity only (a replay, a listener that
    wants no points) used to compile on its first frame and drop the pairs that came meanwhile."""
    camera = StereoCamera.ideal(4, 2, focal_px=2.0, baseline_m=0.1)
    for points in (True, False):
        frame_messages(types, camera, np.ones((2, 4), np.float32), types.Image().header, disparity_out=True,
                       depth_out=True, points_out=points, colors=np.zeros((2, 4, 3), np.uint8), organized=True,
                       stride=1, min_depth=None, max_depth=None, max_disparity=1.0)
    return fill_outputs_backend()


def float_image(msg_type: type, data: Any, h: int, w: int, header: Any) -> Any:
    """A 32FC1 sensor_msgs/Image around an already filled ``array.array('B')`` buffer."""
    msg = new_message(msg_type)
    msg.header = header
    msg.height, msg.width = h, w
    msg.encoding = "32FC1"
    msg.is_bigendian = False
    msg.step = w * 4
    msg.data = data
    return msg


_XYZ = np.dtype({"names": ["x", "y", "z"], "formats": ["<f4"] * 3, "offsets": [0, 4, 8], "itemsize": 16})
_XYZRGB = np.dtype({"names": ["x", "y", "z", "rgb"], "formats": ["<f4", "<f4", "<f4", "<u4"],
                    "offsets": [0, 4, 8, 12], "itemsize": 16})


def unpack_points(msg: Any) -> np.ndarray:
    """x, y, z of a PointCloud2 written by :func:`frame_messages` as HxWx3 (organised) or Nx3."""
    raw = np.frombuffer(bytes(msg.data), dtype=_XYZRGB if len(msg.fields) == 4 else _XYZ)
    xyz = np.stack([raw["x"], raw["y"], raw["z"]], -1)
    return xyz.reshape(msg.height, msg.width, 3) if msg.height > 1 else xyz
