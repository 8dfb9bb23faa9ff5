"""sensor_msgs/Image <-> numpy without cv_bridge (zero-copy where the layout allows).

Supported input encodings: mono8, mono16, rgb8, bgr8, rgba8, bgra8 (and 8UC1/8UC3/16UC1 as
mono8/bgr8/mono16, the OpenCV convention). Anything else raises :class:`EncodingError` with the list. Row padding
(``step`` > width * pixel size) and big-endian 16-bit data are handled.
"""

from __future__ import annotations

import array
from typing import Any

import cv2
import numpy as np

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


class EncodingError(ValueError):
    """An image message the node cannot decode (unsupported encoding or inconsistent size)."""


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


def new_message(msg_type: type) -> Any:
    """An empty message whose uint8[] setters keep an ``array.array('B')`` as is.

    Since ROS 2 Jazzy the generated setters copy the array again (``array.array('B', value)``)
    unless the message was made with ``check_fields=True``; Humble's always keep it and have no
    such argument. Either way, the node's buffers are handed over without a second copy.
    """
    if "_check_fields" in getattr(msg_type, "__slots__", ()):
        return msg_type(check_fields=True)
    return msg_type()


def byte_buffer(nbytes: int) -> tuple[array.array, np.ndarray]:
    """A new ``array.array('B')`` of ``nbytes`` (the type rclpy keeps uint8[] fields in) and a
    writable numpy view of it, so message payloads are computed straight into their buffer."""
    out = array.array("B", b"\0") * int(nbytes)
    return out, np.frombuffer(out, dtype=np.uint8)


class BufferPool:
    """Message buffers reused from frame to frame, one per name.

    ``Publisher.publish`` converts and serialises the message before it returns, so once a
    message is published its buffer can be refilled for the next frame: no allocation, no page
    faults, no zero-fill per frame. Use one pool per publishing thread, and never keep a
    message built from it past the next frame (subscribers get their own copies).
    """

    def __init__(self) -> None:
        self._buffers: dict[str, tuple[array.array, np.ndarray]] = {}

    def take(self, name: str, nbytes: int) -> tuple[array.array, np.ndarray]:
        entry = self._buffers.get(name)
        if entry is None or len(entry[0]) != nbytes:
            entry = self._buffers[name] = byte_buffer(nbytes)
        return entry


def byte_array(data: np.ndarray) -> array.array:
    """The bytes of ``data`` as ``array.array('B')`` (one copy).

    Assigning ``bytes`` instead makes the generated message setter check every byte in Python
    (tens of ms for a 640x480 float image).
    """
    out = array.array("B")
    out.frombytes(np.ascontiguousarray(data).view(np.uint8).reshape(-1).data)
    return out


def array_to_image(msg_type: type, array: np.ndarray, encoding: str, header: Any = None) -> Any:
    """An Image message from an HxW[xC] uint8/uint16 array (tests, bag tools)."""
    array = np.ascontiguousarray(array)
    msg = new_message(msg_type)
    if header is not None:
        msg.header = header
    msg.height, msg.width = array.shape[:2]
    msg.encoding = encoding
    msg.is_bigendian = False
    msg.step = array.shape[1] * (array.shape[2] if array.ndim == 3 else 1) * array.dtype.itemsize
    msg.data = byte_array(array)
    return msg
