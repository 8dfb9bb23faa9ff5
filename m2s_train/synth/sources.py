"""Frames of a robot's own recording for synthesis: a rosbag2 image topic or a video file.

The chosen frames are written once as PNG files under ``<out>/frames/`` (atomically; a rerun
skips those already there), named by their origin: ``<bag>/<topic>/<stamp_ns>.png`` or
``<video>/<frame index>.png``. Synthesis then runs on them like on photos, so a frame's sample id
is its bag + topic + timestamp (or video + frame index), and resume, sharding and byte-identical
output work as for photos.

Selection: ``every`` N-th frame, between ``start`` and ``end`` seconds after the first one, and
near-duplicates skipped: a frame whose mean absolute difference to the last kept one (grey, on a
thumbnail 64 px wide) is below ``min_change`` grey levels is a robot standing still.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from calib.errors import DataError
from calib.ros_image import EncodingError, message_to_rgb8
from calib.safe_files import write_bytes_atomic
from m2s_train.config import check_fields, num

log = logging.getLogger(__name__)

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


@dataclass(frozen=True)
class FrameSelection:
    every: int = num(1, ge=1)  # keep every N-th frame of the source
    start: float = num(0.0, ge=0)  # seconds after the first frame
    end: float | None = num(None, ge=0)  # seconds after the first frame (None: to the end)
    min_change: float = num(2.0, ge=0)  # grey levels; 0 keeps near-duplicates too

    def __post_init__(self) -> None:
        check_fields(self)
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"--end ({self.end} s) must be after --start ({self.start} s)")


class _Selector:
    """Applies a :class:`FrameSelection` to a stream of (time s, frame) in order."""

    def __init__(self, selection: FrameSelection) -> None:
        self.s = selection
        self.count = 0
        self.first: float | None = None
        self.last_kept: np.ndarray | None = None
        self.duplicates = 0

    def keep(self, t: float, rgb: np.ndarray | None = None, decode: Any = None) -> tuple[bool, np.ndarray | None]:
        """Whether the frame at ``t`` is kept; ``decode()`` gives its RGB image only when needed."""
        self.first = t if self.first is None else self.first
        rel = t - self.first
        if rel < self.s.start or (self.s.end is not None and rel > self.s.end):
            return False, None
        self.count += 1
        if (self.count - 1) % self.s.every:
            return False, None
        rgb = rgb if rgb is not None else decode()
        thumb = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (64, max(1, round(64 * rgb.shape[0] / rgb.shape[1]))),
                           interpolation=cv2.INTER_AREA).astype(np.float32)
        if (self.s.min_change > 0 and self.last_kept is not None and self.last_kept.shape == thumb.shape
                and float(np.abs(thumb - self.last_kept).mean()) < self.s.min_change):
            self.duplicates += 1
            return False, None
        self.last_kept = thumb
        return True, rgb


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip("/")) or "_"


def _write_png(path: Path, rgb: np.ndarray, written: list[Path] | None = None) -> None:
    """The frame as PNG at ``path``, keyed by content: a file there from an earlier run is kept only when
    it holds these very bytes (the same frame); a recording replaced under the same name rewrites it, so
    the synthesis resume sees a new source_sha256 and makes the sample again. New or rewritten files are
    appended to ``written`` (what an error removes)."""
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise DataError(f"cannot encode {path.name} as PNG")
    data = png.tobytes()
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return  # made by an earlier run (or another shard) from the same frame
    if path.is_file():
        log.info("%s holds another frame than the recording now gives: rewritten", path)
    write_bytes_atomic(path, data)
    if written is not None:
        written.append(path)


def bag_image_topics(bag: Path) -> dict[str, str]:
    """{topic: message type} of a bag (every topic; a damaged bag's salvaged ones), for listing and checking."""
    from calib.rosbag_io import bag_topics

    return bag_topics(bag)


def _decode(msg: Any, msgtype: str, where: str) -> np.ndarray:
    try:
        return message_to_rgb8(msg, msgtype)
    except EncodingError as exc:
        raise DataError(f"{where}: {exc}") from None


def _topic_name(topics: dict[str, str], topic: str) -> str:
    """The bag's name of ``topic`` (with or without the leading slash)."""
    from calib.rosbag_io import resolve_topic

    if (name := resolve_topic(topics, topic)) is not None:
        return name
    listing = ", ".join(f"{t} ({m.rsplit('/', 1)[-1]})" for t, m in sorted(topics.items())) or "none"
    raise DataError(f"the bag has no topic '{topic}'; it has: {listing}")


def extract_bag_frames(bag: str | Path, topic: str, out: str | Path, selection: FrameSelection = FrameSelection(),
                       progress: bool = True, written: list[Path] | None = None) -> dict[str, Any]:
    """Write the selected frames of ``topic`` (sensor_msgs/Image in any encoding the node takes, or
    CompressedImage) under ``out/frames/<bag>/<topic>/<stamp_ns>.png``; returns the paths and counts.
    A second message with a stamp already seen (a driver bug, a bag merged twice) is skipped and counted.
    ``written`` collects the files this call made (see :func:`remove_written`)."""
    from calib.rosbag_io import raw_messages, stamp_ns, typestore

    bag = Path(bag)
    topics = bag_image_topics(bag)
    name = _topic_name(topics, topic)
    if topics[name] not in IMAGE_TYPES:
        raise DataError(f"topic '{name}' of {bag} carries {topics[name]}, not an image ({' or '.join(IMAGE_TYPES)})")
    folder = Path(out) / "frames" / _safe(bag.name) / _safe(name)
    folder.mkdir(parents=True, exist_ok=True)
    ts = typestore()
    selector = _Selector(selection)
    paths: list[Path] = []
    warnings: list[str] = []
    _, stream = raw_messages(bag, warnings)
    stamps: set[int] = set()
    repeated = 0
    bar = tqdm(desc=f"frames of {name}", unit="msg", disable=not progress)
    for msg_topic, msgtype, raw in stream:
        if msg_topic != name:
            continue
        bar.update(1)
        msg = ts.deserialize_cdr(raw, msgtype)
        stamp = stamp_ns(msg)
        if stamp in stamps:
            repeated += 1
            continue
        stamps.add(stamp)
        where = f"{name} at {stamp}"
        kept, rgb = selector.keep(stamp / 1e9, decode=lambda m=msg, w=where: _decode(m, msgtype, w))
        if kept:
            path = folder / f"{stamp:019d}.png"
            _write_png(path, rgb, written)
            paths.append(path)
    bar.close()
    if repeated:
        warnings.append(f"{repeated} message(s) of '{name}' repeat a stamp already seen: skipped (one frame per stamp)")
    for w in warnings:
        log.warning("%s", w)
    if not paths:
        raise DataError(f"no frame of '{name}' in {bag} was selected ({selector.count} in the time window, "
                        f"{selector.duplicates} near-duplicates); widen --start/--end or lower --min-change")
    return {"frames": paths, "root": Path(out) / "frames", "source": f"{bag.name}:{name}",
            "seen": selector.count, "near_duplicates": selector.duplicates, "repeated_stamps": repeated,
            "warnings": warnings}


def extract_video_frames(video: str | Path, out: str | Path, selection: FrameSelection = FrameSelection(),
                         progress: bool = True, written: list[Path] | None = None) -> dict[str, Any]:
    """Write the selected frames of a video file (OpenCV) under ``out/frames/<video>/<index>.png``;
    ``written`` collects the files this call made (see :func:`remove_written`)."""
    video = Path(video)
    if video.is_dir():
        raise DataError(f"--video {video} is a folder, not a video file (for a folder of images use --images)")
    if not video.is_file():
        raise DataError(f"video {video} not found")
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise DataError(f"OpenCV cannot open {video} as a video (unknown container or codec)")
    fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
    folder = Path(out) / "frames" / _safe(video.name)
    folder.mkdir(parents=True, exist_ok=True)
    selector = _Selector(selection)
    paths: list[Path] = []
    bar = tqdm(desc=f"frames of {video.name}", unit="frame", disable=not progress)
    index = 0
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            t = index / fps if fps > 0 else capture.get(cv2.CAP_PROP_POS_MSEC) / 1e3
            kept, rgb = selector.keep(t, rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            if kept:
                path = folder / f"{index:08d}.png"
                _write_png(path, rgb, written)
                paths.append(path)
            index += 1
            bar.update(1)
    finally:
        capture.release()
        bar.close()
    if not index:
        raise DataError(f"{video} has no readable frame")
    if not paths:
        raise DataError(f"no frame of {video} was selected ({selector.count} in the time window, "
                        f"{selector.duplicates} near-duplicates); widen --start/--end or lower --min-change")
    return {"frames": paths, "root": Path(out) / "frames", "source": video.name, "seen": selector.count,
            "near_duplicates": selector.duplicates, "warnings": []}


def remove_written(written: list[Path], root: Path) -> None:
    """Undo a frame extraction that failed (or whose frames turned out unusable): remove the files it
    made, then every folder under ``root`` (and ``root``) left empty, so the output holds only what it held."""
    for path in written:
        path.unlink(missing_ok=True)
    if not root.is_dir():
        return
    for folder, _, _ in sorted(os.walk(root), key=lambda w: len(Path(w[0]).parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty: it holds frames of earlier runs
            Path(folder).rmdir()


def bag_camera(bag: str | Path, image_topic: str | None = None) -> Any:
    """The stereo camera of a bag: the first message of its left and right ``camera_info`` topics (found as
    every bag reader finds them, :func:`calib.rosbag_io.stereo_info_topics`), as :class:`calib.StereoCamera`."""
    from calib import StereoCamera
    from calib.rosbag_io import BagError, first_messages, stereo_info_topics

    bag = Path(bag)
    topics = bag_image_topics(bag)
    try:
        left, right = stereo_info_topics(topics, str(bag))
    except BagError as exc:
        raise DataError(f"{exc} (or pass --camera DIR: left.yaml / right.yaml from m2s-calib)") from None
    found = first_messages(bag, (left, right))
    return StereoCamera.from_msgs(found[left], found[right])


def bag_image_topic(bag: str | Path, topic: str | None) -> str:
    """The image topic to synthesize from: ``topic`` (with or without the leading slash), else the stereo pair's
    left image as every bag reader finds it, else the bag's only image topic."""
    from calib.rosbag_io import IMAGE_TYPES, BagError, stereo_image_topics

    if topic is not None:
        return topic
    topics = bag_image_topics(Path(bag))
    try:
        return stereo_image_topics(topics, str(bag))[0]
    except BagError as exc:
        images = sorted(t for t, m in topics.items() if m in IMAGE_TYPES)
        if len(images) == 1:
            return images[0]
        raise DataError(f"{exc}; give the image topic to synthesize from with --topic") from None


__all__ = ["FrameSelection", "bag_camera", "bag_image_topic", "bag_image_topics", "extract_bag_frames", "extract_video_frames",
           "remove_written"]
