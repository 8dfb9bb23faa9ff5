"""ROS 2 bags of stereo pairs (sqlite3 or MCAP) with the pure-Python ``rosbags`` library.

Topics written by ``m2s-bag make``: ``left/image_rect``, ``right/image_rect`` (rgb8),
``left/camera_info``, ``right/camera_info`` and optionally ``gt/disparity`` (32FC1 px, NaN =
unknown) or ``gt/depth`` (32FC1 m, sparse, NaN = unknown), all frames stamped alike.
``read_frames`` regroups them by stamp; ``bag_info`` reports topics, rates, gaps and stamp
problems. No ROS install and no torch needed.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calib import StereoCamera
from calib.errors import CalibrationError, DataError
from calib.safe_files import load_npy, staged_directory

LEFT, RIGHT = "left/image_rect", "right/image_rect"
LEFT_INFO, RIGHT_INFO = "left/camera_info", "right/camera_info"
GT_DISP, GT_DEPTH = "gt/disparity", "gt/depth"
REQUIRED = (LEFT, RIGHT, LEFT_INFO, RIGHT_INFO)
STORAGES = ("sqlite3", "mcap")


class BagError(DataError):
    """A bag that cannot be written or read as a stereo bag; the message says what is wrong."""


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


@dataclass
class Frame:
    """One stereo frame: RGB uint8 images, the camera, optional GT, and its stamp (ns)."""

    stamp_ns: int
    left: np.ndarray
    right: np.ndarray
    camera: StereoCamera
    gt_disparity: np.ndarray | None = None
    gt_depth: np.ndarray | None = None
    raw: dict[str, bytes] = field(default_factory=dict)  # serialized messages (for replay over DDS)


def _header(ts: Any, stamp_ns: int, frame_id: str) -> Any:
    Header = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    return Header(stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id=frame_id)


def _image(ts: Any, header: Any, array: np.ndarray, encoding: str) -> Any:
    array = np.ascontiguousarray(array)
    row = array.shape[1] * (array.shape[2] if array.ndim == 3 else 1) * array.dtype.itemsize
    return ts.types["sensor_msgs/msg/Image"](header=header, height=array.shape[0], width=array.shape[1], encoding=encoding,
                                             is_bigendian=0, step=row, data=np.frombuffer(array.tobytes(), np.uint8))


def _info(ts: Any, header: Any, info: Any) -> Any:
    T = ts.types
    roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return T["sensor_msgs/msg/CameraInfo"](
        header=header, height=info.height, width=info.width, distortion_model=info.distortion_model,
        d=np.asarray(info.D, np.float64), k=np.asarray(info.K, np.float64).ravel(), r=np.asarray(info.R, np.float64).ravel(),
        p=np.asarray(info.P, np.float64).ravel(), binning_x=0, binning_y=0, roi=roi)


def write_bag(path: str | os.PathLike, frames: list[Frame] | Iterator[Frame], storage: str = "sqlite3",
              frame_id: str = "left_camera_optical_frame") -> int:
    """Write frames to a new bag directory; returns the number of frames.

    The bag is written under a staging name and appears at ``path`` only when complete: a failure
    (a bad frame, a full disk, Ctrl-C) leaves nothing behind, so the same command can be retried.
    """
    from rosbags.rosbag2 import Writer
    from rosbags.rosbag2.enums import StoragePlugin

    if storage not in STORAGES:
        raise BagError(f"storage must be one of {', '.join(STORAGES)}, got '{storage}'")
    path = Path(path)
    if path.exists():
        raise BagError(f"{path} exists: choose a new bag directory (bags are never overwritten)")
    ts = _typestore()
    plugin = StoragePlugin.SQLITE3 if storage == "sqlite3" else StoragePlugin.MCAP
    n = 0
    with staged_directory(path) as stage, Writer(stage, version=8, storage_plugin=plugin) as writer:
        conns: dict[str, Any] = {}

        def conn(topic: str, msgtype: str) -> Any:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=ts)
            return conns[topic]

        last = -1
        for frame in frames:
            if frame.stamp_ns <= last:
                raise BagError(f"frame stamps must increase: {frame.stamp_ns} after {last}")
            last = frame.stamp_ns
            if frame.left.shape != frame.right.shape:
                raise BagError(f"frame {n}: left {frame.left.shape[1]}x{frame.left.shape[0]} and right "
                               f"{frame.right.shape[1]}x{frame.right.shape[0]} differ in size")
            try:
                frame.camera.check_image_size(frame.left.shape[1], frame.left.shape[0])
            except CalibrationError as exc:
                raise BagError(f"frame {n}: {exc}") from None
            h = _header(ts, frame.stamp_ns, frame_id)
            items = [(LEFT, _image(ts, h, frame.left, "rgb8")), (RIGHT, _image(ts, h, frame.right, "rgb8")),
                     (LEFT_INFO, _info(ts, h, frame.camera.left)), (RIGHT_INFO, _info(ts, h, frame.camera.right))]
            if frame.gt_disparity is not None:
                items.append((GT_DISP, _image(ts, h, frame.gt_disparity.astype(np.float32), "32FC1")))
            if frame.gt_depth is not None:
                items.append((GT_DEPTH, _image(ts, h, frame.gt_depth.astype(np.float32), "32FC1")))
            for topic, msg in items:
                writer.write(conn(topic, msg.__msgtype__), frame.stamp_ns, ts.serialize_cdr(msg, msg.__msgtype__))
            n += 1
    return n


_ENCODINGS = {"rgb8": 3, "bgr8": 3, "mono8": 1, "32FC1": 1, "rgba8": 4}  # channels


def image_problem(msg: Any) -> str | None:
    """Why an Image message cannot be read as an array (None when it can)."""
    channels = _ENCODINGS.get(msg.encoding)
    if channels is None:
        return f"unsupported image encoding '{msg.encoding}' (use one of {', '.join(_ENCODINGS)})"
    item = (4 if msg.encoding == "32FC1" else 1) * channels
    if msg.width <= 0 or msg.height <= 0:
        return f"image is {msg.width}x{msg.height}"
    if msg.step < msg.width * item:
        return f"step {msg.step} is less than width {msg.width} x {item} bytes per pixel"
    if len(msg.data) < msg.step * msg.height:
        return (f"data is {len(msg.data)} bytes, shorter than its declared size {msg.step * msg.height} "
                f"(step {msg.step} x {msg.height} rows)")
    return None


def _to_array(msg: Any, where: str = "image") -> np.ndarray:
    problem = image_problem(msg)
    if problem is not None:
        raise BagError(f"{where}: {problem}")
    channels = _ENCODINGS[msg.encoding]
    dtype = np.float32 if msg.encoding == "32FC1" else np.uint8
    item = np.dtype(dtype).itemsize * channels
    rows = np.asarray(msg.data, np.uint8)[: msg.step * msg.height].reshape(msg.height, msg.step)[:, : msg.width * item]
    arr = np.ascontiguousarray(rows).view(dtype).reshape(msg.height, msg.width, channels)
    if msg.encoding == "bgr8":
        arr = arr[:, :, ::-1]
    if msg.encoding == "rgba8":
        arr = arr[:, :, :3]
    return np.ascontiguousarray(arr[:, :, 0] if channels == 1 else arr)


def _camera(left: Any, right: Any) -> StereoCamera:
    from calib.camera import CameraInfo

    def one(m: Any, name: str) -> CameraInfo:  # camera_info carries no camera name: use the side
        return CameraInfo(m.width, m.height, np.reshape(m.k, (3, 3)), np.asarray(m.d), np.reshape(m.r, (3, 3)),
                          np.reshape(m.p, (3, 4)), m.distortion_model or "plumb_bob", name)

    return StereoCamera(one(left, "left"), one(right, "right"))


def _open_reader(path: Path) -> Any:
    from rosbags.rosbag2 import Reader

    if not path.exists():
        raise BagError(f"bag {path} not found")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:  # noqa: BLE001  (rosbags raises several error types for broken bags)
        raise BagError(f"cannot open bag {path}: {exc}") from None
    return reader


def _salvage_mcap(path: Path) -> Iterator[tuple[str, str, bytes]]:
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


def _salvage_sqlite(path: Path, max_misses: int = 256) -> Iterator[tuple[str, str, bytes]]:
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


def _raw_messages(path: Path, warnings: list[str] | None) -> tuple[set[str], Iterator[tuple[str, str, bytes]]]:
    """Topics and a (topic, msgtype, cdr) stream, through rosbags or, for damaged files, salvage."""
    try:
        reader = _open_reader(path)
    except BagError as exc:
        if not path.exists():
            raise
        salvaged = list(_salvage_mcap(path)) if list(path.glob("*.mcap")) or path.suffix == ".mcap" else list(_salvage_sqlite(path))
        if not salvaged:
            raise BagError(f"{exc}; no readable messages could be salvaged") from None
        if warnings is not None:
            warnings.append(f"{path} is damaged ({exc}); evaluating the {len(salvaged)} messages that could be read")
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


def read_frames(path: str | os.PathLike, *, keep_raw: bool = False, warnings: list[str] | None = None) -> Iterator[Frame]:
    """Frames of a stereo bag, grouped by stamp, in stamp order.

    Missing topics raise :class:`BagError`. A truncated bag yields its readable part and adds a
    warning (to ``warnings`` when given); incomplete frames (a topic missing at a stamp) are
    skipped and counted the same way.
    """
    path = Path(path)
    ts = _typestore()
    topics, stream = _raw_messages(path, warnings)
    missing = [t for t in REQUIRED if t not in topics]
    if missing:
        raise BagError(f"{path} lacks topic(s) {', '.join(missing)} (has {', '.join(sorted(topics)) or 'none'})")
    pending: dict[int, dict[str, Any]] = defaultdict(dict)
    for topic, msgtype, raw in stream:
        try:
            msg = ts.deserialize_cdr(raw, msgtype)
        except Exception:  # noqa: BLE001  (a cut message at the end of a salvaged file)
            continue
        stamp = int(msg.header.stamp.sec) * 10**9 + int(msg.header.stamp.nanosec)
        pending[stamp][topic] = (msg, raw)
    skipped = 0
    for stamp in sorted(pending):
        parts = pending[stamp]
        if any(t not in parts for t in REQUIRED):
            skipped += 1
            continue
        try:
            arrays = {t: _to_array(parts[t][0], f"frame {stamp}: {t}") if t in parts else None
                      for t in (LEFT, RIGHT, GT_DISP, GT_DEPTH)}
            camera = _camera(parts[LEFT_INFO][0], parts[RIGHT_INFO][0])
        except (BagError, CalibrationError) as exc:
            if warnings is not None:
                warnings.append(f"skipped {exc}" if isinstance(exc, BagError) else f"skipped frame {stamp}: {exc}")
            continue
        yield Frame(stamp, arrays[LEFT], arrays[RIGHT], camera, arrays[GT_DISP], arrays[GT_DEPTH],
                    {t: p[1] for t, p in parts.items()} if keep_raw else {})
    if skipped and warnings is not None:
        warnings.append(f"{skipped} incomplete frame(s) skipped (a required topic missing at that stamp)")


def bag_info(path: str | os.PathLike) -> dict[str, Any]:
    """Topics with message counts and rates, stamp gaps, and problems (missing topics, unequal
    counts, non-monotonic stamps)."""
    path = Path(path)
    ts = _typestore()
    stamps: dict[str, list[int]] = defaultdict(list)
    problems: list[str] = []
    types: dict[str, str] = {}
    sizes: dict[int, dict[str, tuple[int, int]]] = defaultdict(dict)  # stamp -> topic -> (width, height)
    _, stream = _raw_messages(path, problems)
    for topic, msgtype, raw in stream:
        types[topic] = msgtype
        try:
            msg = ts.deserialize_cdr(raw, msgtype)
        except Exception:  # noqa: BLE001
            problems.append(f"{topic}: a message could not be decoded")
            continue
        stamp = int(msg.header.stamp.sec) * 10**9 + int(msg.header.stamp.nanosec)
        stamps[topic].append(stamp)
        if topic in (LEFT, RIGHT, LEFT_INFO, RIGHT_INFO):
            sizes[stamp][topic] = (int(msg.width), int(msg.height))
            if topic in (LEFT, RIGHT) and (problem := image_problem(msg)) is not None:
                problems.append(f"{topic} at {stamp}: {problem}")
    problems += _size_problems(sizes)
    topics = {}
    for topic, s in stamps.items():
        arr = np.asarray(s, np.int64)
        d = np.diff(arr) / 1e9
        back = int((d <= 0).sum())
        if back:
            problems.append(f"{topic}: {back} non-increasing stamp(s)")
        pos = d[d > 0]
        topics[topic] = {"type": types.get(topic), "count": len(s),
                         "rate_hz": float(1 / np.median(pos)) if pos.size else None,
                         "max_gap_s": float(pos.max()) if pos.size else None}
    missing = [t for t in REQUIRED if t not in topics]
    if missing:
        problems.append(f"missing topic(s): {', '.join(missing)}")
    counts = {topics[t]["count"] for t in REQUIRED if t in topics}
    if len(counts) > 1:
        problems.append("unequal message counts: " + ", ".join(f"{t}={topics[t]['count']}" for t in REQUIRED if t in topics))
    return {"bag": str(path), "topics": topics, "problems": problems}


def _size_problems(sizes: dict[int, dict[str, tuple[int, int]]], limit: int = 5) -> list[str]:
    """Left/right image sizes that differ, and camera_info sizes that differ from their image's."""
    found: list[str] = []
    count = 0
    for stamp in sorted(sizes):
        s = sizes[stamp]
        checks = [(LEFT, RIGHT, "left and right images differ in size"),
                  (LEFT_INFO, LEFT, "left camera_info does not match the left image"),
                  (RIGHT_INFO, RIGHT, "right camera_info does not match the right image")]
        for a, b, what in checks:
            if a in s and b in s and s[a] != s[b]:
                count += 1
                if len(found) < limit:
                    found.append(f"at {stamp}: {what} ({a} {s[a][0]}x{s[a][1]}, {b} {s[b][0]}x{s[b][1]})")
    if count > limit:
        found.append(f"... {count - limit} more size problem(s)")
    return found


# -- sources for m2s-bag make ---------------------------------------------------------------------------

def frames_from_folder(root: Path, camera: StereoCamera | None, rate_hz: float, start_ns: int) -> Iterator[Frame]:
    """<root>/left/*, <root>/right/* (same names), optional <root>/disparity/*.(npy|pfm|png)."""
    from calib.image_io import read_rgb

    lefts = sorted(p for p in (root / "left").glob("*") if p.is_file())
    if not lefts:
        raise BagError(f"{root}/left has no images")
    for i, lp in enumerate(lefts):
        rp = next(iter(sorted((root / "right").glob(lp.stem + ".*"))), None)
        if rp is None:
            raise BagError(f"{lp.name} has no partner in {root / 'right'}")
        left, right = read_rgb(lp), read_rgb(rp)
        cam = camera or _default_camera(left)
        gt = None
        dp = next(iter(sorted((root / "disparity").glob(lp.stem + ".*"))), None) if (root / "disparity").is_dir() else None
        if dp is not None:
            gt = load_npy(dp, "disparity", BagError).astype(np.float32) if dp.suffix == ".npy" else _read_disp_file(dp)
        yield Frame(start_ns + int(i * 1e9 / rate_hz), left, right, cam, gt)


def _read_disp_file(path: Path) -> np.ndarray:
    from calib.disparity_io import read_disparity

    return read_disparity(path)


def _default_camera(image: np.ndarray) -> StereoCamera:
    h, w = image.shape[:2]
    return StereoCamera.ideal(w, h, focal_px=float(w), baseline_m=0.1)


def frames_from_synth(root: Path, rate_hz: float, start_ns: int, focal_px: float | None, baseline_m: float) -> Iterator[Frame]:
    """A synthesized dataset (exact GT disparity); camera: ideal, focal = image width unless given."""
    from m2s_train.synth.shards import decode_sample, read_manifests

    for i, entry in enumerate(read_manifests(root)):
        s = decode_sample(root / "samples" / f"{entry['sample_id']}.npz")
        h, w = s.left.shape[:2]
        cam = StereoCamera.ideal(w, h, focal_px=focal_px or float(w), baseline_m=baseline_m)
        yield Frame(start_ns + int(i * 1e9 / rate_hz), s.left, s.right, cam, s.disparity)


def held_sequence(frames: Iterator[Frame], hold: int, noise: float, rate_hz: float, start_ns: int,
                  seed: int = 0) -> Iterator[Frame]:
    """A test sequence for temporal stability: each source frame is shown for ``hold`` frames (a static
    scene), each time with fresh Gaussian sensor noise of ``noise`` grey levels (independent per pixel,
    channel, view and frame; seeded), then the next source frame follows (a scene change). The GT
    disparity is the source's, exact in every frame; stamps are re-timed at ``rate_hz``."""
    if hold < 1:
        raise BagError(f"--hold must be >= 1 frame, got {hold}")
    if not noise >= 0:
        raise BagError(f"--noise must be >= 0 grey levels, got {noise}")
    rng = np.random.default_rng(seed)
    k = 0
    for frame in frames:
        for _ in range(hold):
            views = []
            for image in (frame.left, frame.right):
                noisy = image.astype(np.float32) + rng.normal(0.0, noise, image.shape).astype(np.float32)
                views.append(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))
            yield Frame(start_ns + int(k * 1e9 / rate_hz), views[0], views[1], frame.camera, frame.gt_disparity,
                        frame.gt_depth)
            k += 1


def parse_kitti_calib(path: Path, width: int, height: int) -> StereoCamera:
    """KITTI colour-camera projections as a rectified pair: ``P_rect_02``/``P_rect_03`` (2015
    calib_cam_to_cam) or ``P2``/``P3`` (2012 calib)."""
    from calib.camera import CameraInfo

    values = {}
    for line in path.read_text().splitlines():
        key, _, rest = line.partition(":")
        values[key.strip()] = rest
    try:
        left_key, right_key = ("P_rect_02", "P_rect_03") if "P_rect_02" in values else ("P2", "P3")
        p2 = np.array(values[left_key].split(), np.float64).reshape(3, 4)
        p3 = np.array(values[right_key].split(), np.float64).reshape(3, 4)
    except (KeyError, ValueError):
        raise BagError(f"{path}: expected P_rect_02/P_rect_03 (2015) or P2/P3 (2012) projection lines") from None
    # express both relative to camera 2 so that the left projection has P[0,3] = 0
    p3 = p3.copy()
    p3[:, 3] -= p2[:, 3]
    p2 = p2.copy()
    p2[:, 3] = 0
    return StereoCamera(CameraInfo(width, height, p2[:, :3], np.zeros(5), np.eye(3), p2, "plumb_bob", "left"),
                        CameraInfo(width, height, p3[:, :3], np.zeros(5), np.eye(3), p3, "plumb_bob", "right"))


KITTI_LAYOUT = {  # year: (left dir, right dir, GT dir, calib dir, calib file name from the frame id)
    2015: ("image_2", "image_3", "disp_occ_0", "calib_cam_to_cam", lambda frame: f"{frame}.txt"),
    2012: ("colored_0", "colored_1", "disp_occ", "calib", lambda frame: f"{frame}_10.txt"),
}


def frames_from_kitti(root: Path, year: int, rate_hz: float, start_ns: int) -> Iterator[Frame]:
    """KITTI 2015 / 2012 training pairs (``*_10.png``) with their sparse GT and per-frame calibration."""
    from calib.image_io import read_rgb
    from calib.disparity_io import read_kitti_disparity

    left_dir, right_dir, gt_dir, calib_dir, calib_name = KITTI_LAYOUT[year]
    base = root / "training" if (root / "training").is_dir() else root
    for sub in (left_dir, right_dir, gt_dir, calib_dir):
        if not (base / sub).is_dir():
            raise BagError(f"{base}: missing {sub}/ (KITTI {year} training layout)")
    lefts = sorted((base / left_dir).glob("*_10.png"))
    if not lefts:
        raise BagError(f"{base / left_dir}: no *_10.png images")
    for i, lp in enumerate(lefts):
        left, right = read_rgb(lp), read_rgb(base / right_dir / lp.name)
        h, w = left.shape[:2]
        cam = parse_kitti_calib(base / calib_dir / calib_name(lp.stem.split("_")[0]), w, h)
        gt = read_kitti_disparity(base / gt_dir / lp.name)
        yield Frame(start_ns + int(i * 1e9 / rate_hz), left, right, cam, gt)
