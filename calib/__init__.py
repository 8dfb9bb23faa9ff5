"""Stereo camera model, calibration and disparity/depth/points geometry.

numpy + OpenCV only (numba, where installed, compiles the per-frame output pass):
this package runs on the robot without the training stack.
"""

from calib.camera import CameraInfo, StereoCamera
from calib.errors import CalibrationError, DataError, Mono2StereoError, ShapeError
from calib.geometry import (
    depth_to_disparity,
    disparity_to_depth,
    disparity_to_points,
    fill_outputs,
    q_matrix,
)

__all__ = [
    "CalibrationError",
    "CameraInfo",
    "DataError",
    "Mono2StereoError",
    "ShapeError",
    "StereoCamera",
    "depth_to_disparity",
    "disparity_to_depth",
    "disparity_to_points",
    "fill_outputs",
    "q_matrix",
]
