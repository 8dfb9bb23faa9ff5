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
from calib.ros_image import EncodingError, image_problem, image_to_array, image_to_rgb8
from calib.rosbag_io import BagError, raw_messages, typestore  # BagError re-exported: the stereo bag tools raise it
from calib.safe_files import load_npy, staged_directory

LEFT, RIGHT = "left/image_rect", "right/image_rect"
LEFT_INFO, RIGHT_INFO = "left/camera_info", "right/camera_info"
GT_DISP, GT_DEPTH = "gt/disparity", "gt/depth"
REQUIRED = (LEFT, RIGHT, LEFT_INFO, RIGHT_INFO)
STORAGES = ("sqlite3", "mcap")


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
    ts = typestore()
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


def _to_array(msg: Any, where: str = "image") -> np.ndarray:
    """An image topic's message as RGB uint8 (any encoding the node takes), a 32FC1 one (GT) as float32 HxW."""
    problem = image_problem(msg)
    if problem is not None:
        raise BagError(f"{where}: {problem}")
    try:
        if msg.encoding == "32FC1":
            return np.array(image_to_array(msg), dtype=np.float32)  # a native-order copy, not a view of the message
        return np.ascontiguousarray(image_to_rgb8(msg))
    except EncodingError as exc:
        raise BagError(f"{where}: {exc}") from None


def _camera(left: Any, right: Any) -> StereoCamera:
    from calib.camera import CameraInfo

    def one(m: Any, name: str) -> CameraInfo:  # camera_info carries no camera name: use the side
        return CameraInfo(m.width, m.height, np.reshape(m.k, (3, 3)), np.asarray(m.d), np.reshape(m.r, (3, 3)),
                          np.reshape(m.p, (3, 4)), m.distortion_model or "plumb_bob", name)

    return StereoCamera(one(left, "left"), one(right, "right"))


def read_frames(path: str | os.PathLike, *, keep_raw: bool = False, warnings: list[str] | None = None) -> Iterator[Frame]:
    """Frames of a stereo bag, grouped by stamp, in stamp order.

    Missing topics raise :class:`BagError`. A truncated bag yields its readable part and adds a
    warning (to ``warnings`` when given); incomplete frames (a topic missing at a stamp) are
    skipped and counted the same way.
    """
    path = Path(path)
    ts = typestore()
    topics, stream = raw_messages(path, warnings)
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
    ts = typestore()
    stamps: dict[str, list[int]] = defaultdict(list)
    problems: list[str] = []
    types: dict[str, str] = {}
    sizes: dict[int, dict[str, tuple[int, int]]] = defaultdict(dict)  # stamp -> topic -> (width, height)
    _, stream = raw_messages(path, problems)
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
