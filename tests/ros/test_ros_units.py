"""Units of the ROS node that run without DDS: image codec, pair synchronizer, output messages, params."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="ROS 2 Python (rclpy) is not installed: pip install 'mono2stereo[ros]'")

from sensor_msgs.msg import Image  # noqa: E402

from calib import StereoCamera  # noqa: E402
from m2s_stereo import params as P  # noqa: E402
from m2s_stereo.image_codec import BufferPool, EncodingError, array_to_image, image_to_array, image_to_rgb8  # noqa: E402
from m2s_stereo.outputs import frame_messages, unpack_points, warm_up  # noqa: E402
from m2s_stereo.stereo_node import MSGS  # noqa: E402
from m2s_stereo.sync import PairSynchronizer  # noqa: E402

PKG = Path(__file__).resolve().parents[2] / "ros2_ws" / "src" / "m2s_stereo"


class TestCodec:
    @pytest.mark.parametrize("enc, channels, convert", [
        ("rgb8", 3, lambda a: a), ("bgr8", 3, lambda a: a[:, :, ::-1]), ("rgba8", 4, lambda a: a[:, :, :3]),
        ("bgra8", 4, lambda a: a[:, :, 2::-1]), ("mono8", 1, lambda a: np.repeat(a[:, :, None], 3, 2))])
    def test_encodings(self, enc, channels, convert):
        rng = np.random.default_rng(0)
        a = rng.integers(0, 255, (5, 7, channels) if channels > 1 else (5, 7), np.uint8)
        out = image_to_rgb8(array_to_image(Image, a, enc))
        np.testing.assert_array_equal(out, convert(a))

    def test_padding_and_mono16(self):
        a = np.arange(35, dtype=np.uint8).reshape(5, 7)
        msg = array_to_image(Image, a, "mono8")
        padded = np.zeros((5, 8), np.uint8)
        padded[:, :7] = a
        msg.step, msg.data = 8, padded.tobytes()
        np.testing.assert_array_equal(image_to_rgb8(msg)[:, :, 0], a)
        m16 = array_to_image(Image, (a.astype(np.uint16) * 1000), "mono16")
        np.testing.assert_array_equal(image_to_rgb8(m16)[:, :, 0], np.rint(a.astype(float) * 1000 * 255 / 65535).astype(np.uint8))

    def test_mono16_has_one_fixed_gain(self):
        """Before: each image scaled by its own maximum, so a pair's two views (and successive frames)
        came out with different brightness."""
        bright = np.full((4, 6), 4000, np.uint16)
        dark = bright // 2
        dark[0, 0] = 4095
        a, b = (image_to_rgb8(array_to_image(Image, x, enc), mono16_max=4095) for x, enc in ((bright, "mono16"),
                                                                                           (dark, "16UC1")))
        assert a[1, 1, 0] == 249 and b[1, 1, 0] == 125 and b[0, 0, 0] == 255  # 4000 and 2000 of 4095 on one scale
        big = array_to_image(Image, bright.astype(">u2"), "mono16")
        big.is_bigendian = True
        np.testing.assert_array_equal(image_to_rgb8(big, mono16_max=4095), a)

    def test_rejects_unsupported_and_short(self):
        msg = array_to_image(Image, np.zeros((4, 4, 3), np.uint8), "rgb8")
        msg.encoding = "yuv422"
        with pytest.raises(EncodingError, match="yuv422"):
            image_to_rgb8(msg)
        msg = array_to_image(Image, np.zeros((4, 4, 3), np.uint8), "rgb8")
        msg.data = bytes(10)
        with pytest.raises(EncodingError, match="bytes"):
            image_to_rgb8(msg)


def _msg(t_ns: int):
    return SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=t_ns // 10**9, nanosec=t_ns % 10**9)), t=t_ns)


class TestSync:
    def test_exact_pairs_and_out_of_order(self):
        got = []
        sync = PairSynchronizer(lambda a, b: got.append((a.t, b.t)), queue_size=5)
        sync.add_left(_msg(100))
        sync.add_left(_msg(200))
        sync.add_right(_msg(200))  # pairs 200, drops the stale left 100
        sync.add_right(_msg(100))  # older than the last pair: rejected and counted
        sync.add_left(_msg(100))
        sync.add_left(_msg(300))
        sync.add_right(_msg(300))
        assert got == [(200, 200), (300, 300)] and sync.out_of_order == 2
        assert all(len(q) == 0 for q in sync.queues)

    def test_approximate_with_slop_and_bounded_queue(self):
        got = []
        sync = PairSynchronizer(lambda a, b: got.append((a.t, b.t)), queue_size=3, slop=0.005)
        for t in range(10):
            sync.add_left(_msg(t * 10**8))  # no partner yet: queue stays bounded
        assert len(sync.queues[0]) == 3
        sync.add_right(_msg(9 * 10**8 + 3 * 10**6))
        assert got == [(9 * 10**8, 9 * 10**8 + 3 * 10**6)]
        sync.add_right(_msg(20 * 10**8))
        sync.add_left(_msg(20 * 10**8 + 6 * 10**6))  # 6 ms > slop
        assert len(got) == 1


def _frame(cam, d, pool=None, **kw):
    args = dict(disparity_out=True, depth_out=True, points_out=True, colors=None, organized=True, stride=1,
                min_depth=None, max_depth=None, max_disparity=64.0, pool=pool)
    return frame_messages(MSGS, cam, d, MSGS.Image().header, **(args | kw))


@pytest.mark.parametrize("backend", ["numpy", "auto"])
def test_frame_messages_fields_and_values(backend):
    cam = StereoCamera.ideal(8, 6, focal_px=100.0, baseline_m=0.5)
    d = np.full((6, 8), 10.0, np.float32)
    d[0, 0], d[0, 1] = np.nan, -2.0
    rgb = np.full((6, 8, 3), (10, 20, 30), np.uint8)
    out = _frame(cam, d, colors=rgb, backend=backend, max_depth=100.0)
    disp = image_to_array(out.disparity.image)
    assert out.disparity.image.encoding == "32FC1" and out.disparity.f == 100.0 and out.disparity.t == 0.5
    assert out.disparity.max_disparity == 64.0 and out.disparity.valid_window.width == 8
    assert np.isnan(disp[0, :2]).all() and (disp.reshape(-1)[2:] == 10.0).all()
    np.testing.assert_array_equal(image_to_array(out.depth), cam.disparity_to_depth(d))
    cloud = out.points
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "rgb"] and cloud.point_step == 16 and not cloud.is_dense
    assert (cloud.height, cloud.width, cloud.row_step) == (6, 8, 128)
    np.testing.assert_allclose(unpack_points(cloud), cam.disparity_to_points(d).points, equal_nan=True)
    rgb_bits = np.frombuffer(bytes(cloud.data), np.uint32).reshape(-1, 4)[:, 3]
    assert rgb_bits[5] == (10 << 16) | (20 << 8) | 30
    flat = _frame(cam, d, organized=False, stride=2, disparity_out=False, depth_out=False, backend=backend).points
    assert flat.height == 1 and flat.width == 11 and flat.is_dense and len(flat.fields) == 3
    only = _frame(cam, d, disparity_out=False, points_out=False)
    assert only.disparity is None and only.points is None and only.depth is not None


def test_output_buffers_are_reused_and_refilled():
    cam = StereoCamera.ideal(8, 6, focal_px=100.0, baseline_m=0.5)
    pool = BufferPool()
    first = _frame(cam, np.full((6, 8), 10.0, np.float32), pool)
    z_first = unpack_points(first.points)[..., 2].copy()
    second = _frame(cam, np.full((6, 8), 20.0, np.float32), pool)
    for a, b in ((first.points, second.points), (first.depth, second.depth), (first.disparity.image, second.disparity.image)):
        assert a.data is b.data  # same buffer, no allocation
    np.testing.assert_allclose(unpack_points(second.points)[..., 2], z_first / 2)
    small = _frame(StereoCamera.ideal(8, 3, focal_px=100.0, baseline_m=0.5), np.ones((3, 8), np.float32), pool)
    assert small.depth.data is not first.depth.data  # new size: new buffer
    # valid-only clouds through the pool equal the organised cloud's finite points
    d = np.full((6, 8), 10.0, np.float32)
    d[2, 3] = np.nan
    valid = _frame(cam, d, pool, organized=False).points
    org = unpack_points(_frame(cam, d).points).reshape(-1, 3)
    np.testing.assert_array_equal(unpack_points(valid), org[np.isfinite(org[:, 2])])


def test_warm_up_builds_every_output():
    assert warm_up(MSGS) in ("numba", "numpy")


class TestParamsAndLaunch:
    def test_validation(self, tmp_path):
        model = tmp_path / "m.onnx"
        model.write_bytes(b"x")
        base = {p.name: p.default for p in P.PARAMS} | {P.MODEL_PATH: str(model)}
        assert P.validate_all(base) == []
        assert any("backend" in r for r in P.validate_all(base | {P.BACKEND: "tensorrt"}))
        assert any("below" in r for r in P.validate_all(base | {P.MIN_DEPTH: 5.0, P.MAX_DEPTH: 1.0}))
        assert any("sync_mode" in r for r in P.validate_all(base | {P.SYNC_MODE: "fuzzy"}))
        assert any("empty" in r for r in P.validate_all(base | {P.MODEL_PATH: ""}))
        engine = tmp_path / "m.trt"  # what load_runtime accepts, the backend parameter accepts (.trt was refused)
        engine.write_bytes(b"x")
        assert P.validate_all(base | {P.MODEL_PATH: str(engine), P.BACKEND: "tensorrt"}) == []
        assert any("cannot run" in r for r in P.validate_all(base | {P.MODEL_PATH: str(engine), P.BACKEND: "onnxruntime"}))

    def test_dds_profile_environment(self):
        from m2s_stereo.dds import PROFILE, profile_environment

        assert PROFILE.is_file() and "<segment_size>" in PROFILE.read_text()
        # Fast DDS 3 (Kilted, Rolling) reads FASTDDS_, Fast DDS 2 (Humble, Jazzy) FASTRTPS_ only
        kilted, jazzy = {"ROS_DISTRO": "kilted"}, {"ROS_DISTRO": "jazzy"}
        assert profile_environment(kilted) == {"FASTDDS_DEFAULT_PROFILES_FILE": str(PROFILE)}
        assert profile_environment(jazzy) == {"FASTRTPS_DEFAULT_PROFILES_FILE": str(PROFILE)}
        assert profile_environment({"ROS_DISTRO": "humble"}) == {"FASTRTPS_DEFAULT_PROFILES_FILE": str(PROFILE)}
        assert profile_environment(kilted | {"FASTDDS_DEFAULT_PROFILES_FILE": "/mine.xml"}) == {}  # the user's choice
        assert profile_environment(kilted | {"M2S_DDS_PROFILE": "none"}) == {}
        assert profile_environment(kilted | {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}) == {}

    def test_dds_profile_variable_follows_the_installed_fast_dds(self):
        """Without ROS_DISTRO (the PyPI wheels) the installed Fast DDS decides; a profile left in the variable it
        does not read (FASTDDS_ on Jazzy, as these docs once said) is named, not silently ignored."""
        import importlib.metadata as md

        from m2s_stereo.dds import PROFILE, fast_dds_major, ignored_profile_variable, profile_environment

        installed = {}
        for dist in ("ros-fastdds", "ros-fastrtps"):
            try:
                installed[dist] = int(md.version(dist).split(".")[0])
            except md.PackageNotFoundError:
                pass
        assert fast_dds_major({}) == next(iter(installed.values()), None)
        if fast_dds_major({}) is not None:
            want = "FASTDDS_DEFAULT_PROFILES_FILE" if fast_dds_major({}) >= 3 else "FASTRTPS_DEFAULT_PROFILES_FILE"
            assert profile_environment({}) == {want: str(PROFILE)}
        assert ignored_profile_variable({"ROS_DISTRO": "jazzy", "FASTDDS_DEFAULT_PROFILES_FILE": "/p.xml"}).startswith(
            "FASTDDS_DEFAULT_PROFILES_FILE is set (/p.xml) but this Fast DDS (major version 2) reads "
            "FASTRTPS_DEFAULT_PROFILES_FILE only")
        assert ignored_profile_variable({"ROS_DISTRO": "jazzy", "FASTRTPS_DEFAULT_PROFILES_FILE": "/p.xml"}) is None
        assert ignored_profile_variable({"ROS_DISTRO": "kilted", "FASTRTPS_DEFAULT_PROFILES_FILE": "/p.xml"}) is not None
        assert ignored_profile_variable({"ROS_DISTRO": "kilted"}) is None

    def test_config_yaml_declares_every_parameter(self):
        import yaml

        doc = yaml.safe_load((PKG / "config" / "stereo.yaml").read_text())["/**"]["ros__parameters"]
        # model_path is left out on purpose: an empty value there overrode -p model_path:=... (order-dependent)
        assert set(doc) == set(P.BY_NAME) - {P.MODEL_PATH}
        assert all(doc[p.name] == p.default for p in P.PARAMS if p.name != P.MODEL_PATH)

    def test_launch_file_matches_package(self):
        tree = ast.parse((PKG / "launch" / "stereo.launch.py").read_text())
        consts = {t.id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                  for t in n.targets if isinstance(t, ast.Name) and isinstance(n.value, (ast.Constant, ast.Dict))}
        setup = (PKG / "setup.py").read_text()
        assert consts["PACKAGE"] == "m2s_stereo" and f"{consts['EXECUTABLE']} = m2s_stereo.node_main:main" in setup
        node_src = (PKG / "m2s_stereo" / "stereo_node.py").read_text()
        for topic in consts["INPUTS"].values():
            assert f'"{topic}"' in node_src  # every remapped input is a topic the node subscribes to
        assert (PKG / "config" / "stereo.yaml").is_file() and '"config", "stereo.yaml"' in (PKG / "launch" / "stereo.launch.py").read_text()
        assert "P.MODEL_PATH" in (PKG / "launch" / "stereo.launch.py").read_text()  # the name shared with the node
        xml = (PKG / "package.xml").read_text()
        for dep in ("rclpy", "sensor_msgs", "stereo_msgs", "diagnostic_msgs", "launch_ros"):
            assert f"<exec_depend>{dep}</exec_depend>" in xml
