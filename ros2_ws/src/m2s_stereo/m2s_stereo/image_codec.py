"""numpy -> sensor_msgs/Image and the node's reusable message buffers.

Decoding (Image -> numpy) is :mod:`calib.ros_image`, the project's one decoder, re-exported here
for the node's modules.
"""

from __future__ import annotations

import array
from typing import Any

import numpy as np

from calib.ros_image import ENCODINGS, LAYOUTS, EncodingError, image_to_array, image_to_rgb8  # noqa: F401 (re-exported)


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
