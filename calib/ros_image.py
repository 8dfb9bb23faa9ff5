"""sensor_msgs/Image (and CompressedImage) -> numpy without cv_bridge (zero-copy where the layout allows).

The one decoder of ROS image messages, used by the node, the bag tools and synthesis from a
bag; numpy + OpenCV only, and duck-typed: any object with the Image fields (rclpy, rosbags)
works. Supported input encodings: mono8, mono16, rgb8, bgr8, rgba8, bgra8 (and 8UC1/8UC3/16UC1
as mono8/bgr8/mono16, the OpenCV convention); 32FC1 can be viewed (GT, the node's outputs).
Anything else raises :class:`EncodingError` with the list. Row padding (``step`` > width *
pixel size) and big-endian 16-bit data are handled.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from calib.errors import DataError

# encoding -> (channels, dtype, conversion to RGB or None)
ENCODINGS: dict[str, tuple[int, str, int | None]] = {
    "mono8": (1, "u1", cv2.COLOR_GRAY2RGB),
    "8UC1": (1, "u1", cv2.COLOR_GRAY2RGB),
    "mono16": (1, "u2", None),
    "16UC1": (1, "u2", None),
    "rgb8": (3, "u1", None),
    "bgr8": (3, "u1", cv2.COLOR_BGR2RGB),
    "8UC3": (3, "u1", cv2.COLOR_BGR2RGB),
    "rgba8": (4, "u1", cv2.COLOR_RGBA2RGB),
    "bgra8": (4, "u1", cv2.COLOR_BGRA2RGB),
}


# layouts image_to_array can view (inputs above plus the node's float outputs)
LAYOUTS: dict[str, tuple[int, str]] = {**{k: v[:2] for k, v in ENCODINGS.items()}, "32FC1": (1, "f4")}


class EncodingError(DataError, ValueError):
    """An image message that cannot be decoded (unsupported encoding or inconsistent size)."""


def image_problem(msg: Any) -> str | None:
    """Why an Image message cannot be decoded, checked without decoding it (None when it can)."""
    if msg.encoding not in LAYOUTS:
        return f"unsupported image encoding '{msg.encoding}' (use one of {', '.join(LAYOUTS)})"
    channels, kind = LAYOUTS[msg.encoding]
    item = channels * np.dtype(kind).itemsize
    if msg.width <= 0 or msg.height <= 0:
        return f"image is {msg.width}x{msg.height}"
    if msg.step < msg.width * item:
        return f"step {msg.step} is less than width {msg.width} x {item} bytes per pixel"
    if len(msg.data) < msg.step * msg.height:
        return (f"data is {len(msg.data)} bytes, shorter than its declared size {msg.step * msg.height} "
                f"(step {msg.step} x {msg.height} rows)")
    return None


def image_to_array(msg: Any) -> np.ndarray:
    """The message's pixels as an HxW[xC] array viewing the message buffer (no copy when unpadded)."""
    enc = msg.encoding
    if enc not in LAYOUTS:
        raise EncodingError(f"unsupported image encoding '{enc}'; supported: {', '.join(ENCODINGS)}")
    channels, kind = LAYOUTS[enc]
    dtype = np.dtype(kind).newbyteorder(">" if msg.is_bigendian else "<")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = w * channels * dtype.itemsize
    buf = np.frombuffer(msg.data, dtype=np.uint8) if not isinstance(msg.data, np.ndarray) else msg.data.view(np.uint8)
    if h <= 0 or w <= 0 or step < row_bytes or buf.size < step * h:
        raise EncodingError(f"image {w}x{h} '{enc}' with step {step} needs {step * h} bytes, message has {buf.size}")
    rows = buf[: step * h].reshape(h, step)[:, :row_bytes]
    arr = rows.view(dtype).reshape(h, w, channels) if rows.flags.c_contiguous or step == row_bytes else \
        np.ascontiguousarray(rows).view(dtype).reshape(h, w, channels)
    return arr[:, :, 0] if channels == 1 else arr


def image_to_rgb8(msg: Any, mono16_max: int = 65535) -> np.ndarray:
    """RGB uint8 HxWx3 for inference from any supported encoding.

    16-bit mono (mono16, 16UC1) is scaled by one fixed gain, ``255 / mono16_max`` (values above
    saturate): the same for both images of a pair and for every frame, so matching sees the same
    brightness on both sides and from frame to frame (each image's own maximum gave neither).
    """
    enc = msg.encoding
    if enc not in ENCODINGS:
        raise EncodingError(f"unsupported image encoding '{enc}' for stereo input; supported: {', '.join(ENCODINGS)}")
    arr = image_to_array(msg)
    if ENCODINGS[enc][1] == "u2":
        if not 1 <= int(mono16_max) <= 65535:
            raise EncodingError(f"mono16_max must be in 1..65535, got {mono16_max}")
        native = np.ascontiguousarray(arr, dtype=np.uint16)  # big-endian data -> native order for OpenCV
        scaled = cv2.convertScaleAbs(native, alpha=255.0 / int(mono16_max))  # saturates at 255
        return cv2.cvtColor(scaled, cv2.COLOR_GRAY2RGB)
    conversion = ENCODINGS[enc][2]
    if conversion is None:
        return arr
    return cv2.cvtColor(np.ascontiguousarray(arr), conversion)


def compressed_to_rgb8(msg: Any) -> np.ndarray:
    """RGB uint8 HxWx3 of a ``sensor_msgs/CompressedImage`` (JPEG or PNG: ``image_transport``'s compressed
    plugin, the usual way image topics are recorded); grey images come out as three equal channels."""
    data = np.frombuffer(bytes(msg.data), np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise EncodingError(f"the compressed image (format '{getattr(msg, 'format', '?')}', {data.size} bytes) cannot be "
                            "decoded as JPEG or PNG")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def message_to_rgb8(msg: Any, msgtype: str) -> np.ndarray:
    """RGB uint8 HxWx3 of an Image (any supported encoding) or a CompressedImage message."""
    if msgtype.endswith("CompressedImage"):
        return compressed_to_rgb8(msg)
    problem = image_problem(msg)
    if problem is not None:
        raise EncodingError(problem)
    return np.ascontiguousarray(image_to_rgb8(msg))


__all__ = ["ENCODINGS", "LAYOUTS", "EncodingError", "compressed_to_rgb8", "image_problem", "image_to_array",
           "image_to_rgb8", "message_to_rgb8"]
