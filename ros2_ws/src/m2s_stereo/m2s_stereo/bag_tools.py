"""ROS 2 bags of stereo pairs (sqlite3 or MCAP) with the pure-Python ``rosbags`` library.

Topics written by ``m2s-bag make``: ``left/image_rect``, ``right/image_rect`` (rgb8),
``left/camera_info``, ``right/camera_info`` and optionally ``gt/disparity`` (32FC1 px, NaN =
unknown) or ``gt/depth`` (32FC1 m, sparse, NaN = unknown), all frames stamped alike. Bags
recorded by ``ros2 bag record`` are read too: leading slashes, a camera's own namespace and topic
names (found by type and a left/right or infra1/infra2 part, or named with ``--left-image`` ...),
CompressedImage, left/right stamps a few ms apart (``read_frames``). ``bag_info`` reports topics,
rates, gaps and stamp problems. No ROS install and no torch needed.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calib import StereoCamera
from calib.checks import check_pose, quaternion_pose
from calib.errors import CalibrationError
from calib.ros_image import EncodingError, image_problem, image_to_array, message_to_rgb8
from calib.rosbag_io import (  # BagError re-exported: the stereo bag tools raise it
    BagError,
    bag_topics,
    raw_messages,
    resolve_topic,
    stamp_ns,
    stereo_image_topics,
    stereo_info_topics,
    typestore,
)
from calib.safe_files import load_npy, read_json, staged_directory, write_json_atomic

LEFT, RIGHT = "left/image_rect", "right/image_rect"
LEFT_INFO, RIGHT_INFO = "left/camera_info", "right/camera_info"
GT_DISP, GT_DEPTH = "gt/disparity", "gt/depth"
REQUIRED = (LEFT, RIGHT, LEFT_INFO, RIGHT_INFO)
STEREO_TOPICS = (*REQUIRED, GT_DISP, GT_DEPTH)
STORAGES = ("sqlite3", "mcap")
PAIR_SLOP_S = 0.01  # the node's default approximate-sync slop (params.SLOP), s


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
    encoding: str = "rgb8"  # of left/right as written: rgb8 (HxWx3 uint8), mono8 (HxW uint8), mono16 (HxW uint16)
    name: str | None = None  # where the pair came from (a folder's file name), for reports; None: the stamp says it


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
              frame_id: str = "left_camera_optical_frame", extra: list[tuple[str, int, Any]] | None = None) -> int:
    """Write frames to a new bag directory; returns the number of frames. ``extra``: more messages
    (topic, log time ns, a ``typestore()`` message), e.g. a LiDAR's point clouds and ``/tf_static``.

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
    ts = typestore()
    plugin = StoragePlugin.SQLITE3 if storage == "sqlite3" else StoragePlugin.MCAP
    names: dict[str, str] = {}
    with staged_directory(path) as stage:
        with Writer(stage, version=8, storage_plugin=plugin) as writer:
            n = _write_frames(writer, ts, frames, frame_id, extra, names)
        if names:  # the source of each pair, for the replay's report (rosbag2 tools ignore the extra file)
            write_json_atomic(stage / SOURCE_NAMES, names)
    return n


SOURCE_NAMES = "source_names.json"  # in a bag folder made by m2s-bag make: {stamp_ns: the pair's file name}


def _write_frames(writer: Any, ts: Any, frames: list[Frame] | Iterator[Frame], frame_id: str,
                  extra: list[tuple[str, int, Any]] | None, names: dict[str, str]) -> int:
    n = 0
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
        items = [(LEFT, _image(ts, h, frame.left, frame.encoding)), (RIGHT, _image(ts, h, frame.right, frame.encoding)),
                 (LEFT_INFO, _info(ts, h, frame.camera.left)), (RIGHT_INFO, _info(ts, h, frame.camera.right))]
        if frame.gt_disparity is not None:
            items.append((GT_DISP, _image(ts, h, frame.gt_disparity.astype(np.float32), "32FC1")))
        if frame.gt_depth is not None:
            items.append((GT_DEPTH, _image(ts, h, frame.gt_depth.astype(np.float32), "32FC1")))
        for topic, msg in items:
            writer.write(conn(topic, msg.__msgtype__), frame.stamp_ns, ts.serialize_cdr(msg, msg.__msgtype__))
        if frame.name:
            names[str(frame.stamp_ns)] = frame.name
        n += 1
    for topic, t, msg in extra or []:
        writer.write(conn(topic, msg.__msgtype__), t, ts.serialize_cdr(msg, msg.__msgtype__))
    return n


def _to_array(msg: Any, where: str = "image", msgtype: str = "sensor_msgs/msg/Image") -> np.ndarray:
    """An image topic's message (Image in any encoding the node takes, or CompressedImage) as RGB uint8, a 32FC1
    one (GT) as float32 HxW."""
    try:
        if msgtype.endswith("/Image") and msg.encoding == "32FC1":
            problem = image_problem(msg)
            if problem is not None:
                raise EncodingError(problem)
            return np.array(image_to_array(msg), dtype=np.float32)  # a native-order copy, not a view of the message
        return message_to_rgb8(msg, msgtype)
    except EncodingError as exc:
        raise BagError(f"{where}: {exc}") from None


def _camera(left: Any, right: Any, baseline_m: float | None = None) -> StereoCamera:
    """The pair's camera from its camera_info messages (``baseline_m``: see :meth:`StereoCamera.with_baseline`)."""
    from calib.camera import CameraInfo

    def one(m: Any, name: str) -> CameraInfo:  # camera_info carries no camera name: use the side
        return CameraInfo(m.width, m.height, np.reshape(m.k, (3, 3)), np.asarray(m.d), np.reshape(m.r, (3, 3)),
                          np.reshape(m.p, (3, 4)), m.distortion_model or "plumb_bob", name)

    return StereoCamera.with_baseline(one(left, "left"), one(right, "right"), baseline_m)


@dataclass(frozen=True)
class TopicNames:
    """The stereo topics a user names (``--left-image`` ...; None: found in the bag by
    :func:`calib.rosbag_io.stereo_image_topics` / :func:`calib.rosbag_io.stereo_info_topics`)."""

    left_image: str | None = None
    right_image: str | None = None
    left_info: str | None = None
    right_info: str | None = None

    @classmethod
    def from_args(cls, args: Any) -> TopicNames:
        return cls(*(getattr(args, f, None) for f in ("left_image", "right_image", "left_info", "right_info")))


def add_topic_flags(parser: Any) -> None:
    """``--left-image/--right-image/--left-info/--right-info``: the flags of every command that reads a stereo bag."""
    for side in ("left", "right"):
        parser.add_argument(f"--{side}-image", metavar="TOPIC",
                            help=f"the {side} image topic (Image or CompressedImage; default: left/image_rect, else the "
                                 f"one image topic with a '{side}'{' or infra1' if side == 'left' else ' or infra2'} "
                                 "part in its name)")
    for side in ("left", "right"):
        parser.add_argument(f"--{side}-info", metavar="TOPIC",
                            help=f"the {side} camera_info topic (default: {side}/camera_info, else the one beside the "
                                 f"{side} image topic)")


def stereo_topics(path: str | os.PathLike, names: TopicNames | None = None,
                  topics: dict[str, str] | None = None) -> dict[str, str]:
    """{the bag's topic: its role} (:data:`LEFT`, :data:`RIGHT`, :data:`LEFT_INFO`, :data:`RIGHT_INFO`, and
    :data:`GT_DISP` / :data:`GT_DEPTH` where present): leading slash or not, any namespace, named or found."""
    names = names or TopicNames()
    topics = bag_topics(Path(path)) if topics is None else topics
    where = str(path)
    images = stereo_image_topics(topics, where, names.left_image, names.right_image, default=(LEFT, RIGHT))
    infos = stereo_info_topics(topics, where, images, names.left_info, names.right_info, default=(LEFT_INFO, RIGHT_INFO))
    if images[0] == images[1] or infos[0] == infos[1]:
        raise BagError(f"{where}: the left and right topics must differ (images {images[0]}, {images[1]}; camera_info "
                       f"{infos[0]}, {infos[1]})")
    mapping = {images[0]: LEFT, images[1]: RIGHT, infos[0]: LEFT_INFO, infos[1]: RIGHT_INFO}
    for gt in (GT_DISP, GT_DEPTH):
        if (found := resolve_topic(topics, gt)) is not None:
            mapping[found] = gt
    return mapping


def _source_names(path: Path) -> dict[str, str]:
    """{stamp_ns: file name} that m2s-bag make recorded beside a bag made from a folder ({} for any other bag)."""
    file = path / SOURCE_NAMES if path.is_dir() else None
    if file is None or not file.is_file():
        return {}
    try:
        names = read_json(file, "source names", BagError)
    except BagError:
        return {}
    return {str(k): str(v) for k, v in names.items()} if isinstance(names, dict) else {}


def _nearest(stamps: np.ndarray, t: int, slop_ns: int) -> int | None:
    """Index of the stamp in sorted ``stamps`` nearest to ``t`` within ``slop_ns`` (ties: the earlier), or None."""
    if not stamps.size:
        return None
    i = int(np.searchsorted(stamps, t))
    best = min((j for j in (i - 1, i) if 0 <= j < stamps.size), key=lambda j: (abs(int(stamps[j]) - t), j))
    return best if abs(int(stamps[best]) - t) <= slop_ns else None


def read_frames(path: str | os.PathLike, *, keep_raw: bool = False, warnings: list[str] | None = None,
                names: TopicNames | None = None, slop_s: float = PAIR_SLOP_S,
                baseline_m: float | None = None) -> Iterator[Frame]:
    """Frames of a stereo bag in left-stamp order: each left image with the right image nearest in stamp
    (exact, or within ``slop_s`` as the node's approximate sync pairs them; each right used once) and the
    camera_info nearest to each; GT at the left stamp.

    Topics are found by :func:`stereo_topics`; ``baseline_m`` stands in for a driver's missing or wrongly signed
    P_R[0,3] (:meth:`calib.StereoCamera.from_msgs`). Notes go to ``warnings`` (when given): pairs matched
    approximately (with their stamp offsets), messages repeating a stamp (the first is kept), a truncated
    bag (its readable part is used), images without a partner (skipped). ``keep_raw`` keeps each message's
    CDR bytes by role for a replay over DDS; a CompressedImage is kept as the Image it decodes to.
    """
    path = Path(path)
    ts = typestore()
    mapping = stereo_topics(path, names, bag_topics(path))
    source_names = _source_names(path)
    _, stream = raw_messages(path, warnings)
    by_role: dict[str, dict[int, tuple[Any, bytes, str]]] = defaultdict(dict)
    undecodable: dict[str, int] = {}
    repeated: dict[str, int] = {}
    for topic, msgtype, raw in stream:
        role = mapping.get(topic)
        if role is None:  # a robot's bag holds more (LiDAR, /tf, IMU...): not part of a frame
            continue
        try:
            msg = ts.deserialize_cdr(raw, msgtype)
        except Exception:  # noqa: BLE001  (a cut message at the end of a salvaged file)
            undecodable[topic] = undecodable.get(topic, 0) + 1
            continue
        stamp = stamp_ns(msg)
        if stamp in by_role[role]:
            repeated[topic] = repeated.get(topic, 0) + 1
            continue
        by_role[role][stamp] = (msg, raw, msgtype)
    note = warnings.append if warnings is not None else (lambda _text: None)
    if undecodable:
        note("message(s) that cannot be decoded (cut or damaged) skipped: "
             + ", ".join(f"{n} on {t}" for t, n in undecodable.items()))
    if repeated:
        note("message(s) repeating a stamp already seen (a driver bug, a bag merged twice), the first kept: "
             + ", ".join(f"{n} on {t}" for t, n in repeated.items()))
    slop_ns = int(round(slop_s * 1e9))
    sorted_stamps = {role: np.array(sorted(by_role[role]), np.int64) for role in (RIGHT, LEFT_INFO, RIGHT_INFO)}
    used: set[int] = set()
    offsets: list[int] = []
    lacking: dict[str, int] = {}
    role_topic = {role: topic for topic, role in mapping.items()}
    for stamp in sorted(by_role[LEFT]):
        j = _nearest(sorted_stamps[RIGHT], stamp, slop_ns)
        if j is not None and int(sorted_stamps[RIGHT][j]) in used:  # taken by an earlier left: the next free one
            free = sorted_stamps[RIGHT][[int(x) not in used for x in sorted_stamps[RIGHT]]]
            k = _nearest(free, stamp, slop_ns)
            j = None if k is None else int(np.searchsorted(sorted_stamps[RIGHT], free[k]))
        found = {LEFT: stamp, RIGHT: None if j is None else int(sorted_stamps[RIGHT][j])}
        for info, ref in ((LEFT_INFO, stamp), (RIGHT_INFO, found[RIGHT] if found[RIGHT] is not None else stamp)):
            k = _nearest(sorted_stamps[info], ref, slop_ns)
            found[info] = None if k is None else int(sorted_stamps[info][k])
        missing = [role for role, t in found.items() if t is None]
        if missing:
            for role in missing:
                lacking[role_topic[role]] = lacking.get(role_topic[role], 0) + 1
            continue
        used.add(found[RIGHT])
        parts = {role: by_role[role][t] for role, t in found.items()}
        for gt in (GT_DISP, GT_DEPTH):
            if stamp in by_role.get(gt, {}):
                parts[gt] = by_role[gt][stamp]
        offsets.append(found[RIGHT] - stamp)
        try:
            arrays = {role: _to_array(parts[role][0], f"frame {stamp}: {role_topic[role]}", parts[role][2])
                      if role in parts else None for role in (LEFT, RIGHT, GT_DISP, GT_DEPTH)}
            camera = _camera(parts[LEFT_INFO][0], parts[RIGHT_INFO][0], baseline_m)
        except (BagError, CalibrationError) as exc:
            note(f"skipped {exc}" if isinstance(exc, BagError) else f"skipped frame {stamp}: {exc}")
            continue
        raw = {}
        if keep_raw:
            for role, (msg, data, msgtype) in parts.items():
                if msgtype.endswith("CompressedImage"):  # the node subscribes to Image: replay what it decodes to
                    data = bytes(ts.serialize_cdr(_image(ts, msg.header, arrays[role], "rgb8"), "sensor_msgs/msg/Image"))
                raw[role] = data
        yield Frame(stamp, arrays[LEFT], arrays[RIGHT], camera, arrays[GT_DISP], arrays[GT_DEPTH], raw,
                    name=source_names.get(str(stamp)))
    unpaired_right = len(by_role[RIGHT]) - len(used)
    if lacking:
        note(f"{sum(lacking.values())} incomplete frame(s) skipped (no message within {1e3 * slop_s:g} ms of the "
             f"left stamp on {', '.join(sorted(lacking))})")
    if unpaired_right > 0 and by_role[LEFT]:
        note(f"{unpaired_right} right image(s) without a left one within {1e3 * slop_s:g} ms: not used")
    moved = [abs(o) for o in offsets if o]
    if moved:
        note(f"{len(moved)} of {len(offsets)} pair(s) matched approximately, as the node's approximate sync would "
             f"(left/right stamps differ by median {np.median(moved) / 1e6:.1f} ms, max {max(moved) / 1e6:.1f} ms; "
             f"slop {1e3 * slop_s:g} ms)")


def bag_info(path: str | os.PathLike, names: TopicNames | None = None) -> dict[str, Any]:
    """Topics with message counts and rates, stamp gaps, the stereo topics found (``stereo_topics``), and
    problems (stereo topics that cannot be found, unequal counts, non-monotonic stamps)."""
    path = Path(path)
    ts = typestore()
    stamps: dict[str, list[int]] = defaultdict(list)
    problems: list[str] = []
    types: dict[str, str] = {}
    sizes: dict[int, dict[str, tuple[int, int]]] = defaultdict(dict)  # stamp -> role -> (width, height)
    try:
        mapping = stereo_topics(path, names, bag_topics(path))
    except BagError as exc:
        mapping = {}
        problems.append(str(exc))
    _, stream = raw_messages(path, problems)
    for topic, msgtype, raw in stream:
        types[topic] = msgtype
        try:
            msg = ts.deserialize_cdr(raw, msgtype)
        except Exception:  # noqa: BLE001
            problems.append(f"{topic}: a message could not be decoded")
            continue
        if not hasattr(msg, "header"):  # /tf_static and the like: counted, no stamp of their own
            stamps.setdefault(topic, [])
            continue
        stamp = stamp_ns(msg)
        stamps[topic].append(stamp)
        role = mapping.get(topic)
        if role in (LEFT, RIGHT, LEFT_INFO, RIGHT_INFO) and not msgtype.endswith("CompressedImage"):
            sizes[stamp][role] = (int(msg.width), int(msg.height))
            if role in (LEFT, RIGHT) and (problem := image_problem(msg)) is not None:
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
    stereo = {role: topic for topic, role in mapping.items()}
    counts = {topics[t]["count"] for r, t in stereo.items() if r in REQUIRED and t in topics}
    if len(counts) > 1:
        problems.append("unequal message counts: " + ", ".join(f"{stereo[r]}={topics[stereo[r]]['count']}"
                                                              for r in REQUIRED if stereo.get(r) in topics))
    return {"bag": str(path), "topics": topics, "stereo_topics": stereo, "problems": problems}


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

FOLDER_LAYOUTS = """folder:DIR layouts (left and right paired by NAME; any image format OpenCV reads):
  DIR/left/NAME.png + DIR/right/NAME.png [+ DIR/disparity/NAME.(npy|pfm|png)]
  DIR/NAME_left.png + DIR/NAME_right.png [+ DIR/NAME_disparity.*]   (also NAME-left, left_NAME, LEFT...)"""
_SIDE = re.compile(r"^(?:(?P<a>.+?)[_-](?P<sa>left|right)|(?P<sb>left|right)[_-](?P<b>.+))$", re.IGNORECASE)
BAG_ENCODINGS = ("auto", "rgb8", "mono8", "mono16")


def folder_pairs(root: Path) -> list[tuple[str, Path, Path, Path | None]]:
    """(name, left, right, disparity or None) of a folder in one of :data:`FOLDER_LAYOUTS`, by name."""
    files = lambda d: sorted(p for p in d.glob("*") if p.is_file() and not p.name.startswith("."))  # noqa: E731
    if (root / "left").is_dir() or (root / "right").is_dir():
        lefts = files(root / "left") if (root / "left").is_dir() else []
        if not lefts:
            raise BagError(f"{root}/left has no images\n{FOLDER_LAYOUTS}")
        disp = {p.stem: p for p in files(root / "disparity")} if (root / "disparity").is_dir() else {}
        rights = {p.stem: p for p in files(root / "right")} if (root / "right").is_dir() else {}
        out = []
        for lp in lefts:
            if lp.stem not in rights:
                raise BagError(f"{lp.name} has no partner in {root / 'right'}")
            out.append((lp.stem, lp, rights[lp.stem], disp.get(lp.stem)))
        return out
    sides: dict[str, dict[str, Path]] = defaultdict(dict)
    disp = {}
    for p in files(root):
        if p.stem.lower().endswith(("_disparity", "-disparity")):
            disp[p.stem[: -len("_disparity")]] = p
            continue
        m = _SIDE.match(p.stem)
        if m:
            name, side = (m["a"], m["sa"]) if m["a"] is not None else (m["b"], m["sb"])
            sides[name][side.lower()] = p
    if not sides:
        raise BagError(f"{root} holds no stereo pairs\n{FOLDER_LAYOUTS}")
    lonely = [f"{s[next(iter(s))].name}" for s in sides.values() if len(s) != 2]
    if lonely:
        raise BagError(f"{lonely[0]} has no partner in {root} ({len(lonely)} file(s) without one)")
    return [(n, s["left"], s["right"], disp.get(n)) for n, s in sorted(sides.items())]


def read_bag_image(path: Path, encoding: str) -> tuple[np.ndarray, str]:
    """An image for a bag in ``encoding`` (``auto``: mono8 / mono16 for grey images, 8 or 16 bit, as the
    camera's driver publishes them; rgb8 otherwise), and the encoding chosen."""
    import cv2

    from calib.image_io import read_rgb, read_unchanged

    if encoding == "rgb8":
        return read_rgb(path), "rgb8"
    raw = read_unchanged(path)
    grey = None
    if raw.ndim == 2:
        grey = raw
    elif raw.shape[2] == 1 or (raw.shape[2] >= 3 and np.array_equal(raw[..., 0], raw[..., 1])
                                and np.array_equal(raw[..., 1], raw[..., 2])):
        grey = raw[..., 0]
    if encoding == "auto":
        if grey is None:
            return read_rgb(path), "rgb8"
        encoding = "mono16" if grey.dtype == np.uint16 else "mono8"
    if encoding == "mono16":
        if grey is None or grey.dtype != np.uint16:
            raise BagError(f"{path}: --encoding mono16 needs 16-bit grey images; this one is "
                           f"{'colour' if grey is None else str(grey.dtype)}")
        return np.ascontiguousarray(grey), "mono16"
    if grey is None:  # mono8 from colour: what a mono camera would have seen
        grey = cv2.cvtColor(read_rgb(path), cv2.COLOR_RGB2GRAY)
    elif grey.dtype == np.uint16:
        grey = (grey >> 8).astype(np.uint8)
    elif grey.dtype != np.uint8:
        raise BagError(f"{path}: unsupported pixel type {grey.dtype} for mono8")
    return np.ascontiguousarray(grey), "mono8"


def frames_from_folder(root: Path, camera: StereoCamera | None, rate_hz: float, start_ns: int,
                       encoding: str = "rgb8") -> Iterator[Frame]:
    """Pairs of a folder in one of :data:`FOLDER_LAYOUTS`. ``encoding`` (:data:`BAG_ENCODINGS`): ``auto`` is
    decided by the first pair and kept for all (a colour frame in a grey sequence is an error, not a silent
    conversion)."""
    if encoding not in BAG_ENCODINGS:
        raise BagError(f"--encoding must be one of {', '.join(BAG_ENCODINGS)}, got '{encoding}'")
    chosen = None
    for i, (_, lp, rp, dp) in enumerate(folder_pairs(root)):
        views = []
        for path in (lp, rp):
            image, enc = read_bag_image(path, encoding)
            chosen = chosen or enc
            if enc != chosen:
                raise BagError(f"{path.name} is {enc} but the first image was {chosen}: pass --encoding {chosen} or rgb8 "
                               "to convert every image to one encoding")
            views.append(image)
        left, right = views
        cam = camera or _default_camera(left)
        gt = None
        if dp is not None:
            gt = load_npy(dp, "disparity", BagError).astype(np.float32) if dp.suffix == ".npy" else _read_disp_file(dp)
        yield Frame(start_ns + int(i * 1e9 / rate_hz), left, right, cam, gt, encoding=chosen, name=lp.name)


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
                top = float(np.iinfo(image.dtype).max)  # 255, or 65535 for mono16 (noise in grey levels of 8 bits)
                sigma = noise * (top / 255.0)
                noisy = image.astype(np.float32) + rng.normal(0.0, sigma, image.shape).astype(np.float32)
                views.append(np.clip(np.rint(noisy), 0, top).astype(image.dtype))
            yield Frame(start_ns + int(k * 1e9 / rate_hz), views[0], views[1], frame.camera, frame.gt_disparity,
                        frame.gt_depth, encoding=frame.encoding)
            k += 1


LIDAR_TOPIC, LIDAR_FRAME = "lidar/points", "lidar"


def simulated_lidar(frames: Iterator[Frame], beams: int = 32, seed: int = 0) -> Iterator[tuple[Frame, np.ndarray]]:
    """Each frame with the points a LiDAR at the left camera would return: the GT disparity back-projected
    on ``beams`` scan rows (every pixel of those rows, 1 px jitter per row), in the camera's optical
    frame (the LiDAR frame ``lidar`` coincides with it: an identity ``/tf_static``). For demos and tests
    of ``m2s-bag labels`` from a bag with exact GT."""
    rng = np.random.default_rng(seed)
    for frame in frames:
        if frame.gt_disparity is None:
            raise BagError("--simulate-lidar needs a source with GT disparity (synth: or folder: with disparity/)")
        h, w = frame.gt_disparity.shape
        rows = np.clip(np.round(np.linspace(h * 0.25, h - 1, beams) + rng.uniform(-1, 1, beams)), 0, h - 1).astype(int)
        mask = np.zeros((h, w), bool)
        mask[np.unique(rows)] = True
        depth = frame.camera.disparity_to_depth(np.where(mask, frame.gt_disparity, np.nan).astype(np.float32))
        points = frame.camera.depth_to_points(depth, organized=False).points
        yield frame, np.asarray(points, np.float32).reshape(-1, 3)


def lidar_messages(clouds: list[tuple[int, np.ndarray]]) -> list[tuple[str, int, Any]]:
    """``write_bag(extra=...)`` messages: PointCloud2 (x, y, z float32) on :data:`LIDAR_TOPIC` per (stamp, Nx3)
    and an identity ``/tf_static`` from the camera frame to :data:`LIDAR_FRAME`."""
    ts = typestore()
    T = ts.types
    out = []
    for stamp, points in clouds:
        pts = np.ascontiguousarray(points, np.float32)
        fields = [T["sensor_msgs/msg/PointField"](name=n, offset=4 * i, datatype=7, count=1) for i, n in enumerate("xyz")]
        msg = T["sensor_msgs/msg/PointCloud2"](header=_header(ts, stamp, LIDAR_FRAME), height=1, width=len(pts),
                                                fields=fields, is_bigendian=False, point_step=12, row_step=12 * len(pts),
                                                data=np.frombuffer(pts.tobytes(), np.uint8), is_dense=True)
        out.append((LIDAR_TOPIC, stamp, msg))
    tf = T["geometry_msgs/msg/TransformStamped"](
        header=_header(ts, 0, "left_camera_optical_frame"), child_frame_id=LIDAR_FRAME,
        transform=T["geometry_msgs/msg/Transform"](translation=T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0),
                                                   rotation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)))
    return out + [("/tf_static", clouds[0][0] if clouds else 0, T["tf2_msgs/msg/TFMessage"](transforms=[tf]))]


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


# -- LiDAR labels ---------------------------------------------------------------------------------------

_POINT_TYPES = {7: "<f4", 8: "<f8"}  # sensor_msgs/PointField FLOAT32, FLOAT64


def cloud_points(msg: Any, where: str = "point cloud") -> np.ndarray:
    """x, y, z of a ``sensor_msgs/PointCloud2`` as Nx3 float64 (NaN points dropped). The layout is checked
    first: every field inside ``point_step``, ``row_step >= width * point_step``, data as long as declared."""
    fields = {f.name: f for f in msg.fields}
    missing = [n for n in ("x", "y", "z") if n not in fields]
    if missing:
        raise BagError(f"{where} has no {'/'.join(missing)} field (fields: {', '.join(fields) or 'none'}); "
                       "a LiDAR cloud needs x, y, z")
    for n in ("x", "y", "z"):
        if fields[n].datatype not in _POINT_TYPES:
            raise BagError(f"{where}: field {n} has datatype {fields[n].datatype}; x, y, z must be FLOAT32 or FLOAT64")
    width, height, step, row_step = (int(msg.width), int(msg.height), int(msg.point_step), int(msg.row_step))
    for n in ("x", "y", "z"):
        end = int(fields[n].offset) + np.dtype(_POINT_TYPES[fields[n].datatype]).itemsize
        if int(fields[n].offset) < 0 or end > step:
            raise BagError(f"{where}: field {n} at offset {fields[n].offset} does not fit in point_step {step} bytes "
                           "(a damaged or mis-declared cloud)")
    if row_step < width * step:
        raise BagError(f"{where}: row_step {row_step} is smaller than width {width} x point_step {step}: rows would "
                       "overlap (a damaged or mis-declared cloud)")
    order = ">" if msg.is_bigendian else "<"
    dtype = np.dtype({"names": ["x", "y", "z"], "offsets": [fields[n].offset for n in ("x", "y", "z")],
                      "formats": [order + _POINT_TYPES[fields[n].datatype][1:] for n in ("x", "y", "z")],
                      "itemsize": step})
    data = np.asarray(msg.data, np.uint8)
    if data.size < row_step * height:
        raise BagError(f"{where}: data is {data.size} bytes, shorter than {height} rows x row_step {row_step} bytes")
    rows = data[: row_step * height].reshape(height, row_step)
    rows = np.ascontiguousarray(rows[:, : width * step])
    raw = rows.reshape(-1).view(dtype)
    pts = np.stack([raw["x"], raw["y"], raw["z"]], -1).astype(np.float64)
    return pts[np.isfinite(pts).all(1)]


def _quaternion_matrix(t: Any, q: Any, name: str = "a transform") -> np.ndarray:
    try:
        return quaternion_pose(t, q, name)
    except CalibrationError as exc:
        raise BagError(str(exc)) from None


def extrinsic_from_yaml(path: str | os.PathLike) -> np.ndarray:
    """``T_cam_lidar`` (LiDAR -> left camera optical frame) from YAML: ``T_cam_lidar: 4x4 rows`` or
    ``translation: [x, y, z]`` + ``rotation: [qx, qy, qz, qw]``; checked by :func:`calib.checks.check_pose`."""
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise BagError(f"cannot read the extrinsic {path}: it is not a text (YAML) file") from None
    except (OSError, yaml.YAMLError) as exc:
        raise BagError(f"cannot read the extrinsic {path}: {exc}") from None
    if not isinstance(doc, dict) or not ("T_cam_lidar" in doc or {"translation", "rotation"} <= set(doc)):
        raise BagError(f"{path}: expected T_cam_lidar (4x4) or translation + rotation (quaternion x, y, z, w)")
    try:
        if "T_cam_lidar" in doc:
            return check_pose(doc["T_cam_lidar"], "T_cam_lidar")
        return quaternion_pose(doc["translation"], doc["rotation"], "the extrinsic")
    except CalibrationError as exc:
        raise BagError(f"{path}: {exc} (expected T_cam_lidar: 4x4, or translation: [x, y, z] and rotation: "
                       "[qx, qy, qz, qw], LiDAR -> camera optical frame)") from None


def extrinsic_from_tf(transforms: list[Any], camera_frame: str, lidar_frame: str) -> np.ndarray:
    """``T_cam_lidar`` chained through ``/tf_static`` transforms (parent -> child, either direction)."""
    edges: dict[str, list[tuple[str, np.ndarray]]] = defaultdict(list)
    for t in transforms:
        T = _quaternion_matrix([t.transform.translation.x, t.transform.translation.y, t.transform.translation.z],
                               [t.transform.rotation.x, t.transform.rotation.y, t.transform.rotation.z,
                                t.transform.rotation.w],
                               f"/tf_static {t.header.frame_id} -> {t.child_frame_id}")  # child -> parent
        parent, child = t.header.frame_id.strip("/"), t.child_frame_id.strip("/")
        edges[child].append((parent, T))
        edges[parent].append((child, np.linalg.inv(T)))
    start, goal = lidar_frame.strip("/"), camera_frame.strip("/")
    todo, seen = [(start, np.eye(4))], {start}
    while todo:
        frame, T = todo.pop()
        if frame == goal:
            try:
                return check_pose(T, f"the /tf_static chain {lidar_frame} -> {camera_frame}")
            except CalibrationError as exc:
                raise BagError(str(exc)) from None
        for nxt, step in edges[frame]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append((nxt, step @ T))
    frames = sorted(edges) or ["none"]
    raise BagError(f"/tf_static has no chain from the LiDAR frame '{lidar_frame}' to the camera frame "
                   f"'{camera_frame}' (frames: {', '.join(frames)}); pass --extrinsic YAML")


def lidar_labels(bag: str | os.PathLike, cloud_topic: str, out: str | os.PathLike, extrinsic: np.ndarray | None = None,
                 max_dt: float = 0.05, window: int = 5, progress: bool = True,
                 names: TopicNames | None = None, baseline_m: float | None = None) -> dict[str, Any]:
    """Sparse disparity GT for the stereo pairs of ``bag`` from its LiDAR topic: a ``folder`` dataset
    (``left/``, ``right/``, ``disparity/`` KITTI 16-bit PNGs, value / 256 px, 0 = no label) that
    ``m2s-train finetune --dataset folder:OUT`` reads, with ``labels.json`` per frame.

    Each pair takes the cloud nearest in time (within ``max_dt`` s; pairs without one are skipped and
    counted), moved into the left camera by ``extrinsic`` (``T_cam_lidar``) or the bag's ``/tf_static``
    (LiDAR frame -> the images' frame), projected by :meth:`calib.StereoCamera.lidar_to_disparity` with
    its z-buffer test (points the LiDAR sees but the camera does not, behind foreground edges, are
    dropped). Written under a staging name: nothing half-made survives a failure.
    """
    import cv2
    from tqdm import tqdm

    from calib.safe_files import write_json_atomic

    bag, out = Path(bag), Path(out)
    if out.exists():
        raise BagError(f"{out} exists: choose a new directory (labels are never overwritten)")
    ts = typestore()
    topics, stream = raw_messages(bag, None)
    name = resolve_topic(topics, cloud_topic)
    if name is None:
        raise BagError(f"{bag} has no topic '{cloud_topic}' (it has {', '.join(sorted(topics)) or 'none'})")
    clouds: list[tuple[int, Any]] = []
    transforms: list[Any] = []
    for topic, msgtype, raw in stream:
        if topic == name:
            if msgtype != "sensor_msgs/msg/PointCloud2":
                raise BagError(f"topic '{name}' carries {msgtype}, not sensor_msgs/msg/PointCloud2")
            msg = ts.deserialize_cdr(raw, msgtype)
            clouds.append((int(msg.header.stamp.sec) * 10**9 + int(msg.header.stamp.nanosec), msg))
        elif topic.strip("/") == "tf_static" and msgtype == "tf2_msgs/msg/TFMessage":
            transforms += list(ts.deserialize_cdr(raw, msgtype).transforms)
    if not clouds:
        raise BagError(f"topic '{name}' of {bag} has no message")
    stamps = np.asarray([c[0] for c in clouds], np.int64)
    rows: list[dict[str, Any]] = []
    skipped = 0
    total_front = total_points = total_raw = 0
    with staged_directory(out) as stage:
        for sub in ("left", "right", "disparity"):
            (stage / sub).mkdir(parents=True)
        for k, frame in enumerate(tqdm(read_frames(bag, keep_raw=True, names=names, baseline_m=baseline_m), desc="labels", unit="pair", disable=not progress)):
            i = int(np.argmin(np.abs(stamps - frame.stamp_ns)))
            if abs(int(stamps[i]) - frame.stamp_ns) > max_dt * 1e9:
                skipped += 1
                continue
            cloud = clouds[i][1]
            points = cloud_points(cloud, f"{name} at {stamps[i]}")
            if extrinsic is None:
                camera_frame = ts.deserialize_cdr(frame.raw[LEFT], "sensor_msgs/msg/Image").header.frame_id
                extrinsic = extrinsic_from_tf(transforms, camera_frame, cloud.header.frame_id)
            try:
                labels = frame.camera.lidar_to_disparity(points, extrinsic, window=window)
            except CalibrationError as exc:
                raise BagError(f"cannot label the pair at {frame.stamp_ns}: {exc}") from None
            total_raw += int(cloud.width) * int(cloud.height)
            total_points += len(points)
            total_front += len(points) - labels.behind
            stem = f"{frame.stamp_ns:019d}"
            cv2.imwrite(str(stage / "left" / f"{stem}.png"), cv2.cvtColor(frame.left, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(stage / "right" / f"{stem}.png"), cv2.cvtColor(frame.right, cv2.COLOR_RGB2BGR))
            d = labels.disparity
            kitti = np.where(np.isfinite(d) & (d > 0), np.clip(np.rint(d * 256.0), 1, 65535), 0).astype(np.uint16)
            cv2.imwrite(str(stage / "disparity" / f"{stem}.png"), kitti)
            rows.append({"frame": stem, "cloud_stamp_ns": int(stamps[i]), "points": len(points),
                         "behind_camera": labels.behind, "too_near": labels.too_near, "in_image": labels.projected,
                         "hidden": labels.hidden,
                         "labels": int(np.isfinite(d).sum()), "density": float(np.isfinite(d).mean())})
        if total_points and total_front < 0.01 * total_points:
            raise BagError(f"only {total_front} of {total_points} LiDAR points are in front of the camera: the "
                           "extrinsic puts the LiDAR behind it (inverted? it must map LiDAR points into the camera "
                           "frame, T_cam_lidar)")
        if not rows:
            raise BagError(f"no stereo pair of {bag} has a cloud within {max_dt} s ({skipped} pair(s) skipped)")
        if not any(r["labels"] for r in rows):  # nothing to train on: say why instead of writing an empty dataset
            near = sum(r["too_near"] for r in rows)
            raise BagError(f"no LiDAR label in any of the {len(rows)} pair(s): the clouds hold {total_raw} points, "
                           f"{total_points} of them finite, {total_front} in front of the camera ({near} nearer "
                           f"than f B / width), none inside the image; check the cloud topic and the extrinsic")
        summary = {"bag": str(bag), "cloud_topic": name, "frames": len(rows), "skipped_no_cloud": skipped,
                   "extrinsic_T_cam_lidar": np.asarray(extrinsic).tolist(), "per_frame": rows,
                   "density": float(np.mean([r["density"] for r in rows]))}
        write_json_atomic(stage / "labels.json", summary)
    return summary
