"""Message builders for the node's outputs; geometry comes from calib.StereoCamera only."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from calib import StereoCamera
from m2s_stereo.image_codec import BufferPool, float_image, new_message

DELTA_D = 1.0 / 32.0  # the network regresses continuous disparity; report a fine increment


def disparity_msg(types: Any, disparity: np.ndarray, camera: StereoCamera, header: Any, max_disparity: float,
                  pool: BufferPool | None = None) -> Any:
    """stereo_msgs/DisparityImage. Values follow the message's convention d = x_l - x_r - (cx_l - cx_r),
    i.e. the network's disparity plus ``doffs``; invalid pixels are NaN."""
    msg = new_message(types.DisparityImage)
    msg.header = header
    msg.image = float_image(types.Image, disparity, header, offset=camera.doffs, pool=pool, name="disparity")
    msg.f = float(camera.focal_px)
    msg.t = float(camera.baseline_m)
    h, w = disparity.shape
    msg.valid_window.x_offset, msg.valid_window.y_offset = 0, 0
    msg.valid_window.width, msg.valid_window.height = w, h
    msg.min_disparity = 0.0
    msg.max_disparity = float(max_disparity)
    msg.delta_d = DELTA_D
    return msg


def depth_msg(types: Any, depth: np.ndarray, header: Any, pool: BufferPool | None = None) -> Any:
    """REP 118 depth image: 32FC1 metres along the optical axis, NaN where unknown."""
    return float_image(types.Image, depth, header, pool=pool, name="depth")


_XYZ = np.dtype({"names": ["x", "y", "z"], "formats": ["<f4"] * 3, "offsets": [0, 4, 8], "itemsize": 16})
_XYZRGB = np.dtype({"names": ["x", "y", "z", "rgb"], "formats": ["<f4", "<f4", "<f4", "<u4"],
                    "offsets": [0, 4, 8, 12], "itemsize": 16})


def points_msg(types: Any, camera: StereoCamera, depth: np.ndarray, header: Any, *, colors: np.ndarray | None,
               organized: bool, stride: int, pool: BufferPool | None = None) -> Any:
    """sensor_msgs/PointCloud2 (x, y, z float32 m in the left optical frame, optional packed rgb),
    16 bytes per point, from the depth map the node already computed (NaN = invalid).

    The points are back-projected by the camera model straight into a 16-byte-per-point buffer
    (the message's own buffer when organised; valid-only clouds are compressed into it).
    """
    pool = pool or BufferPool()  # none given: fresh buffers
    h, w = depth[::stride, ::stride].shape
    if organized:
        data, view = pool.take("points", h * w * 16)
        packed = view.view(np.float32).reshape(h, w, 4)
    else:  # scratch: all pixels, compressed into the message buffer below
        packed = pool.take("points_scratch", h * w * 16)[1].view(np.float32).reshape(h, w, 4)
    cloud = camera.depth_to_points(depth, colors, organized=True, stride=stride, out=packed)
    rgb = packed[:, :, 3].view(np.uint32)
    if cloud.colors is not None:  # 0x00RRGGBB little-endian = bytes B, G, R, 0
        bgra = cv2.cvtColor(np.ascontiguousarray(cloud.colors), cv2.COLOR_RGB2BGRA).view(np.uint32)[:, :, 0]
        np.bitwise_and(bgra, np.uint32(0x00FFFFFF), out=rgb)
    else:
        rgb[...] = 0
    msg = new_message(types.PointCloud2)
    msg.header = header
    if organized:
        msg.height, msg.width = h, w
    else:
        keep = np.isfinite(packed[:, :, 2]).reshape(-1)
        n = int(np.count_nonzero(keep))
        data, view = pool.take("points", n * 16)
        np.compress(keep, packed.reshape(-1, 4), axis=0, out=view.view(np.float32).reshape(n, 4))
        msg.height, msg.width = 1, n
    names = ["x", "y", "z"] + (["rgb"] if cloud.colors is not None else [])
    # rgb as FLOAT32 carrying the packed 0x00RRGGBB bits: the PCL / rviz convention
    msg.fields = [types.PointField(name=n, offset=4 * i, datatype=types.PointField.FLOAT32, count=1)
                  for i, n in enumerate(names)]
    msg.is_bigendian = False
    msg.point_step = 16
    msg.row_step = msg.point_step * msg.width
    msg.is_dense = not organized
    msg.data = data
    return msg


def unpack_points(msg: Any) -> np.ndarray:
    """x, y, z of a PointCloud2 written by :func:`points_msg` as HxWx3 (organised) or Nx3."""
    raw = np.frombuffer(bytes(msg.data), dtype=_XYZRGB if len(msg.fields) == 4 else _XYZ)
    xyz = np.stack([raw["x"], raw["y"], raw["z"]], -1)
    return xyz.reshape(msg.height, msg.width, 3) if msg.height > 1 else xyz
