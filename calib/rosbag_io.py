"""Reading rosbag2 bags (sqlite3 and MCAP) with the pure-Python ``rosbags`` library, damaged ones too.

The one bag reader of the project: the stereo bag tools and the replay (m2s_stereo), and synthesis
from a recording (m2s_train), read through it. ``raw_messages`` gives (topic, msgtype, CDR bytes) in
file order; a bag cut short (a recorder killed mid-write) gives its readable part with a warning:
MCAP records are walked from the start, a sqlite3 file is opened read-only with
``writable_schema`` (SQLite then reads the pages that exist) and scanned by row id. ``rosbags`` is
imported lazily (the ``ros`` extra); nothing here needs a ROS install.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from calib.errors import DataError


class BagError(DataError):
    """A bag that cannot be written or read as a stereo bag; the message says what is wrong."""


def typestore() -> Any:
    """The message definitions of ROS 2 Humble (the stereo, image and point-cloud messages are alike in every distribution)."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


def open_reader(path: Path) -> Any:
    from rosbags.rosbag2 import Reader

    if not path.exists():
        raise BagError(f"bag {path} not found")
    if path.is_file() and _is_ros1_bag(path):
        raise BagError(f"{path} is a ROS 1 bag: convert it to rosbag2 first (pip install rosbags; rosbags-convert "
                       f"--src {path} --dst {path.with_suffix('')}), then give that folder")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:  # noqa: BLE001  (rosbags raises several error types for broken bags)
        raise BagError(f"cannot open bag {path}: {exc}") from None
    return reader


def _is_ros1_bag(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(13) == b"#ROSBAG V2.0\n"


def salvage_mcap(path: Path) -> Iterator[tuple[str, str, bytes]]:
    """(topic, msgtype, cdr) of every complete message in a damaged MCAP file, in file order.

    Walks the records (and uncompressed chunks) from the start and stops at the first cut one.
    """
    import struct

    files = sorted(path.glob("*.mcap")) if path.is_dir() else [path]
    for f in files:
        data = f.read_bytes()
        schemas: dict[int, str] = {}
        channels: dict[int, tuple[str, int]] = {}

        def records(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, bytes]]:
            while pos + 9 <= end:
                op = buf[pos]
                (length,) = struct.unpack_from("<Q", buf, pos + 1)
                if pos + 9 + length > end:
                    return  # cut record: the rest of the file is gone
                yield op, buf[pos + 9 : pos + 9 + length]
                pos += 9 + length

        def text(rec: bytes, pos: int) -> tuple[str, int]:
            (n,) = struct.unpack_from("<I", rec, pos)
            return rec[pos + 4 : pos + 4 + n].decode(), pos + 4 + n

        def handle(op: int, rec: bytes) -> Iterator[tuple[str, str, bytes]]:
            if op == 0x03:  # schema
                (sid,) = struct.unpack_from("<H", rec, 0)
                schemas[sid], _ = text(rec, 2)
            elif op == 0x04:  # channel
                cid, sid = struct.unpack_from("<HH", rec, 0)
                topic, _ = text(rec, 4)
                channels[cid] = (topic, sid)
            elif op == 0x05 and len(rec) >= 22:  # message
                (cid,) = struct.unpack_from("<H", rec, 0)
                if cid in channels:
                    topic, sid = channels[cid]
                    yield topic, schemas.get(sid, ""), rec[22:]
            elif op == 0x06:  # chunk: times, size, crc, compression, records
                compression, pos = text(rec, 8 + 8 + 8 + 4)
                if compression:
                    return  # compressed chunks cannot be salvaged piecewise
                (n,) = struct.unpack_from("<Q", rec, pos)
                inner = rec[pos + 8 : pos + 8 + n]
                for op2, rec2 in records(inner, 0, len(inner)):
                    yield from handle(op2, rec2)

        if data[:8] != b"\x89MCAP0\r\n":
            continue
        # a chunk cut by the truncation still holds complete inner records: parse it partially
        pos = 8
        while pos + 9 <= len(data):
            op = data[pos]
            (length,) = struct.unpack_from("<Q", data, pos + 1)
            rec = data[pos + 9 : pos + 9 + length]
            if len(rec) < length and op == 0x06:
                compression, p2 = text(rec, 28)
                if not compression and len(rec) >= p2 + 8:
                    for op2, rec2 in records(rec, p2 + 8, len(rec)):
                        yield from handle(op2, rec2)
                return
            if len(rec) < length:
                return
            yield from handle(op, rec)
            pos += 9 + length


def salvage_sqlite(path: Path, max_misses: int = 256) -> Iterator[tuple[str, str, bytes]]:
    """(topic, msgtype, cdr) rows a damaged rosbag2 sqlite3 file still gives, in id order.

    A file cut short still declares its full page count, which SQLite refuses as corrupt
    unless ``writable_schema`` is on (then it reads only the pages that exist; the connection
    is read-only, so nothing is written). Rows are scanned in id order; past the first
    unreadable B-tree page, each later id is looked up on its own (its leaf may still be
    there), until ``max_misses`` ids in a row cannot be read.
    """
    import sqlite3

    for db in sorted(path.glob("*.db3")) if path.is_dir() else [path]:
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        except sqlite3.Error:
            continue
        try:
            con.execute("PRAGMA writable_schema=ON")
            topics = {i: (n, t) for i, n, t in con.execute("SELECT id, name, type FROM topics")}
        except sqlite3.DatabaseError:
            con.close()
            continue
        last = 0
        try:
            cur = con.execute("SELECT id, topic_id, data FROM messages ORDER BY id")
            while True:
                try:
                    row = cur.fetchone()
                except sqlite3.DatabaseError:
                    break
                if row is None:
                    break
                last = row[0]
                if row[1] in topics:
                    yield topics[row[1]][0], topics[row[1]][1], bytes(row[2])
            misses, rowid = 0, last
            while misses < max_misses:
                rowid += 1
                try:
                    row = con.execute("SELECT topic_id, data FROM messages WHERE id = ?", (rowid,)).fetchone()
                except sqlite3.DatabaseError:
                    row = None
                if row is None:
                    misses += 1
                    continue
                misses = 0
                if row[0] in topics:
                    yield topics[row[0]][0], topics[row[0]][1], bytes(row[1])
        finally:
            con.close()


def _salvage(path: Path, exc: BagError, warnings: list[str] | None) -> list[tuple[str, str, bytes]]:
    if not path.exists():
        raise exc
    salvaged = list(salvage_mcap(path)) if list(path.glob("*.mcap")) or path.suffix == ".mcap" else list(salvage_sqlite(path))
    if not salvaged:
        raise BagError(f"{exc}; no readable messages could be salvaged") from None
    if warnings is not None:
        warnings.append(f"{path} is damaged ({exc}); using the {len(salvaged)} messages that could be read")
    return salvaged


def bag_topics(path: Path, warnings: list[str] | None = None) -> dict[str, str]:
    """{topic: message type} of a bag; a damaged bag (truncated MCAP, a cut sqlite3 file) gives the
    topics of the messages that can be salvaged, as :func:`raw_messages` reads them: every tool that
    reads bags reads the same damaged ones."""
    path = Path(path)
    try:
        reader = open_reader(path)
    except BagError as exc:
        return {t: m for t, m, _ in _salvage(path, exc, warnings)}
    try:
        return {c.topic: c.msgtype for c in reader.connections}
    finally:
        reader.close()


def resolve_topic(topics: Any, name: str) -> str | None:
    """The bag's spelling of topic ``name`` (with or without the leading slash), or None."""
    return next((c for c in (name, "/" + name.lstrip("/"), name.lstrip("/")) if c in topics), None)


IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
INFO_TYPE = "sensor_msgs/msg/CameraInfo"
SIDE_NAMES = {"left": ("left", "infra1"), "right": ("right", "infra2")}  # RealSense names its IR pair infra1/2
_NOT_AN_IMAGE = re.compile(r"(^|[/_])(disparity|depth|points|confidence)([/_]|$)")


def _has_side(topic: str, side: str) -> bool:
    return any(re.search(rf"(^|[/_]){name}([/_]|$)", topic.lower()) for name in SIDE_NAMES[side])


def _given(topics: dict[str, str], name: str, types: tuple[str, ...], flag: str, where: str) -> str:
    found = resolve_topic(topics, name)
    if found is None or topics[found] not in types:
        kind = " or ".join(t.rsplit("/", 1)[-1] for t in types)
        candidates = sorted(t for t, m in topics.items() if m in types)
        raise BagError(f"{where} has no {kind} topic '{name}' ({flag}; its {kind} topics: "
                       f"{', '.join(candidates) or 'none'})")
    return found


def stereo_image_topics(topics: dict[str, str], where: str, left: str | None = None, right: str | None = None,
                        default: tuple[str, str] = ("left/image_rect", "right/image_rect")) -> tuple[str, str]:
    """The left and right image topics (``sensor_msgs/Image`` or ``CompressedImage``) of a bag whose ``topics``
    are {name: type}: the given ones (``--left-image``/``--right-image``), else ``default`` (with or without the
    leading slash), else the one image topic whose name has a ``left``/``infra1`` (``right``/``infra2``) part;
    among several, the one rectified (``rect`` in its name), an Image before its ``/compressed`` twin.
    Ambiguity, or nothing found, is an error that lists the candidates and the flag to use."""
    chosen = []
    for side, given, fallback in (("left", left, default[0]), ("right", right, default[1])):
        flag = f"--{side}-image"
        if given is not None:
            chosen.append(_given(topics, given, IMAGE_TYPES, flag, where))
            continue
        named = resolve_topic(topics, fallback)
        if named is not None and topics[named] in IMAGE_TYPES:
            chosen.append(named)
            continue
        found = sorted(t for t, m in topics.items() if m in IMAGE_TYPES and _has_side(t, side)
                       and not _NOT_AN_IMAGE.search(t.lower()))
        narrowed = found
        for keep in (lambda t: "rect" in t.lower(), lambda t: topics[t] == IMAGE_TYPES[0]):
            if len(narrowed) > 1 and any(keep(t) for t in narrowed):
                narrowed = [t for t in narrowed if keep(t)]
        if len(narrowed) != 1:
            images = sorted(t for t, m in topics.items() if m in IMAGE_TYPES)
            what = "no" if not narrowed else f"{len(narrowed)} candidate"
            raise BagError(f"{where} has {what} {side} image topic(s) ({', '.join(narrowed or images) or 'no image topic'}); "
                           f"name it with {flag} TOPIC")
        chosen.append(narrowed[0])
    return chosen[0], chosen[1]


def stereo_info_topics(topics: dict[str, str], where: str, images: tuple[str, str] | None = None,
                       left: str | None = None, right: str | None = None,
                       default: tuple[str, str] = ("left/camera_info", "right/camera_info")) -> tuple[str, str]:
    """The left and right ``sensor_msgs/CameraInfo`` topics: the given ones (``--left-info``/``--right-info``),
    else ``default``, else the ``camera_info`` beside each image topic (``/camera/infra1/image_rect_raw`` ->
    ``/camera/infra1/camera_info``), else the one CameraInfo topic whose name has the side's part
    (``/zed/left/camera_info``...); ambiguity is an error that lists the candidates."""
    infos = sorted(t for t, m in topics.items() if m == INFO_TYPE)
    chosen = []
    for k, (side, given, fallback) in enumerate((("left", left, default[0]), ("right", right, default[1]))):
        flag = f"--{side}-info"
        if given is not None:
            chosen.append(_given(topics, given, (INFO_TYPE,), flag, where))
            continue
        candidates = [fallback]
        if images is not None:
            base = images[k].rstrip("/").removesuffix("/compressed")
            candidates.append(base.rsplit("/", 1)[0] + "/camera_info" if "/" in base.strip("/") else "camera_info")
        named = next((n for c in candidates if (n := resolve_topic(topics, c)) and topics[n] == INFO_TYPE), None)
        if named is not None:
            chosen.append(named)
            continue
        found = [t for t in infos if _has_side(t, side)]
        if len(found) != 1:
            what = "no" if not found else f"{len(found)}"
            raise BagError(f"{where} has {what} {side} CameraInfo topic(s) ({', '.join(found or infos) or 'none'}); name "
                           f"it with {flag} TOPIC")
        chosen.append(found[0])
    return chosen[0], chosen[1]


def stereo_camera_info_topics(path: Path, left: str | None = None, right: str | None = None) -> tuple[str, str]:
    """The left and right ``sensor_msgs/CameraInfo`` topics of the bag at ``path`` (:func:`stereo_info_topics`)."""
    return stereo_info_topics(bag_topics(path), str(path), None, left, right)


def first_messages(path: Path, topics: tuple[str, ...]) -> dict[str, Any]:
    """The first message (deserialised) of each of ``topics``; a topic without one is an error."""
    ts = typestore()
    found: dict[str, Any] = {}
    _, stream = raw_messages(path)
    for topic, msgtype, raw in stream:
        if topic in topics and topic not in found:
            found[topic] = ts.deserialize_cdr(raw, msgtype)
            if len(found) == len(topics):
                break
    missing = [t for t in topics if t not in found]
    if missing:
        raise BagError(f"{path}: no message on {', '.join(missing)}")
    return found


def raw_messages(path: Path, warnings: list[str] | None = None) -> tuple[set[str], Iterator[tuple[str, str, bytes]]]:
    """Topics and a (topic, msgtype, cdr) stream, through rosbags or, for damaged files, salvage."""
    path = Path(path)
    try:
        reader = open_reader(path)
    except BagError as exc:
        salvaged = _salvage(path, exc, warnings)
        return {t for t, _, _ in salvaged}, iter(salvaged)

    def stream() -> Iterator[tuple[str, str, bytes]]:
        try:
            it = reader.messages()
            while True:
                try:
                    conn, _, raw = next(it)
                except StopIteration:
                    return
                except Exception as exc:  # noqa: BLE001  (a file cut mid-record fails mid-iteration)
                    if warnings is not None:
                        warnings.append(f"{path}: stopped at a damaged record ({type(exc).__name__}); using the readable part")
                    return
                yield conn.topic, conn.msgtype, raw
        finally:
            reader.close()

    return {c.topic for c in reader.connections}, stream()




def stamp_ns(msg: Any) -> int:
    """A deserialised message's header stamp in nanoseconds."""
    return int(msg.header.stamp.sec) * 10**9 + int(msg.header.stamp.nanosec)


__all__ = ["IMAGE_TYPES", "INFO_TYPE", "BagError", "bag_topics", "first_messages", "open_reader", "raw_messages", "resolve_topic", "salvage_mcap",
           "salvage_sqlite", "stamp_ns", "stereo_camera_info_topics", "stereo_image_topics", "stereo_info_topics",
           "typestore"]
