"""Bag tools (both storages, damaged bags) and replay evaluation, live over real DDS vs offline."""

from __future__ import annotations

import glob
import json

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="rosbags is not installed: pip install 'mono2stereo[ros]'")

from calib import StereoCamera  # noqa: E402
from m2s_stereo.bag_cli import main as bag_main  # noqa: E402
from m2s_stereo.bag_tools import BagError, Frame, bag_info, read_frames, write_bag  # noqa: E402


def _frames(n=4, h=48, w=64, gt=True, seed=0):
    rng = np.random.default_rng(seed)
    cam = StereoCamera.ideal(w, h, focal_px=60.0, baseline_m=0.12)
    out = []
    for i in range(n):
        disp = rng.uniform(1, 20, (h, w)).astype(np.float32)
        disp[0, 0] = np.nan
        out.append(Frame(10**9 + i * 10**8, rng.integers(0, 255, (h, w, 3), np.uint8),
                         rng.integers(0, 255, (h, w, 3), np.uint8), cam, disp if gt else None))
    return out


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_round_trip_is_identical(tmp_path, storage):
    frames = _frames()
    assert write_bag(tmp_path / "bag", frames, storage=storage) == 4
    back = list(read_frames(tmp_path / "bag"))
    assert [f.stamp_ns for f in back] == [f.stamp_ns for f in frames]
    for a, b in zip(frames, back):
        assert np.array_equal(a.left, b.left) and np.array_equal(a.right, b.right)
        if b.gt_disparity is not None:  # the cut may fall between a frame's images and its GT
            np.testing.assert_array_equal(a.gt_disparity, b.gt_disparity)
        assert a.camera.left == b.camera.left and a.camera.right == b.camera.right
    info = bag_info(tmp_path / "bag")
    assert info["problems"] == [] and info["topics"]["left/image_rect"]["rate_hz"] == pytest.approx(10.0)


def _raw_bag(path, topics_stamps):
    """A bag written with rosbags directly: {topic: [stamps]} of images / camera_info."""
    from rosbags.rosbag2 import Writer

    from m2s_stereo.bag_tools import _header, _image, _info, typestore

    ts = typestore()
    cam = StereoCamera.ideal(8, 6, focal_px=8.0, baseline_m=0.1)
    with Writer(path, version=8) as w:
        for topic, stamps in topics_stamps.items():
            conn = None
            for k, t in enumerate(stamps):  # recorded (log) times increase; header stamps are as given
                h = _header(ts, t, "f")
                side = cam.left if topic.startswith("left") else cam.right
                msg = _info(ts, h, side) if "info" in topic else _image(ts, h, np.zeros((6, 8, 3), np.uint8), "rgb8")
                conn = conn or w.add_connection(topic, msg.__msgtype__, typestore=ts)
                w.write(conn, 10**9 + k, ts.serialize_cdr(msg, msg.__msgtype__))


def test_bad_bags_give_clear_messages(tmp_path):
    _raw_bag(tmp_path / "missing", {"left/image_rect": [1, 2], "right/image_rect": [1, 2]})
    with pytest.raises(BagError, match=r"missing has no left CameraInfo topic\(s\) \(none\); name it with --left-info"):
        list(read_frames(tmp_path / "missing"))
    _raw_bag(tmp_path / "uneven", {"left/image_rect": [1, 2, 3], "right/image_rect": [1, 2], "left/camera_info": [1, 2, 3],
                                   "right/camera_info": [1, 2, 3]})
    problems = " ".join(bag_info(tmp_path / "uneven")["problems"])
    assert "unequal message counts" in problems
    warnings = []
    assert len(list(read_frames(tmp_path / "uneven", warnings=warnings))) == 2 and "incomplete" in warnings[0]
    _raw_bag(tmp_path / "backwards", {"left/image_rect": [3, 2], "right/image_rect": [3, 2], "left/camera_info": [3, 2],
                                      "right/camera_info": [3, 2]})
    assert "non-increasing" in " ".join(bag_info(tmp_path / "backwards")["problems"])
    with pytest.raises(BagError, match="stamps must increase"):
        write_bag(tmp_path / "w", list(reversed(_frames(2))))
    with pytest.raises(BagError, match="not found"):
        list(read_frames(tmp_path / "nope"))
    assert bag_main(["info", str(tmp_path / "uneven")]) == 1


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_truncated_bag_still_gives_its_readable_part(tmp_path, storage):
    frames = _frames(6)
    write_bag(tmp_path / "bag", frames, storage=storage)
    f = glob.glob(str(tmp_path / "bag" / ("*.mcap" if storage == "mcap" else "*.db3")))[0]
    data = open(f, "rb").read()
    open(f, "wb").write(data[: int(len(data) * 0.6)])
    warnings = []
    got = list(read_frames(tmp_path / "bag", warnings=warnings))
    assert 2 <= len(got) < 6 and "damaged" in warnings[0]
    for a, b in zip(frames, got):
        assert a.stamp_ns == b.stamp_ns and np.array_equal(a.left, b.left) and np.array_equal(a.right, b.right)
        if b.gt_disparity is not None:  # the cut may fall between a frame's images and its GT
            np.testing.assert_array_equal(a.gt_disparity, b.gt_disparity)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_cut_to_its_header_is_a_clear_error(tmp_path, storage):
    write_bag(tmp_path / "bag", _frames(2), storage=storage)
    f = glob.glob(str(tmp_path / "bag" / ("*.mcap" if storage == "mcap" else "*.db3")))[0]
    data = open(f, "rb").read()
    open(f, "wb").write(data[:100])
    with pytest.raises(BagError, match="no readable messages could be salvaged"):
        list(read_frames(tmp_path / "bag"))


def test_make_from_folder_cli(tmp_path, capsys):
    import cv2

    rng = np.random.default_rng(0)
    for sub in ("left", "right", "disparity"):
        (tmp_path / "pairs" / sub).mkdir(parents=True)
    for i in range(3):
        img = rng.integers(0, 255, (24, 32, 3), np.uint8)
        cv2.imwrite(str(tmp_path / "pairs" / "left" / f"{i}.png"), img)
        cv2.imwrite(str(tmp_path / "pairs" / "right" / f"{i}.png"), img)
        np.save(tmp_path / "pairs" / "disparity" / f"{i}.npy", np.full((24, 32), 3.0, np.float32))
    assert bag_main(["make", "--from", f"folder:{tmp_path / 'pairs'}", "--out", str(tmp_path / "bag"), "--storage", "mcap",
                     "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["frames"] == 3
    frames = list(read_frames(tmp_path / "bag"))
    assert len(frames) == 3 and float(frames[0].gt_disparity[5, 5]) == 3.0
    assert bag_main(["make", "--from", f"folder:{tmp_path / 'pairs'}", "--out", str(tmp_path / "bag"), "--quiet"]) == 2


def test_live_replay_equals_offline(tmp_path):
    pytest.importorskip("rclpy", reason="ROS 2 Python (rclpy) is not installed")
    torch = pytest.importorskip("torch")
    from m2s_export.onnx_export import export_onnx
    from m2s_stereo.replay import run_live, run_offline, write_report
    from m2s_train.models import create_model, save_model

    torch.manual_seed(0)
    save_model(create_model("igev-tiny"), tmp_path / "ckpt")
    export_onnx(tmp_path / "ckpt", tmp_path / "m.onnx", 64, 96, verify=False)
    write_bag(tmp_path / "bag", _frames(5, 96, 128), storage="mcap")
    every = {"confidence_threshold": 0.0}  # this random model's confidence is low everywhere
    offline = run_offline(tmp_path / "bag", str(tmp_path / "m.onnx"), progress=False, params=every)
    live = run_live(tmp_path / "bag", str(tmp_path / "m.onnx"), rate=0, progress=False, params=every)
    assert live["answered"] + live["dropped"] == live["frames"] == 5  # every pair answered or counted
    assert live["answered"] == 5
    for a, b in zip(offline["per_frame"], live["per_frame"]):
        assert a["epe"] == pytest.approx(b["epe"], rel=1e-5) and a["bad3"] == pytest.approx(b["bad3"], abs=1e-9)
        assert a["density"] == b["density"]
    assert live["accuracy"]["disparity"]["epe"] == pytest.approx(offline["accuracy"]["disparity"]["epe"], rel=1e-5)
    # the confidence arrives on its own topic and ranks the pixels as offline
    for key in ("auc_epe", "auc_bad3"):
        assert live["accuracy"]["confidence"][key]["confidence"] == pytest.approx(
            offline["accuracy"]["confidence"][key]["confidence"], rel=1e-4)
    # the node's threshold masks the same pixels in both modes: half of them at the median confidence
    median = float(np.median(np.concatenate([c.ravel() for _, _, c in offline["_preds"]])))
    half = {"confidence_threshold": round(median, 4)}
    offline_half = run_offline(tmp_path / "bag", str(tmp_path / "m.onnx"), progress=False, params=half)
    live_half = run_live(tmp_path / "bag", str(tmp_path / "m.onnx"), rate=0, progress=False, params=half)
    assert 0.3 < offline_half["accuracy"]["disparity"]["density"] < 0.7
    for a, b in zip(offline_half["per_frame"], live_half["per_frame"]):
        assert a["density"] == b["density"] and a["epe"] == pytest.approx(b["epe"], rel=1e-5)
    report = write_report(live, tmp_path / "report")
    assert (tmp_path / "report" / "report.md").read_text().count("latency") >= 1
    assert report["latency_summary_ms"]["median"] > 0
    assert (tmp_path / "report" / "latency.png").is_file() and (tmp_path / "report" / "error_map_0.png").is_file()
    # no GT in the bag: the self-consistency rate instead
    write_bag(tmp_path / "nogt", _frames(2, 96, 128, gt=False), storage="sqlite3")
    res = run_offline(tmp_path / "nogt", str(tmp_path / "m.onnx"), progress=False, params=every)
    lf = res["accuracy"]["label_free"]
    assert 0.0 <= lf["lr_consistency"] <= 1.0 and lf["photometric"] > 0 and 0.0 <= lf["at_range_limit"] <= 1.0
    assert lf["frames"] == 2 and all("photometric" in r for r in res["per_frame"])
    # a sqlite3 bag cut mid-file (a killed recorder) is evaluated on its readable part
    write_bag(tmp_path / "cut", _frames(5, 96, 128), storage="sqlite3")
    db = next((tmp_path / "cut").glob("*.db3"))
    db.write_bytes(db.read_bytes()[: int(db.stat().st_size * 0.7)])
    cut = run_offline(tmp_path / "cut", str(tmp_path / "m.onnx"), progress=False, params=every)
    assert 2 <= cut["frames"] < 5 and any("damaged" in w for w in cut["warnings"])
    for a, b in zip(offline["per_frame"], cut["per_frame"]):
        assert a["epe"] == pytest.approx(b["epe"], rel=1e-6)
    write_report(cut, tmp_path / "cut_report")
    assert "damaged" in (tmp_path / "cut_report" / "report.md").read_text()


@pytest.mark.parametrize("year", [2015, 2012])
def test_make_from_kitti_layout_with_calibration(tmp_path, year):
    import cv2

    from m2s_stereo.bag_tools import KITTI_LAYOUT

    left_dir, right_dir, gt_dir, calib_dir, calib_name = KITTI_LAYOUT[year]
    base = tmp_path / "kitti" / "training"
    for sub in (left_dir, right_dir, gt_dir, calib_dir):
        (base / sub).mkdir(parents=True)
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (37, 124, 3), np.uint8)
    cv2.imwrite(str(base / left_dir / "000000_10.png"), img)
    cv2.imwrite(str(base / right_dir / "000000_10.png"), img)
    gt = np.zeros((37, 124), np.uint16)
    gt[20:30, 50:60] = 256 * 30
    cv2.imwrite(str(base / gt_dir / "000000_10.png"), gt)
    # KITTI's rectified projections for its 1242x375 images, scaled to this 124x37 one (a tenth): the
    # full-size ones describe another camera (a principal point far outside the image, refused)
    p2 = "72.15 0 60.96 4.486 0 72.15 17.29 0.02164 0 0 1 0.002746"
    p3 = "72.15 0 60.96 -33.95 0 72.15 17.29 0.22 0 0 1 0.002729"
    keys = ("P_rect_02", "P_rect_03") if year == 2015 else ("P2", "P3")
    (base / calib_dir / calib_name("000000")).write_text(f"{keys[0]}: {p2}\n{keys[1]}: {p3}\n")
    assert bag_main(["make", "--from", f"kitti{year}:{tmp_path / 'kitti'}", "--out", str(tmp_path / "bag"), "--quiet"]) == 0
    frame = next(read_frames(tmp_path / "bag"))
    assert frame.camera.baseline_m == pytest.approx((4.486 + 33.95) / 72.15, rel=1e-6)  # ~0.53 m, KITTI's rig
    assert float(frame.gt_disparity[25, 55]) == 30.0 and np.isnan(frame.gt_disparity[0, 0])


def test_info_and_reader_name_size_problems_and_short_image_data(tmp_path):
    """A recorded bag can hold what m2s-bag make refuses to write: camera_info for another size, cut image data."""
    from rosbags.rosbag2 import Writer

    from m2s_stereo.bag_tools import LEFT, LEFT_INFO, RIGHT, RIGHT_INFO, _header, _image, _info, typestore

    ts = typestore()
    cam = StereoCamera.ideal(64, 48, focal_px=60.0, baseline_m=0.1)
    other = StereoCamera.ideal(32, 24, focal_px=30.0, baseline_m=0.1)
    img = np.zeros((48, 64, 3), np.uint8)
    with Writer(tmp_path / "bag", version=8) as w:
        conns = {}
        for i in range(3):
            stamp = 10**9 + i * 10**8
            h = _header(ts, stamp, "f")
            right = _image(ts, h, img, "rgb8")
            if i == 1:
                right.data = right.data[:1000]  # shorter than its declared 48 x 192 bytes
            info = other if i == 2 else cam
            for topic, msg in ((LEFT, _image(ts, h, img, "rgb8")), (RIGHT, right), (LEFT_INFO, _info(ts, h, info.left)),
                               (RIGHT_INFO, _info(ts, h, info.right))):
                if topic not in conns:
                    conns[topic] = w.add_connection(topic, msg.__msgtype__, typestore=ts)
                w.write(conns[topic], stamp, ts.serialize_cdr(msg, msg.__msgtype__))
    problems = " | ".join(bag_info(tmp_path / "bag")["problems"])
    assert "right/image_rect at 1100000000: data is 1000 bytes, shorter than its declared size 9216" in problems
    assert "left camera_info does not match the left image (left/camera_info 32x24, left/image_rect 64x48)" in problems
    warnings = []
    frames = list(read_frames(tmp_path / "bag", warnings=warnings))
    assert [f.stamp_ns for f in frames] == [10**9, 12 * 10**8]  # the cut frame is skipped, named
    assert any("frame 1100000000: right/image_rect: data is 1000 bytes" in w for w in warnings)


def test_held_sequence_and_temporal_metrics(tmp_path):
    """m2s-bag make --hold/--noise: static scenes under fresh noise with exact GT; the evaluation finds the
    scene changes, measures flicker on unchanged GT and the frames to settle after a change."""
    from m2s_stereo.bag_tools import held_sequence
    from m2s_stereo.replay import Evaluation

    frames = list(held_sequence(iter(_frames(2, 48, 64)), hold=6, noise=3.0, rate_hz=10.0, start_ns=10**9, seed=1))
    assert len(frames) == 12 and [f.stamp_ns for f in frames] == [10**9 + k * 10**8 for k in range(12)]
    first, second = frames[0], frames[6]
    for f in frames[1:6]:
        np.testing.assert_array_equal(f.gt_disparity, first.gt_disparity)
        assert 2.5 < np.std(f.left.astype(float) - first.left.astype(float)) / np.sqrt(2) < 3.5  # fresh noise
    assert not np.array_equal(second.gt_disparity, first.gt_disparity)
    with pytest.raises(BagError, match="hold"):
        list(held_sequence(iter(_frames(1)), hold=0, noise=1.0, rate_hz=10.0, start_ns=0))

    rng = np.random.default_rng(0)
    ev = Evaluation()
    for i, f in enumerate(frames):
        # a prediction that jitters by 0.2 px and needs two frames to reach a new scene
        late = i in (6, 7)
        pred = (frames[5] if late else f).gt_disparity + rng.normal(0, 0.2, f.gt_disparity.shape).astype(np.float32)
        ev.add(f, pred.astype(np.float32), i)
    t = ev.summary()["temporal"]
    assert t["scene_changes"] == 1 and t["settle_frames"] == [3]
    flicker = {r["frame"]: r["flicker"] for r in ev.per_frame if "flicker" in r}
    assert sorted(flicker) == [1, 2, 3, 4, 5, 7, 8, 9, 10, 11]  # not across the change (frame 6)
    for i in (1, 2, 3, 4, 5, 7, 9, 10, 11):  # |N(0, 0.2) - N(0, 0.2)| has mean 0.2 * 2 / sqrt(pi) = 0.226
        assert 0.15 < flicker[i] < 0.3, (i, flicker[i])
    assert flicker[8] > 1.0  # the late arrival of the new scene is instability too (the GT did not change)
    assert t["flicker_px"] == pytest.approx(np.mean(list(flicker.values()))) and t["frame_pairs"] == 10


def test_temporal_filter_reduces_flicker_in_the_offline_replay(tmp_path):
    """The replay's node parameters reach the post-processing: temporal_filter on a noisy static scene."""
    torch = pytest.importorskip("torch")
    from m2s_export.onnx_export import export_onnx
    from m2s_stereo.bag_tools import held_sequence
    from m2s_stereo.replay import run_offline
    from m2s_train.models import create_model, save_model

    torch.manual_seed(0)
    save_model(create_model("igev-tiny"), tmp_path / "ckpt")
    export_onnx(tmp_path / "ckpt", tmp_path / "m.onnx", 64, 96, verify=False, fp16=False)
    write_bag(tmp_path / "seq", held_sequence(iter(_frames(1, 64, 96)), hold=8, noise=4.0, rate_hz=10.0, start_ns=10**9),
              storage="mcap")
    base = {"confidence_threshold": 0.0}
    raw = run_offline(tmp_path / "seq", str(tmp_path / "m.onnx"), progress=False, params=base)
    smooth = run_offline(tmp_path / "seq", str(tmp_path / "m.onnx"), progress=False,
                         params={**base, "temporal_filter": True, "temporal_delta": 5.0})
    assert smooth["node_parameters"]["temporal_filter"] is True
    assert smooth["accuracy"]["temporal"]["flicker_px"] < 0.6 * raw["accuracy"]["temporal"]["flicker_px"]
    from m2s_stereo.replay import main as eval_main

    assert eval_main(["--bag", str(tmp_path / "seq"), "--model", str(tmp_path / "m.onnx"), "--out", str(tmp_path / "r"),
                      "--mode", "offline", "--param", "temporal_filter=true", "--param", "confidence_threshold=0",
                      "--quiet"]) == 0
    report = (tmp_path / "r" / "report.md").read_text()
    assert "flicker" in report and "temporal_filter=True" in report and "sparsification" in report
