from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from calib import CalibrationError, CameraInfo, StereoCamera
from calib.camera_info_io import parse_camera_info_yaml


def _camera() -> StereoCamera:
    k = np.array([[535.7395841922158, 0.0, 342.35], [0.0, 535.58, 235.03], [0, 0, 1]])
    p1 = np.array([[518.8367970821535, 0, 337.6733093261719, 0], [0, 518.8367970821535, 243.9198, 0], [0, 0, 1, 0]])
    p2 = p1.copy()
    p2[0, 3] = -43.298352803
    r = np.array([[0.9999647959680394, -0.0077211799, 0.0032848], [0.0077286, 0.99996757, -0.0022629], [-0.0032672, 0.0022882, 0.99999204]])
    d = np.array([-0.2647604937459034, -0.047833770428680845, 0.00178, -0.00029, 0.24365238449743876])
    return StereoCamera(CameraInfo(640, 480, k, d, r, p1, "plumb_bob", "left"),
                        CameraInfo(640, 480, k * 1.001, d / 3, r.T, p2, "plumb_bob", "right"))


class TestDerived:
    def test_focal_baseline_from_p_right(self):
        cam = _camera()
        assert cam.focal_px == pytest.approx(518.8367970821535)
        assert cam.baseline_m == pytest.approx(43.298352803 / 518.8367970821535)
        assert cam.doffs == 0.0

    def test_depth_pin_at_a_pixel(self):
        cam = _camera()
        d = np.zeros((480, 640), np.float32)
        d[100, 200] = 12.5
        z = cam.disparity_to_depth(d)
        assert z[100, 200] == pytest.approx(cam.focal_px * cam.baseline_m / 12.5, rel=1e-6)
        assert np.isnan(z[0, 0])

    def test_scaled_halves_disparity_scale(self):
        cam = _camera()
        half = cam.scaled(320, 240)
        assert half.focal_px == pytest.approx(cam.focal_px / 2)
        assert half.baseline_m == pytest.approx(cam.baseline_m)

    def test_size_check(self):
        with pytest.raises(CalibrationError, match="320x240"):
            _camera().disparity_to_depth(np.ones((240, 320), np.float32))


class TestYamlRoundTrip:
    def test_lossless(self, tmp_path):
        cam = _camera()
        cam.to_dir(tmp_path)
        back = StereoCamera.from_dir(tmp_path)
        assert back.left == cam.left and back.right == cam.right
        # bit-exact floats, not just close
        assert back.left.K.tobytes() == cam.left.K.tobytes()
        assert back.right.D.tobytes() == cam.right.D.tobytes()
        assert (tmp_path / "left.yaml").read_text() == cam.left.to_yaml_text()

    def test_reads_ros_written_file(self):
        text = """image_width: 640
image_height: 480
camera_name: narrow_stereo/left
camera_matrix:
  rows: 3
  cols: 3
  data: [430.15433, 0, 311.71339, 0, 430.60449, 221.06775, 0, 0, 1]
distortion_model: plumb_bob
distortion_coefficients:
  rows: 1
  cols: 5
  data: [-0.363528, 0.161065, 0.000113, -0.000941, 0]
rectification_matrix:
  rows: 3
  cols: 3
  data: [0.99969, 0.02, -0.01, -0.02, 0.9998, 0.003, 0.01, -0.003, 0.99995]
projection_matrix:
  rows: 3
  cols: 4
  data: [295.5, 0, 285.6, 0, 0, 295.5, 223.3, 0, 0, 0, 1, 0]
"""
        info = CameraInfo(**parse_camera_info_yaml(text))
        assert info.camera_name == "narrow_stereo/left" and info.D.shape == (5,)
        assert info.P[0, 0] == 295.5

    @pytest.mark.parametrize(
        "bad, match",
        [
            ("image_width: 640\n", "image_height"),
            ("image_width: 640\nimage_height: 480\n", "camera_matrix"),
            ("[1, 2", "YAML"),
        ],
    )
    def test_malformed(self, bad, match):
        with pytest.raises(CalibrationError, match=match):
            parse_camera_info_yaml(bad, where="x.yaml")

    def test_wrong_matrix_size_names_key(self, tmp_path):
        text = _camera().left.to_yaml_text().replace("cols: 4", "cols: 3")
        with pytest.raises(CalibrationError, match="projection_matrix"):
            parse_camera_info_yaml(text)

    def test_missing_file(self, tmp_path):
        with pytest.raises(CalibrationError, match="right.yaml"):
            (tmp_path / "left.yaml").write_text(_camera().left.to_yaml_text())
            StereoCamera.from_dir(tmp_path)


class TestValidation:
    def test_non_positive_baseline(self):
        cam = _camera()
        p = cam.right.P.copy()
        p[0, 3] = abs(p[0, 3])
        right = CameraInfo(640, 480, cam.right.K, cam.right.D, cam.right.R, p)
        with pytest.raises(CalibrationError, match=r"> 0, the opposite of the ROS convention .*swapped.*--baseline B"):
            StereoCamera(cam.left, right)
        p[0, 3] = 0.0
        with pytest.raises(CalibrationError, match=r"P\[0,3\] = 0: it carries no baseline"):
            StereoCamera(cam.left, CameraInfo(640, 480, cam.right.K, cam.right.D, cam.right.R, p))

    def test_unrectified_pair_rejected(self):
        cam = _camera()
        p = cam.right.P.copy()
        p[1, 2] += 20.0
        with pytest.raises(CalibrationError, match="cy"):
            StereoCamera(cam.left, CameraInfo(640, 480, cam.right.K, cam.right.D, cam.right.R, p))

    def test_size_mismatch(self):
        cam = _camera()
        with pytest.raises(CalibrationError, match="sizes differ"):
            StereoCamera(cam.left, CameraInfo(320, 240, cam.right.K, cam.right.D, cam.right.R, cam.right.P))

    def test_zero_projection(self):
        with pytest.raises(CalibrationError, match="uncalibrated"):
            CameraInfo(10, 10, np.eye(3), np.zeros(5), np.eye(3), np.zeros((3, 4)))


class TestFromMsg:
    def test_ros2_style_fields(self):
        cam = _camera()
        msgs = []
        for info in (cam.left, cam.right):
            f = info.msg_fields()
            msgs.append(SimpleNamespace(header=SimpleNamespace(frame_id=info.camera_name), **f))
        back = StereoCamera.from_msgs(*msgs)
        np.testing.assert_array_equal(back.right.P, cam.right.P)
        assert back.baseline_m == cam.baseline_m

    def test_wrong_length(self):
        msg = SimpleNamespace(width=4, height=4, k=[1.0] * 8, d=[], r=[0.0] * 9, p=[0.0] * 12, distortion_model="plumb_bob")
        with pytest.raises(CalibrationError, match="K must have 9 values"):
            CameraInfo.from_msg(msg)


class TestCameraInfoMessages:
    def _msg(self, info, **extra):
        from types import SimpleNamespace

        fields = info.msg_fields()
        roi = SimpleNamespace(x_offset=0, y_offset=0, width=0, height=0, do_rectify=False)
        msg = SimpleNamespace(header=SimpleNamespace(frame_id="cam"), binning_x=0, binning_y=0, roi=roi, **fields)
        for k, v in extra.items():
            setattr(msg, k, v)
        return msg

    def test_binning_and_roi_are_honoured(self):
        from types import SimpleNamespace

        cam = StereoCamera.ideal(640, 480, focal_px=500.0, baseline_m=0.1)
        binned = StereoCamera.from_msgs(self._msg(cam.left, binning_x=2, binning_y=2), self._msg(cam.right, binning_x=2, binning_y=2))
        assert binned.image_size == (320, 240) and binned.focal_px == pytest.approx(250.0)
        assert binned.baseline_m == pytest.approx(0.1) and binned.cx == pytest.approx(cam.cx / 2)
        roi = SimpleNamespace(x_offset=100, y_offset=40, width=400, height=300, do_rectify=True)
        cropped = StereoCamera.from_msgs(self._msg(cam.left, roi=roi), self._msg(cam.right, roi=roi))
        assert cropped.image_size == (400, 300) and cropped.cx == pytest.approx(cam.cx - 100)
        assert cropped.cy == pytest.approx(cam.cy - 40) and cropped.focal_px == pytest.approx(500.0)
        bad = SimpleNamespace(x_offset=600, y_offset=0, width=100, height=100, do_rectify=False)
        with pytest.raises(CalibrationError, match="roi"):
            StereoCamera.from_msgs(self._msg(cam.left, roi=bad), self._msg(cam.right, roi=bad))

    def test_any_distortion_model_for_rectified_input(self):
        cam = StereoCamera.ideal(64, 48, focal_px=50.0, baseline_m=0.1)
        left, right = self._msg(cam.left, distortion_model="kannala_brandt"), self._msg(cam.right, distortion_model="fisheye62")
        loaded = StereoCamera.from_msgs(left, right)  # before: refused, although only P is used
        assert loaded.focal_px == pytest.approx(50.0)
        with pytest.raises(CalibrationError, match="cannot rectify with distortion model 'kannala_brandt'"):
            loaded.left.rectification_maps()


@pytest.mark.parametrize("fx, message", [
    (1e-300, r"projection fx = 1e-300 px is not a focal length of a 640x480 camera \(expected 32 .. 640000 px\)"),
    (1e12, r"projection fx = 1e\+12 px is not a focal length"),
])
def test_a_focal_length_that_is_no_camera_is_refused(fx, message):
    """camera_info with fx = 1e-300 passed the node's check and published DisparityImage.f = 0.0 with depth and
    points; every CameraInfo (YAML, messages in the node, bags, KITTI files) now goes through calib.checks."""
    msg = SimpleNamespace(width=640, height=480, k=[fx, 0, 320, 0, fx, 240, 0, 0, 1], d=[0.0] * 5,
                          r=[1, 0, 0, 0, 1, 0, 0, 0, 1], p=[fx, 0, 320, 0, 0, fx, 240, 0, 0, 0, 1, 0],
                          distortion_model="plumb_bob")
    with pytest.raises(CalibrationError, match=message):
        CameraInfo.from_msg(msg)


def test_a_baseline_of_a_kilometre_is_refused():
    with pytest.raises(CalibrationError, match=r"baseline 1000 m is outside 0.001 .. 100 m"):
        StereoCamera.ideal(640, 480, focal_px=500.0, baseline_m=1000.0)
