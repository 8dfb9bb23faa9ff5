"""Bags as ``ros2 bag record`` writes them, through every bag reader as a user runs it (subprocesses).

Leading slashes; the namespaces and names RealSense, ZED and OAK-D drivers publish; CompressedImage
(JPEG, PNG); left/right stamps a few ms apart; split and zstd-compressed MCAP; a ROS 1 bag. Each bag
holds a textured plane at a known disparity, so a reader that pairs the wrong images is seen.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

pytest.importorskip("rosbags", reason="rosbags is not installed: pip install 'mono2stereo[ros]'")

from calib import StereoCamera  # noqa: E402
from calib.rosbag_io import typestore  # noqa: E402
from m2s_stereo.bag_tools import BagError, TopicNames, _header, _image, _info, bag_info, read_frames  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
W, H, SHIFT = 96, 64, 6

NAMES = {  # role -> topic, as each driver publishes and `ros2 bag record` stores them
    "plain": ("/left/image_rect", "/right/image_rect", "/left/camera_info", "/right/camera_info"),
    "realsense": ("/camera/infra1/image_rect_raw", "/camera/infra2/image_rect_raw", "/camera/infra1/camera_info",
                  "/camera/infra2/camera_info"),
    "zed": ("/zed/zed_node/left/image_rect_color", "/zed/zed_node/right/image_rect_color",
            "/zed/zed_node/left/camera_info", "/zed/zed_node/right/camera_info"),
    "oak": ("/oak/left/image_rect", "/oak/right/image_rect", "/oak/left/camera_info", "/oak/right/camera_info"),
}


def _views(i: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(i)
    scene = cv2.resize(rng.uniform(0, 255, (H // 4, (W + SHIFT) // 4, 3)).astype(np.float32), (W + SHIFT, H),
                       interpolation=cv2.INTER_CUBIC).astype(np.uint8)
    return scene[:, :W].copy(), scene[:, SHIFT:].copy()  # left(x) = right(x - SHIFT)


def record(path: Path, names: tuple[str, str, str, str], frames: int = 3, *, encoding: str = "rgb8",
           compressed: str | None = None, right_offset_ns: int = 0, storage: str = "mcap", zstd: str | None = None,
           extra_image_topics: tuple[str, ...] = (), right_p03: float | None = None, repeat: int | None = None) -> Path:
    """A bag as a driver + `ros2 bag record` leave it: its own topic names, each message at its own stamp."""
    from rosbags.rosbag2 import Writer
    from rosbags.rosbag2.enums import CompressionFormat, CompressionMode, StoragePlugin

    ts = typestore()
    camera = StereoCamera.ideal(W, H, focal_px=80.0, baseline_m=0.1)
    right_info = camera.right
    if right_p03 is not None:  # a driver's own convention for the right projection's baseline term
        import dataclasses

        projection = right_info.P.copy()
        projection[0, 3] = right_p03
        right_info = dataclasses.replace(right_info, P=projection)
    writer = Writer(path, version=8, storage_plugin=StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3)
    if zstd:
        writer.set_compression(CompressionMode[zstd], CompressionFormat.ZSTD)
    with writer:
        conns = {}

        def put(topic, msg, t):
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msg.__msgtype__, typestore=ts)
            writer.write(conns[topic], t, ts.serialize_cdr(msg, msg.__msgtype__))

        for i in [*range(frames), *([repeat] if repeat is not None else [])]:  # a frame sent twice: one stamp repeated
            stamp = 10**18 + i * 10**8
            left, right = _views(i)
            for k, (view, info, t) in enumerate(((left, camera.left, stamp), (right, right_info, stamp + right_offset_ns))):
                h = _header(ts, t, "cam")
                if compressed:
                    ok, buf = cv2.imencode(f".{compressed}", cv2.cvtColor(view, cv2.COLOR_RGB2BGR),
                                           [cv2.IMWRITE_JPEG_QUALITY, 100] if compressed == "jpg" else [])
                    msg = ts.types["sensor_msgs/msg/CompressedImage"](header=h, format=f"rgb8; {compressed} compressed bgr8",
                                                                       data=np.frombuffer(buf.tobytes(), np.uint8))
                    put(names[k] + "/compressed", msg, t)
                else:
                    data = cv2.cvtColor(view, cv2.COLOR_RGB2GRAY) if encoding == "mono8" else view
                    put(names[k], _image(ts, h, data, encoding), t)
                put(names[2 + k], _info(ts, h, info), t)
                for extra in extra_image_topics:
                    put(extra, _image(ts, h, view, "rgb8"), t)
    return path


def _cli(module: str, *args: object, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def _plane_ok(frames) -> None:
    """Each frame pairs the right views: the right image shifted by SHIFT is the left one."""
    assert frames
    for f in frames:
        diff = np.abs(f.left[:, SHIFT:].astype(int) - f.right[:, :-SHIFT].astype(int)).mean()
        wrong = np.abs(f.left.astype(int) - f.right.astype(int)).mean()
        assert diff < 0.5 * wrong


@pytest.mark.parametrize("driver", sorted(NAMES))
def test_driver_topic_names_are_found_without_flags(tmp_path, driver):
    bag = record(tmp_path / driver, NAMES[driver], encoding="mono8" if driver == "realsense" else "rgb8")
    frames = list(read_frames(bag))
    assert len(frames) == 3 and frames[0].camera.baseline_m == pytest.approx(0.1)
    _plane_ok(frames)
    info = bag_info(bag)
    assert info["problems"] == [] and info["stereo_topics"]["left/image_rect"] == NAMES[driver][0]


def test_the_3_frame_slash_bag_of_the_issue_through_info_and_eval_bag(tmp_path, stereo_onnx):
    """/left/image_rect ... as `ros2 bag record` names them: m2s-bag info and m2s-eval-bag (offline) read it."""
    bag = record(tmp_path / "slash", NAMES["plain"])
    info = _cli("m2s_stereo.bag_cli", "info", bag, cwd=tmp_path)
    assert info.returncode == 0, info.stdout + info.stderr
    assert json.loads(info.stdout)["stereo_topics"]["right/camera_info"] == "/right/camera_info"
    res = _cli("m2s_stereo.replay", "--bag", bag, "--model", stereo_onnx, "--out", tmp_path / "rep", "--mode",
               "offline", "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["frames"] == 3 and report["answered"] == 3


def test_compressed_images_and_stamps_3_ms_apart_in_a_split_zstd_mcap(tmp_path, stereo_onnx):
    """JPEG on one side of the test, PNG on the other; the right camera 3 ms late; the recording in two
    zstd-compressed files, as `ros2 bag record --max-bag-size ... --compression-mode file` leaves it."""
    png = record(tmp_path / "png", NAMES["oak"], compressed="png", right_offset_ns=3_000_000, zstd="STORAGE")
    frames, notes = [], []
    frames = list(read_frames(png, warnings=notes))
    assert len(frames) == 3
    _plane_ok(frames)
    assert any("3 of 3 pair(s) matched approximately" in n and "max 3.0 ms" in n for n in notes), notes
    jpg = record(tmp_path / "jpg", NAMES["zed"], compressed="jpg", right_offset_ns=3_000_000)
    _plane_ok(list(read_frames(jpg)))
    split = _split(tmp_path / "split", [record(tmp_path / f"part{k}", NAMES["plain"], frames=2) for k in range(2)])
    assert len(list(read_frames(split))) == 2  # the two parts hold the same stamps: the second repeats them
    file_zstd = record(tmp_path / "filezstd", NAMES["plain"], zstd="FILE")
    assert len(list(read_frames(file_zstd))) == 3
    res = _cli("m2s_stereo.replay", "--bag", png, "--model", stereo_onnx, "--out", tmp_path / "rep", "--mode",
               "offline", "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["answered"] == 3 and any("matched approximately" in w for w in report.get("warnings", []))


def _split(out: Path, parts: list[Path]) -> Path:
    """One bag folder whose metadata lists the files of ``parts`` in order (a split recording)."""
    out.mkdir()
    meta = None
    for k, part in enumerate(parts):
        m = yaml.safe_load((part / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        src = part / m["relative_file_paths"][0]
        name = f"split_{k}.mcap"
        shutil.copy(src, out / name)
        m["relative_file_paths"] = [name]
        for f in m.get("files", []):
            f["path"] = name
        if meta is None:
            meta = m
        else:
            meta["relative_file_paths"] += m["relative_file_paths"]
            meta["files"] = meta.get("files", []) + m.get("files", [])
            meta["message_count"] += m["message_count"]
            for a, b in zip(meta["topics_with_message_count"], m["topics_with_message_count"]):
                a["message_count"] += b["message_count"]
    (out / "metadata.yaml").write_text(yaml.safe_dump({"rosbag2_bagfile_information": meta}))
    return out


def test_named_topics_ambiguity_and_a_ros1_bag(tmp_path):
    bag = record(tmp_path / "two", NAMES["zed"], extra_image_topics=("/zed/zed_node/left_raw/image_raw_color",
                                                                      "/front/left/image_rect", "/front/right/image_rect"))
    with pytest.raises(BagError, match=r"2 candidate left image topic\(s\) \(/front/left/image_rect, "
                                       r"/zed/zed_node/left/image_rect_color\); name it with --left-image TOPIC"):
        list(read_frames(bag))
    names = TopicNames(left_image="/zed/zed_node/left/image_rect_color",
                       right_image="zed/zed_node/right/image_rect_color")  # with or without the slash
    _plane_ok(list(read_frames(bag, names=names)))
    res = _cli("m2s_stereo.bag_cli", "info", bag, "--left-image", "/nope", cwd=tmp_path)
    assert res.returncode == 1 and "has no Image or CompressedImage topic '/nope' (--left-image" in res.stdout
    ros1 = tmp_path / "old.bag"
    ros1.write_bytes(b"#ROSBAG V2.0\n" + bytes(64))
    with pytest.raises(BagError, match=r"is a ROS 1 bag: convert it to rosbag2 first .*rosbags-convert --src"):
        list(read_frames(ros1))


def test_synth_from_a_namespaced_bag_finds_the_left_images(tmp_path):
    bag = record(tmp_path / "rs", NAMES["realsense"], encoding="mono8")
    res = _cli("m2s_train.cli", "synth", "--bag", bag, "--out", tmp_path / "ds", "--quiet", cwd=tmp_path)
    if "No module named 'torch'" in res.stderr:
        pytest.skip("synthesis needs the training extra (torch)")
    assert res.returncode == 0, res.stderr
    assert any((tmp_path / "ds" / "frames" / "rs").rglob("*.png"))
    assert "camera_infra1_image_rect_raw" in str(next((tmp_path / "ds" / "frames" / "rs").iterdir()))


def test_live_replay_of_a_compressed_namespaced_recording(tmp_path, stereo_onnx):
    """Through the node over DDS: the CompressedImage pairs 3 ms apart are replayed as the images they decode to."""
    pytest.importorskip("rclpy", reason="the live replay needs rclpy (ROS 2 wheels)")
    bag = record(tmp_path / "oak", NAMES["oak"], frames=4, compressed="jpg", right_offset_ns=3_000_000)
    res = _cli("m2s_stereo.replay", "--bag", bag, "--model", stereo_onnx, "--out", tmp_path / "rep", "--mode", "live",
               "--rate", "0", "--param", "confidence_threshold=0", "--quiet", cwd=tmp_path)  # an untrained model
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["frames"] == 4 and report["answered"] + report["dropped"] == 4 and report["answered"] >= 3


@pytest.mark.parametrize("p03", [0.0, 8.0])
def test_a_drivers_baseline_convention_is_named_and_the_baseline_option_accepted(tmp_path, stereo_onnx, p03):
    """P_R[0,3] = 0 (no baseline) or +fx B (the opposite sign): one error line naming it; --baseline reads it."""
    bag = record(tmp_path / "oakd", NAMES["oak"], right_p03=p03)
    argv = ("m2s_stereo.replay", "--bag", bag, "--model", stereo_onnx, "--mode", "offline", "--quiet")
    res = _cli(*argv, "--out", tmp_path / "refused", cwd=tmp_path)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert ("P[0,3] = 0: it carries no baseline" if p03 == 0 else "P[0,3] = 8 > 0, the opposite of the ROS convention") \
        in lines[0] and "--baseline B" in lines[0]
    assert not (tmp_path / "refused").exists()
    res = _cli(*argv, "--out", tmp_path / "rep", "--baseline", "0.1", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["answered"] == 3
    frames = list(read_frames(bag, baseline_m=0.1))
    assert frames[0].camera.baseline_m == pytest.approx(0.1)
    wrong = list(read_frames(record(tmp_path / "good", NAMES["oak"]), baseline_m=0.2, warnings=(notes := [])))
    assert not wrong and "gives a baseline of 0.1 m, the 'baseline' given is 0.2 m" in " ".join(notes)
    intrinsics = _cli("calib.cli", "intrinsics", "--from-bag", bag, "--baseline", "0.1", "--out", tmp_path / "cam",
                      cwd=tmp_path)
    assert intrinsics.returncode == 0, intrinsics.stderr
    assert StereoCamera.from_dir(tmp_path / "cam").baseline_m == pytest.approx(0.1)


def test_repeated_stamps_are_counted_and_reported_by_the_replay(tmp_path, stereo_onnx):
    """A frame recorded twice (a driver bug, a bag merged twice): 3 of 4 pairs were evaluated, 'dropped 0',
    no warning. The replay keeps the first and says how many repeated."""
    bag = record(tmp_path / "twice", NAMES["plain"], frames=4, repeat=1)
    res = _cli("m2s_stereo.replay", "--bag", bag, "--model", stereo_onnx, "--out", tmp_path / "rep", "--mode",
               "offline", "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["frames"] == 4
    assert any("repeating a stamp already seen" in w and "1 on /left/image_rect" in w for w in report["warnings"])
    assert "repeating a stamp" in (tmp_path / "rep" / "report.md").read_text()


def test_a_tampered_model_and_a_run_that_publishes_nothing_are_errors_not_scores(tmp_path, stereo_onnx):
    """One byte of a weight changed after the export made every disparity non-finite, and m2s-eval-bag still
    exited 0 with 'answered 3, published_share 0.0'. The sidecar's sha256 refuses the file; and a run whose
    published pixels are none on every frame is an error, never a score."""
    sidecar = Path(str(stereo_onnx) + ".json")
    bag = record(tmp_path / "b", NAMES["plain"])
    argv = ("m2s_stereo.replay", "--bag", bag, "--mode", "offline", "--quiet")
    if not sidecar.is_file():
        pytest.skip("the hand-built ONNX of the torch-free legs has no sidecar and no confidence output")
    model = tmp_path / "m.onnx"
    data = bytearray(stereo_onnx.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, inside the weights
    model.write_bytes(bytes(data))
    shutil.copy(sidecar, tmp_path / "m.onnx.json")
    res = _cli(*argv, "--model", model, "--out", tmp_path / "t", cwd=tmp_path)
    assert res.returncode == 2 and "does not belong to" in res.stderr and not (tmp_path / "t").exists(), res.stderr
    # offline the model's own output counts (a threshold that rejects every pixel still leaves figures on all the
    # model's pixels); live, only what the node publishes reaches the replay
    res = _cli(*argv, "--model", stereo_onnx, "--out", tmp_path / "some", "--param", "confidence_threshold=1.0",
               cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    pytest.importorskip("rclpy", reason="the live replay needs rclpy (ROS 2 wheels)")
    live = [a if a != "offline" else "live" for a in argv]
    res = _cli(*live, "--rate", "0", "--model", stereo_onnx, "--out", tmp_path / "none", "--param",
               "confidence_threshold=1.0", cwd=tmp_path)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and lines[-1].startswith("error: the model gave no valid disparity on any of the 3")
    assert "confidence_threshold" in lines[-1] and not (tmp_path / "none").exists()
