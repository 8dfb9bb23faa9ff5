"""LiDAR labels from a bag, exactly: GT disparity of a known scene back-projected at LiDAR-like rows,
moved into a LiDAR frame by a known extrinsic, written as PointCloud2 into a bag, recovered by
``m2s-bag labels``; points the LiDAR sees behind a foreground box but the camera does not are
removed (count checked against ray casting); bad input is one clear error."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("rosbags", reason="rosbags is not installed: pip install 'mono2stereo[ros]'")

from calib import StereoCamera  # noqa: E402
from m2s_stereo.bag_tools import Frame, _header, typestore, write_bag  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
H, W = 96, 160
CAMERA = StereoCamera.ideal(W, H, focal_px=120.0, baseline_m=0.2)
BOX = (-0.4, 0.4, -0.3, 0.3, 3.0)  # x0, x1, y0, y1 (m), Z: a fronto-parallel box in front of a wall
WALL_Z = 8.0
# LiDAR -> camera: the LiDAR sits 0.5 m to the right of the camera and 0.1 m above, axes rotated
# (x forward, y left, z up: the ROS body convention) plus a small yaw, as real mounts are
YAW = np.deg2rad(3.0)
R_CAM_BODY = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])  # body (x fwd, y left, z up) -> optical
R_YAW = np.array([[np.cos(YAW), -np.sin(YAW), 0], [np.sin(YAW), np.cos(YAW), 0], [0, 0, 1]])
T_CAM_LIDAR = np.eye(4)
T_CAM_LIDAR[:3, :3] = R_CAM_BODY @ R_YAW
T_CAM_LIDAR[:3, 3] = [0.5, -0.1, 0.0]  # the LiDAR origin in the camera frame


def _scene_rays(origin: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """First hit (camera frame) of rays from ``origin`` on the box or the wall."""
    x0, x1, y0, y1, zb = BOX
    hits = []
    for d in directions:
        t_box = (zb - origin[2]) / d[2]
        p = origin + t_box * d
        if t_box > 0 and x0 <= p[0] <= x1 and y0 <= p[1] <= y1:
            hits.append(p)
        else:
            hits.append(origin + (WALL_Z - origin[2]) / d[2] * d)
    return np.asarray(hits)


def _camera_depth() -> np.ndarray:
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    dirs = np.stack([(u - CAMERA.cx) / CAMERA.fx, (v - CAMERA.cy) / CAMERA.fy, np.ones_like(u)], -1).reshape(-1, 3)
    return _scene_rays(np.zeros(3), dirs)[:, 2].reshape(H, W)


def _lidar_sweep() -> tuple[np.ndarray, np.ndarray]:
    """Points of a 16-beam sweep from the LiDAR origin, in the camera frame and in the LiDAR frame."""
    origin = T_CAM_LIDAR[:3, 3]
    elevations = np.deg2rad(np.linspace(-12, 12, 16))
    azimuths = np.deg2rad(np.linspace(-40, 40, 800))
    el, az = np.meshgrid(elevations, azimuths, indexing="ij")
    body = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1).reshape(-1, 3)
    dirs = body @ T_CAM_LIDAR[:3, :3].T  # in the camera frame
    cam = _scene_rays(origin, dirs)
    lidar = (cam - origin) @ T_CAM_LIDAR[:3, :3]  # camera -> LiDAR frame (inverse rotation)
    return cam, lidar


def _cloud(ts, stamp: int, points: np.ndarray, frame_id: str = "lidar", fields=("x", "y", "z")):
    T = ts.types
    pf = [T["sensor_msgs/msg/PointField"](name=n, offset=4 * i, datatype=7, count=1) for i, n in enumerate(fields)]
    data = np.ascontiguousarray(points, np.float32).tobytes()
    return T["sensor_msgs/msg/PointCloud2"](header=_header(ts, stamp, frame_id), height=1, width=len(points), fields=pf,
                                             is_bigendian=False, point_step=12, row_step=12 * len(points),
                                             data=np.frombuffer(data, np.uint8), is_dense=True)


def _tf_static(ts, T: np.ndarray, parent: str, child: str):
    """A /tf_static message with ``T`` (child -> parent)."""
    R = T[:3, :3]
    w = np.sqrt(max(0.0, 1 + R[0, 0] + R[1, 1] + R[2, 2])) / 2
    x = (R[2, 1] - R[1, 2]) / (4 * w)
    y = (R[0, 2] - R[2, 0]) / (4 * w)
    z = (R[1, 0] - R[0, 1]) / (4 * w)
    M = ts.types
    tf = M["geometry_msgs/msg/TransformStamped"](
        header=_header(ts, 0, parent), child_frame_id=child,
        transform=M["geometry_msgs/msg/Transform"](translation=M["geometry_msgs/msg/Vector3"](x=T[0, 3], y=T[1, 3], z=T[2, 3]),
                                                   rotation=M["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w)))
    return M["tf2_msgs/msg/TFMessage"](transforms=[tf])


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    root = tmp_path_factory.mktemp("lidar")
    rng = np.random.default_rng(0)
    left = rng.integers(0, 255, (H, W, 3), np.uint8)
    ts = typestore()
    cam_pts, lidar_pts = _lidar_sweep()
    frames = [Frame(10**9 + k * 10**8, left, left, CAMERA) for k in range(2)]
    extra = [("lidar/points", 10**9 + k * 10**8 + 2 * 10**6, _cloud(ts, 10**9 + k * 10**8 + 2 * 10**6, lidar_pts))
             for k in range(2)]
    tf = _tf_static(ts, T_CAM_LIDAR, "left_camera_optical_frame", "lidar")
    write_bag(root / "bag", frames, storage="mcap", extra=extra + [("/tf_static", 10**9, tf)])
    # a copy with the x/y/z fields renamed, and an extrinsic YAML
    bad = [("lidar/points", 10**9, _cloud(ts, 10**9, lidar_pts, fields=("a", "b", "c")))]
    write_bag(root / "bag_nofields", frames[:1], storage="mcap", extra=bad)
    write_bag(root / "bag_notf", frames[:1], storage="mcap", extra=extra[:1])
    (root / "extrinsic.yaml").write_text("T_cam_lidar: " + json.dumps(T_CAM_LIDAR.tolist()) + "\n")
    inverted = np.linalg.inv(T_CAM_LIDAR)
    inverted[:3, 3] = [0.0, 0.0, -50.0]  # the LiDAR 50 m behind the camera, looking away
    (root / "behind.yaml").write_text("T_cam_lidar: " + json.dumps(inverted.tolist()) + "\n")
    # geometry that is not geometry (round 3): a mirror, NaN, a kilometre-scale translation, a binary file
    mirrored = T_CAM_LIDAR.copy()
    mirrored[:3, 0] *= -1  # det R = -1: 70 % of the labels landed > 1 px off before
    (root / "mirrored.yaml").write_text("T_cam_lidar: " + json.dumps(mirrored.tolist()) + "\n")
    (root / "nan.yaml").write_text("translation: [0.5, .nan, 0.0]\nrotation: [0, 0, 0, 1]\n")
    far = T_CAM_LIDAR.copy()
    far[:3, 3] = [1e30, 0, 0]
    (root / "far.yaml").write_text("T_cam_lidar: " + json.dumps(far.tolist()) + "\n")
    (root / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    nan_cloud = [("lidar/points", 10**9, _cloud(ts, 10**9, np.full((500, 3), np.nan)))]
    write_bag(root / "bag_nan", frames[:1], storage="mcap", extra=nan_cloud)
    write_bag(root / "bag_empty", frames[:1], storage="mcap", extra=[("lidar/points", 10**9, _cloud(ts, 10**9, np.zeros((0, 3))))])
    short = _cloud(ts, 10**9, lidar_pts[:100])
    short.point_step = 8  # z at offset 8 lies outside the 8-byte point: was a numpy ValueError traceback
    write_bag(root / "bag_step", frames[:1], storage="mcap", extra=[("lidar/points", 10**9, short)])
    rows = _cloud(ts, 10**9, lidar_pts[:100])
    rows.height, rows.width, rows.row_step = 2, 50, 12  # rows overlap: was read silently as one point per row
    write_bag(root / "bag_rows", frames[:1], storage="mcap", extra=[("lidar/points", 10**9, rows)])
    T_nan = T_CAM_LIDAR.copy()
    T_nan[0, 3] = np.nan
    write_bag(root / "bag_tfnan", frames[:1], storage="mcap",
              extra=extra[:1] + [("/tf_static", 10**9, _tf_static(ts, T_nan, "left_camera_optical_frame", "lidar"))])
    return root, cam_pts


def _labels(*args, cwd):
    return subprocess.run([sys.executable, "-m", "m2s_stereo.bag_cli", "labels", "--quiet", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("source", ["tf_static", "yaml"])
def test_round_trip_recovers_the_gt_and_removes_hidden_points(recorded, tmp_path, source):
    root, cam_pts = recorded
    extra = ["--extrinsic", root / "extrinsic.yaml"] if source == "yaml" else []
    res = _labels("--bag", root / "bag", "--cloud", "lidar/points", *extra, "--out", tmp_path / "ds", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((tmp_path / "ds" / "labels.json").read_text())
    assert summary["frames"] == 2 and np.allclose(summary["extrinsic_T_cam_lidar"], T_CAM_LIDAR, atol=1e-9)
    stem = summary["per_frame"][0]["frame"]
    labels = cv2.imread(str(tmp_path / "ds" / "disparity" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
    assert labels.dtype == np.uint16
    d = np.where(labels > 0, labels / 256.0, np.nan)
    truth = CAMERA.focal_px * CAMERA.baseline_m / _camera_depth()  # the scene's exact disparity
    got = np.isfinite(d)
    assert got.sum() > 1000
    assert np.nanmax(np.abs(d[got] - truth[got])) < 1 / 256 + 1e-6  # exact up to the 16-bit encoding
    # the points the camera cannot see: their ray from the camera meets the box first
    z_seen = _camera_depth()
    u = np.rint(CAMERA.fx * cam_pts[:, 0] / cam_pts[:, 2] + CAMERA.cx).astype(int)
    v = np.rint(CAMERA.fy * cam_pts[:, 1] / cam_pts[:, 2] + CAMERA.cy).astype(int)
    inside = (u >= 0) & (u < W) & (v >= 0) & (v < H) & (cam_pts[:, 2] > 0)
    hidden = inside.copy()
    hidden[inside] = cam_pts[inside, 2] > z_seen[v[inside], u[inside]] + 0.5
    row = summary["per_frame"][0]
    assert hidden.sum() > 50  # the scene has them
    # every hidden point is removed; beyond them only visible points within the z-buffer window (5 px)
    # of the box's outline (a local z-buffer cannot tell them apart), never any farther away
    on_box = (np.abs(z_seen - BOX[4]) < 1e-6).astype(np.uint8)
    outline = cv2.dilate(on_box, np.ones((5, 5), np.uint8)) > 0
    near_edge = inside.copy()
    near_edge[inside] = outline[v[inside], u[inside]] & (cam_pts[inside, 2] > BOX[4] + 0.5) & ~hidden[inside]
    assert hidden.sum() <= row["hidden"] <= hidden.sum() + near_edge.sum(), (row["hidden"], int(hidden.sum()),
                                                                           int(near_edge.sum()))
    # none of them survives as a label: every label agrees with the camera's own depth
    assert not (got & (np.abs(d - truth) > 0.01)).any()


@pytest.mark.parametrize("bag, extra, message", [
    ("bag", ["--cloud", "velodyne"], r"has no topic 'velodyne' \(it has .*lidar/points"),
    ("bag", ["--cloud", "left/image_rect"], r"carries sensor_msgs/msg/Image, not sensor_msgs/msg/PointCloud2"),
    ("bag_nofields", ["--cloud", "lidar/points", "--extrinsic", "EXTRINSIC"], r"has no x/y/z field \(fields: a, b, c\)"),
    ("bag", ["--cloud", "lidar/points", "--extrinsic", "BEHIND"], r"only \d+ of \d+ LiDAR points are in front of the camera"),
    ("bag_notf", ["--cloud", "lidar/points"], r"/tf_static has no chain from the LiDAR frame 'lidar'"),
    # round 3: geometry checked as geometry (calib.checks), one message per kind, whatever the source
    ("bag", ["--cloud", "lidar/points", "--extrinsic", "mirrored.yaml"], r"is a mirror, not a rotation \(det = -1"),
    ("bag", ["--cloud", "lidar/points", "--extrinsic", "nan.yaml"], r"translation is not finite: element \[1\] is nan"),
    ("bag", ["--cloud", "lidar/points", "--extrinsic", "far.yaml"], r"moves 1e\+30 m .*is it in millimetres"),
    ("bag", ["--cloud", "lidar/points", "--extrinsic", "binary.yaml"], r"binary.yaml: it is not a text \(YAML\) file"),
    ("bag_tfnan", ["--cloud", "lidar/points"], r"/tf_static left_camera_optical_frame -> lidar translation is not finite"),
    ("bag_nan", ["--cloud", "lidar/points", "--extrinsic", "extrinsic.yaml"],
     r"no LiDAR label in any of the 1 pair\(s\): the clouds hold 500 points, 0 of them finite"),
    ("bag_empty", ["--cloud", "lidar/points", "--extrinsic", "extrinsic.yaml"],
     r"no LiDAR label in any of the 1 pair\(s\): the clouds hold 0 points"),
    ("bag_step", ["--cloud", "lidar/points", "--extrinsic", "extrinsic.yaml"],
     r"field z at offset 8 does not fit in point_step 8 bytes"),
    ("bag_rows", ["--cloud", "lidar/points", "--extrinsic", "extrinsic.yaml"],
     r"row_step 12 is smaller than width 50 x point_step 12"),
])
def test_bad_input_is_one_error_line_and_nothing_written(recorded, tmp_path, bag, extra, message):
    root, _ = recorded
    extra = [str(root / "extrinsic.yaml") if a == "EXTRINSIC" else str(root / "behind.yaml") if a == "BEHIND"
             else str(root / a) if a.endswith(".yaml") else a for a in extra]
    res = _labels("--bag", root / bag, *extra, "--out", tmp_path / "ds", cwd=tmp_path)
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "ds").exists() and not list(tmp_path.glob(".ds*"))


def test_a_point_nearer_than_the_image_can_show_is_no_label():
    """A return at z = 1e-9 m (off the LiDAR's own housing) became a 256 px label; points nearer than
    f B / width (a disparity wider than the image) are dropped and counted."""
    pts = np.array([[0.0, 0.0, 1e-9], [0.0, 0.0, 0.5 * CAMERA.focal_px * CAMERA.baseline_m / W], [0.0, 0.0, 4.0]])
    labels = CAMERA.lidar_to_disparity(pts, np.eye(4))
    d = labels.disparity[np.isfinite(labels.disparity)]
    assert labels.too_near == 2 and d.size == 1 and d[0] == pytest.approx(CAMERA.focal_px * CAMERA.baseline_m / 4.0)
