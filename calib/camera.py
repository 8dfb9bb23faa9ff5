"""The stereo camera model: one place that knows K, D, R, P of both cameras, f and B.

Rectified stereo geometry follows ROS ``sensor_msgs/CameraInfo``: ``P_R[0, 3] = -fx * B`` and
the left camera's projection has ``P_L[0, 3] = 0``. Everything downstream (synthesis,
evaluation, the ROS node) turns disparity into depth and points through :class:`StereoCamera`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from calib import geometry
from calib.checks import check_baseline, check_pose, check_projection, check_rotation
from calib.camera_info_io import format_camera_info_yaml, read_camera_info_yaml
from calib.errors import CalibrationError
from calib.safe_files import write_text_atomic

_SUPPORTED_DISTORTION = ("plumb_bob", "rational_polynomial", "equidistant")


def _as_matrix(name: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64).reshape(shape)
    except (TypeError, ValueError):
        size = np.size(value) if value is not None else 0
        raise CalibrationError(f"{name} must have {int(np.prod(shape))} values {shape}, got {size}") from None
    if not np.all(np.isfinite(array)):
        raise CalibrationError(f"{name} contains NaN or inf")
    return array


def _binning_and_roi(msg: Any, info: CameraInfo) -> tuple[int, int, tuple[int, int, int, int] | None]:
    """``binning_x``, ``binning_y`` (0 means 1) and the ROI of a CameraInfo message (None when it is
    unset: all zeros, or the full image), checked."""
    bx = int(getattr(msg, "binning_x", 0) or 1)
    by = int(getattr(msg, "binning_y", 0) or 1)
    if bx < 1 or by < 1:
        raise CalibrationError(f"camera_info binning must be >= 1, got {bx}x{by}")
    roi = getattr(msg, "roi", None)
    box = None
    if roi is not None:
        x, y, w, h = (int(getattr(roi, k, 0)) for k in ("x_offset", "y_offset", "width", "height"))
        full = (x, y, w, h) in ((0, 0, 0, 0), (0, 0, info.width, info.height))
        if not full:
            if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > info.width or y + h > info.height:
                raise CalibrationError(f"camera_info roi x={x} y={y} {w}x{h} does not fit in the "
                                       f"{info.width}x{info.height} image")
            box = (x, y, w, h)
    return bx, by, box


@dataclass(frozen=True)
class CameraInfo:
    """One camera of the pair, as in ``sensor_msgs/CameraInfo``.

    K: 3x3 intrinsics of the raw image; D: distortion coefficients; R: 3x3 rectification
    rotation; P: 3x4 projection of the rectified image. Sizes in pixels.
    """

    width: int
    height: int
    K: np.ndarray
    D: np.ndarray
    R: np.ndarray
    P: np.ndarray
    distortion_model: str = "plumb_bob"
    camera_name: str = ""

    def __post_init__(self) -> None:
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise CalibrationError(f"camera '{self.camera_name}': image size must be positive, got {self.width}x{self.height}")
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        object.__setattr__(self, "K", _as_matrix("K", self.K, (3, 3)))
        object.__setattr__(self, "D", _as_matrix("D", self.D, (-1,)))
        object.__setattr__(self, "R", _as_matrix("R", self.R, (3, 3)))
        object.__setattr__(self, "P", _as_matrix("P", self.P, (3, 4)))
        # any distortion model is accepted: rectified images need only P; rectification_maps checks it
        if self.P[0, 0] <= 0 or self.P[1, 1] <= 0:
            raise CalibrationError(
                f"camera '{self.camera_name}': projection focal lengths must be positive, "
                f"got fx={self.P[0, 0]} fy={self.P[1, 1]} (is P all zeros, i.e. an uncalibrated camera?)"
            )
        check_projection(self.P, self.width, self.height, f"camera '{self.camera_name}'")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CameraInfo):
            return NotImplemented
        return (
            (self.width, self.height, self.distortion_model, self.camera_name)
            == (other.width, other.height, other.distortion_model, other.camera_name)
            and all(np.array_equal(getattr(self, k), getattr(other, k)) for k in "KDRP")
        )

    __hash__ = None  # type: ignore[assignment]  # mutable numpy payload

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) in pixels, OpenCV's order."""
        return (self.width, self.height)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> CameraInfo:
        """Read a ``camera_calibration_parsers`` YAML file."""
        return cls(**read_camera_info_yaml(path))

    def to_yaml_text(self) -> str:
        return format_camera_info_yaml(
            width=self.width, height=self.height, camera_name=self.camera_name,
            distortion_model=self.distortion_model, K=self.K, D=self.D, R=self.R, P=self.P,
        )

    def to_yaml(self, path: str | os.PathLike) -> None:
        """Write a ``camera_calibration_parsers`` YAML file (atomically)."""
        write_text_atomic(path, self.to_yaml_text())

    @classmethod
    def from_msg(cls, msg: Any) -> CameraInfo:
        """From a ``sensor_msgs/CameraInfo`` (ROS 2 lower-case ``k d r p`` or ROS 1 ``K D R P``)."""

        def field(name: str) -> Any:
            for attr in (name.lower(), name.upper()):
                if hasattr(msg, attr):
                    return getattr(msg, attr)
            raise CalibrationError(f"camera_info message has no field '{name.lower()}'")

        frame = getattr(getattr(msg, "header", None), "frame_id", "")
        info = cls(
            width=field("width"), height=field("height"), K=field("k"), D=field("d"),
            R=field("r"), P=field("p"), distortion_model=field("distortion_model") or "plumb_bob",
            camera_name=frame,
        )
        return info.binned_roi(*_binning_and_roi(msg, info))

    def binned_roi(self, binning_x: int = 1, binning_y: int = 1, roi: tuple[int, int, int, int] | None = None) -> CameraInfo:
        """The camera of the image a driver publishes with ``binning`` and a region of interest
        (``sensor_msgs/CameraInfo`` semantics, as image_geometry's PinholeCameraModel): the ROI
        (x, y, width, height, full-resolution pixels) crops first, then binning divides."""
        if binning_x == binning_y == 1 and roi is None:
            return self
        K, P = self.K.copy(), self.P.copy()
        w, h = self.width, self.height
        if roi is not None:
            x, y, w, h = roi
            K[0, 2] -= x
            K[1, 2] -= y
            P[0, 2] -= x
            P[1, 2] -= y
        scale = np.diag([1.0 / binning_x, 1.0 / binning_y, 1.0])
        return CameraInfo(w // binning_x, h // binning_y, scale @ K, self.D, self.R, scale @ P,
                          self.distortion_model, self.camera_name)

    def msg_fields(self) -> dict[str, Any]:
        """Field values for a ROS 2 ``sensor_msgs/CameraInfo`` (``msg.k = fields['k']`` ...)."""
        return {
            "width": self.width, "height": self.height, "distortion_model": self.distortion_model,
            "d": [float(x) for x in self.D], "k": [float(x) for x in self.K.ravel()],
            "r": [float(x) for x in self.R.ravel()], "p": [float(x) for x in self.P.ravel()],
        }

    def rectification_maps(self, map_type: int = cv2.CV_32FC1) -> tuple[np.ndarray, np.ndarray]:
        """``cv2.initUndistortRectifyMap`` maps from raw to rectified pixels of this camera."""
        if self.distortion_model not in _SUPPORTED_DISTORTION:
            raise CalibrationError(
                f"camera '{self.camera_name}': cannot rectify with distortion model '{self.distortion_model}'; "
                f"use one of {', '.join(_SUPPORTED_DISTORTION)} (rectified input needs no model: only P is used)"
            )
        size = self.image_size
        if self.distortion_model == "equidistant":
            return cv2.fisheye.initUndistortRectifyMap(self.K, self.D[:4], self.R, self.P, size, map_type)
        return cv2.initUndistortRectifyMap(self.K, self.D, self.R, self.P, size, map_type)

    def scaled(self, width: int, height: int) -> CameraInfo:
        """The same camera for an image resized to ``width`` x ``height`` (K and P rows scaled)."""
        sx, sy = width / self.width, height / self.height
        scale = np.diag([sx, sy, 1.0])
        return CameraInfo(width, height, scale @ self.K, self.D, self.R, scale @ self.P,
                          self.distortion_model, self.camera_name)


@dataclass(frozen=True)
class StereoCamera:
    """A rectified, horizontal stereo pair. Left camera is the reference.

    Derived quantities: ``fx, fy, cx, cy`` from ``P_L``; focal ``f = P_R[0,0]`` and baseline
    ``B = -P_R[0,3] / P_R[0,0]`` from the right projection (> 0 for a left/right pair);
    ``doffs = cx_R - cx_L`` (0 with ``CALIB_ZERO_DISPARITY``).
    """

    left: CameraInfo
    right: CameraInfo

    # Rectified cameras share rows; differences above this relative tolerance mean the
    # camera_info describes raw (unrectified) images or two unrelated cameras.
    _REL_TOL = 1e-3

    def __post_init__(self) -> None:
        l, r = self.left, self.right
        if l.image_size != r.image_size:
            raise CalibrationError(
                f"left and right image sizes differ: {l.width}x{l.height} vs {r.width}x{r.height}"
            )
        for name, a, b in (("fx", l.P[0, 0], r.P[0, 0]), ("fy", l.P[1, 1], r.P[1, 1]), ("cy", l.P[1, 2], r.P[1, 2])):
            if abs(a - b) > self._REL_TOL * max(abs(a), abs(b), 1.0):
                raise CalibrationError(
                    f"left and right rectified projections disagree on {name} ({a:.6g} vs {b:.6g}): "
                    "the camera_info must describe a rectified pair (P from stereoRectify)"
                )
        # A vertical offset up to 1 % of the baseline term is tolerated (KITTI's rectified
        # projections carry ~0.5 %); more means vertical stereo, which is not supported.
        if abs(r.P[1, 3]) > max(self._REL_TOL * abs(r.P[0, 0]), 0.01 * abs(r.P[0, 3])):
            raise CalibrationError(
                f"right projection has P[1,3]={r.P[1, 3]:.6g} (vs P[0,3]={r.P[0, 3]:.6g}): "
                "vertical stereo is not supported"
            )
        if abs(l.P[0, 3]) > self._REL_TOL * abs(l.P[0, 0]):
            raise CalibrationError(
                f"left projection has P[0,3]={l.P[0, 3]:.6g}; the left camera must be the reference (P_L[0,3] = 0)"
            )
        if r.P[0, 3] == 0:
            raise CalibrationError(
                "the right camera_info has P[0,3] = 0: it carries no baseline (ROS wants -fx B there; some drivers, "
                "e.g. older RealSense and OAK-D versions, publish 0). Give the baseline: the node's 'baseline' "
                "parameter, or --baseline B (metres) on the command line")
        if not r.P[0, 3] < 0:
            raise CalibrationError(
                f"the right camera_info has P[0,3] = {r.P[0, 3]:.6g} > 0, the opposite of the ROS convention (-fx B, "
                f"here B = {-r.P[0, 3] / r.P[0, 0]:.6g} m): left and right are swapped, or the driver publishes +fx B "
                "(some OAK-D versions). If left and right are right, give the baseline: the node's 'baseline' "
                "parameter, or --baseline B (metres) on the command line")
        check_baseline(float(-r.P[0, 3] / r.P[0, 0]))

    # -- derived geometry -------------------------------------------------------------------
    @property
    def image_size(self) -> tuple[int, int]:
        return self.left.image_size

    def check_image_size(self, width: int, height: int) -> None:
        """Raise :class:`CalibrationError` unless images of ``width`` x ``height`` are what this
        calibration describes (a camera_info for another resolution gives wrong depth everywhere)."""
        if (int(width), int(height)) != self.image_size:
            w, h = self.image_size
            raise CalibrationError(f"camera_info is {w}x{h} but images are {width}x{height}")

    @property
    def fx(self) -> float:
        return float(self.left.P[0, 0])

    @property
    def fy(self) -> float:
        return float(self.left.P[1, 1])

    @property
    def cx(self) -> float:
        return float(self.left.P[0, 2])

    @property
    def cy(self) -> float:
        return float(self.left.P[1, 2])

    @property
    def focal_px(self) -> float:
        """f of ``Z = f B / d``, from the right projection."""
        return float(self.right.P[0, 0])

    @property
    def baseline_m(self) -> float:
        return float(-self.right.P[0, 3] / self.right.P[0, 0])

    @property
    def doffs(self) -> float:
        return float(self.right.P[0, 2] - self.left.P[0, 2])

    @property
    def q_matrix(self) -> np.ndarray:
        return geometry.q_matrix(self.focal_px, self.cx, self.cy, self.baseline_m, self.doffs)

    def disparity_to_depth(self, disparity: np.ndarray, min_depth: float | None = None,
                           max_depth: float | None = None) -> np.ndarray:
        """HxW float32 depth (m), NaN where invalid; see :func:`calib.geometry.disparity_to_depth`."""
        self._check_size(disparity)
        return geometry.disparity_to_depth(disparity, self.focal_px, self.baseline_m, self.doffs, min_depth, max_depth)

    def depth_to_disparity(self, depth: np.ndarray) -> np.ndarray:
        self._check_size(depth)
        return geometry.depth_to_disparity(depth, self.focal_px, self.baseline_m, self.doffs)

    def disparity_to_points(self, disparity: np.ndarray, colors: np.ndarray | None = None, *,
                            organized: bool = True, stride: int = 1, min_depth: float | None = None,
                            max_depth: float | None = None) -> geometry.PointCloud:
        """Points in the left rectified optical frame; see :func:`calib.geometry.disparity_to_points`."""
        self._check_size(disparity)
        return geometry.disparity_to_points(
            disparity, fx=self.focal_px, fy=self.fy, cx=self.cx, cy=self.cy, baseline_m=self.baseline_m,
            doffs=self.doffs, colors=colors, organized=organized, stride=stride,
            min_depth=min_depth, max_depth=max_depth,
        )

    def depth_to_points(self, depth: np.ndarray, colors: np.ndarray | None = None, *, organized: bool = True,
                        stride: int = 1, out: np.ndarray | None = None) -> geometry.PointCloud:
        """Points from an already computed depth map (m, NaN invalid); see :func:`calib.geometry.depth_to_points`."""
        self._check_size(depth)
        return geometry.depth_to_points(depth, fx=self.focal_px, fy=self.fy, cx=self.cx, cy=self.cy, colors=colors,
                                        organized=organized, stride=stride, out=out)

    def lidar_to_disparity(self, points: np.ndarray, T_cam_lidar: np.ndarray, **kwargs: Any) -> geometry.SparseDisparity:
        """Sparse disparity labels (left image, px) from LiDAR points (Nx3, the LiDAR frame, m) and the
        extrinsic ``T_cam_lidar`` (4x4: LiDAR -> the left camera's optical frame, before rectification):
        the points are moved into the rectified left frame (camera_info R) and projected with
        :func:`calib.geometry.points_to_sparse_disparity` (its z-buffer ``kwargs`` too)."""
        T = check_pose(T_cam_lidar, "T_cam_lidar")
        R = check_rotation(self.left.R, "the left camera_info R")
        pts = np.asarray(points, np.float64)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise CalibrationError(f"points must be Nx3, got shape {pts.shape}")
        rect = (R @ (pts @ T[:3, :3].T + T[:3, 3]).T).T
        w, h = self.image_size
        return geometry.points_to_sparse_disparity(rect, fx=self.fx, fy=self.fy, cx=self.cx, cy=self.cy,
                                                   fb=self.focal_px * self.baseline_m, doffs=self.doffs, width=w,
                                                   height=h, **kwargs)

    def fill_outputs(self, disparity: np.ndarray, **outputs: Any) -> None:
        """Shifted disparity, depth, points and packed colours of one frame into the caller's
        buffers, with this pair's fx, fy, cx, cy, B and doffs; see :func:`calib.geometry.fill_outputs`."""
        self._check_size(disparity)
        geometry.fill_outputs(disparity, fx=self.focal_px, fy=self.fy, cx=self.cx, cy=self.cy,
                              baseline_m=self.baseline_m, doffs=self.doffs, **outputs)

    def _check_size(self, image: np.ndarray) -> None:
        h, w = np.shape(image)[:2]
        if (w, h) != self.image_size:
            raise CalibrationError(
                f"image is {w}x{h} but the camera model is {self.image_size[0]}x{self.image_size[1]}; "
                "use StereoCamera.scaled() for resized images"
            )

    def scaled(self, width: int, height: int) -> StereoCamera:
        """The same pair for images resized to ``width`` x ``height``; disparities scale with width."""
        return StereoCamera(self.left.scaled(width, height), self.right.scaled(width, height))

    # -- construction / serialisation ---------------------------------------------------------
    @classmethod
    def from_yaml(cls, left: str | os.PathLike, right: str | os.PathLike) -> StereoCamera:
        return cls(CameraInfo.from_yaml(left), CameraInfo.from_yaml(right))

    @classmethod
    def from_dir(cls, directory: str | os.PathLike) -> StereoCamera:
        """Read ``left.yaml`` and ``right.yaml`` from a calibration directory (as ``m2s-calib stereo`` writes)."""
        directory = Path(directory)
        missing = [n for n in ("left.yaml", "right.yaml") if not (directory / n).is_file()]
        if missing:
            raise CalibrationError(f"calibration directory {directory} lacks {', '.join(missing)}")
        return cls.from_yaml(directory / "left.yaml", directory / "right.yaml")

    def to_dir(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        self.left.to_yaml(directory / "left.yaml")
        self.right.to_yaml(directory / "right.yaml")

    @classmethod
    def from_msgs(cls, left_msg: Any, right_msg: Any, baseline_m: float | None = None) -> StereoCamera:
        """From two ``sensor_msgs/CameraInfo`` messages (or objects with the same fields); ``baseline_m``: see
        :meth:`with_baseline`."""
        return cls.with_baseline(CameraInfo.from_msg(left_msg), CameraInfo.from_msg(right_msg), baseline_m)

    @classmethod
    def with_baseline(cls, left: CameraInfo, right: CameraInfo, baseline_m: float | None = None) -> StereoCamera:
        """The pair, with ``baseline_m`` (> 0; None or 0: as the camera_info says) the baseline of a driver whose
        right camera_info carries none (P[0,3] = 0) or the wrong sign: it sets P_R[0,3] = -fx B. A camera_info
        that does carry one must agree with it (within 1 %)."""
        if baseline_m:
            check_baseline(float(baseline_m))
            fx, tx = float(right.P[0, 0]), float(right.P[0, 3])
            if tx < 0 and abs(-tx / fx - baseline_m) > 0.01 * baseline_m:
                raise CalibrationError(f"the right camera_info gives a baseline of {-tx / fx:.6g} m, the 'baseline' "
                                       f"given is {baseline_m:.6g} m: drop the option (the camera_info is right) or "
                                       "fix the calibration")
            projection = right.P.copy()
            projection[0, 3] = -fx * float(baseline_m)
            right = dataclasses.replace(right, P=projection)
        return cls(left, right)

    @classmethod
    def from_opencv(
        cls,
        image_size: tuple[int, int],
        K1: np.ndarray, D1: np.ndarray, R1: np.ndarray, P1: np.ndarray,
        K2: np.ndarray, D2: np.ndarray, R2: np.ndarray, P2: np.ndarray,
        distortion_model: str | None = None,
        names: tuple[str, str] = ("left", "right"),
    ) -> StereoCamera:
        """From ``cv2.stereoCalibrate`` (K, D) + ``cv2.stereoRectify`` (R, P) results; size is (w, h)."""
        w, h = image_size

        def model(d: np.ndarray) -> str:
            if distortion_model is not None:
                return distortion_model
            return "rational_polynomial" if np.size(d) >= 8 else "plumb_bob"

        return cls(
            CameraInfo(w, h, K1, np.ravel(D1), R1, P1, model(D1), names[0]),
            CameraInfo(w, h, K2, np.ravel(D2), R2, P2, model(D2), names[1]),
        )

    @classmethod
    def pinhole(cls, width: int, height: int, *, fx: float, fy: float, cx: float, cy: float,
                baseline_m: float) -> StereoCamera:
        """A rectified pair from known intrinsics (a factory-calibrated camera's numbers): K = P[:, :3] of
        both, no distortion, R = I, ``P_R[0, 3] = -fx B`` (the ROS convention); checked as every pair is."""
        k = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)
        p_left = np.hstack([k, np.zeros((3, 1))])
        p_right = p_left.copy()
        p_right[0, 3] = -fx * baseline_m
        return cls(CameraInfo(width, height, k, np.zeros(5), np.eye(3), p_left, "plumb_bob", "left"),
                   CameraInfo(width, height, k, np.zeros(5), np.eye(3), p_right, "plumb_bob", "right"))

    @classmethod
    def ideal(cls, width: int, height: int, focal_px: float, baseline_m: float,
              cx: float | None = None, cy: float | None = None) -> StereoCamera:
        """An already-rectified, distortion-free pair (synthetic data, tests, datasets given as f and B)."""
        return cls.pinhole(width, height, fx=focal_px, fy=focal_px, cx=(width - 1) / 2.0 if cx is None else cx,
                           cy=(height - 1) / 2.0 if cy is None else cy, baseline_m=baseline_m)
