"""Message builders for the node's outputs; geometry comes from calib.StereoCamera only."""

from __future__ import annotations

from typing import Any

import numpy as np

from calib import StereoCamera
from m2s_stereo.image_codec import byte_array, float_image

DELTA_D = 1.0 / 32.0  # the network regresses continuous disparity; report a fine increment


def disparity_msg(types: Any, disparity: np.ndarray, camera: StereoCamera, header: Any, max_disparity: float) -> Any:
    """stereo_msgs/DisparityImage. Values follow the message's convention d = x_l - x_r - (cx_l - cx_r),
    i.e. the network's disparity plus ``doffs``; invalid pixels are NaN."""
    msg = types.DisparityImage()
    msg.header = header
    msg.image = float_image(types.Image, disparity + np.float32(camera.doffs), header)
    msg.f = float(camera.focal_px)
    msg.t = float(camera.baseline_m)
    h, w = disparity.shape
    msg.valid_window.x_offset, msg.valid_window.y_offset = 0, 0
    msg.valid_window.width, msg.valid_window.height = w, h
    msg.min_disparity = 0.0
    msg.max_disparity = float(max_disparity)
    msg.delta_d = DELTA_D
    return msg


def depth_msg(types: Any, depth: np.ndarray, header: Any) -> Any:
    """REP 118 depth image: 32FC1 metres along the optical axis, NaN where unknown."""
    return float_image(types.Image, depth, header)


_XYZ = np.dtype({"names": ["x", "y", "z"], "formats": ["<f4"] * 3, "offsets": [0, 4, 8], "itemsize": 16})
_XYZRGB = np.dtype({"names": ["x", "y", "z", "rgb"], "formats": ["<f4", "<f4", "<f4", "<u4"],
                    "offsets": [0, 4, 8, 12], "itemsize": 16})


def points_msg(types: Any, camera: StereoCamera, depth: np.ndarray, header: Any, *, colors: np.ndarray | None,
               organized: bool, stride: int) -> Any:
    """sensor_msgs/PointCloud2 (x, y, z float32 m in the left optical frame, optional packed rgb),
    16 bytes per point, from the depth map the node already computed (NaN = invalid)."""
    cloud = camera.depth_to_points(depth, colors, organized=organized, stride=stride)
    pts = cloud.points.reshape(-1, 3)
    packed = np.empty((pts.shape[0], 4), np.float32)  # x, y, z, rgb-bits: one contiguous buffer
    packed[:, :3] = pts
    packed[:, 3] = 0
    if cloud.colors is not None:
        c = cloud.colors.reshape(-1, 3).astype(np.uint32)
        packed[:, 3] = ((c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]).view(np.float32)
    msg = types.PointCloud2()
    msg.header = header
    if organized:
        msg.height, msg.width = cloud.points.shape[:2]
    else:
        msg.height, msg.width = 1, pts.shape[0]
    names = ["x", "y", "z"] + (["rgb"] if cloud.colors is not None else [])
    # rgb as FLOAT32 carrying the packed 0x00RRGGBB bits: the PCL / rviz convention
    msg.fields = [types.PointField(name=n, offset=4 * i, datatype=types.PointField.FLOAT32, count=1)
                  for i, n in enumerate(names)]
    msg.is_bigendian = False
    msg.point_step = 16
    msg.row_step = msg.point_step * msg.width
    msg.is_dense = not organized
    msg.data = byte_array(packed)
    return msg


def unpack_points(msg: Any) -> np.ndarray:
    """x, y, z of a PointCloud2 written by :func:`points_msg` as HxWx3 (organised) or Nx3."""
    raw = np.frombuffer(bytes(msg.data), dtype=_XYZRGB if len(msg.fields) == 4 else _XYZ)
    xyz = np.stack([raw["x"], raw["y"], raw["z"]], -1)
    return xyz.reshape(msg.height, msg.width, 3) if msg.height > 1 else xyz
