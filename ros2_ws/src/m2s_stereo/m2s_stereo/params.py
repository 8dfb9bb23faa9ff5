"""Parameter names, defaults, ranges and validation: defined once, used by the node, the YAML
config and the launch file (image_pipeline once declared one name and read another)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL_PATH = "model_path"
BACKEND = "backend"
MIN_DEPTH = "min_depth"
MAX_DEPTH = "max_depth"
PUBLISH_DISPARITY = "publish_disparity"
PUBLISH_DEPTH = "publish_depth"
PUBLISH_POINTS = "publish_points"
POINT_STRIDE = "point_stride"
POINTS_ORGANIZED = "points_organized"
POINT_COLORS = "point_colors"
SYNC_MODE = "sync_mode"
SLOP = "slop"
QUEUE_SIZE = "queue_size"
QOS = "qos"
DIAGNOSTICS_PERIOD = "diagnostics_period"
DIAGNOSTICS_WINDOW = "diagnostics_window"
STALE_TIMEOUT = "stale_timeout"
MONO16_MAX = "mono16_max"
BASELINE = "baseline"
ONNX_EXECUTION = "onnx_execution"
PUBLISH_CONFIDENCE = "publish_confidence"
CONFIDENCE_THRESHOLD = "confidence_threshold"
LR_CHECK = "lr_check"
LR_MAX_DIFF = "lr_max_diff"
TEMPORAL_FILTER = "temporal_filter"
TEMPORAL_ALPHA = "temporal_alpha"
TEMPORAL_DELTA = "temporal_delta"
TEMPORAL_PERSISTENCE = "temporal_persistence"
TEMPORAL_CONFIRM = "temporal_confirm"

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")
ONNX_EXECUTIONS = ("auto", "tensorrt", "cuda", "cpu")
SYNC_MODES = ("exact", "approximate")
QOS_CHOICES = ("auto", "sensor_data", "reliable")


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    description: str
    read_only: bool = False  # takes effect at start-up only
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None


PARAMS: tuple[Param, ...] = (
    Param(MODEL_PATH, "", "Model file: .engine (TensorRT), .onnx (onnxruntime) or a checkpoint directory (PyTorch)", True),
    Param(BACKEND, "auto", "Inference backend (the runtime that loads model_path); auto picks it from the file type",
          True, choices=BACKENDS),
    Param(ONNX_EXECUTION, "auto", "onnxruntime execution provider: auto (TensorRT, else CUDA, else CPU), tensorrt, "
          "cuda or cpu; TensorRT caches its engine beside the model", True, choices=ONNX_EXECUTIONS),
    Param(MIN_DEPTH, 0.1, "Nearest depth published, metres (closer is -Inf in the depth image, REP 117)",
          range=(0.0, 1000.0)),
    Param(MAX_DEPTH, 50.0, "Farthest depth published, metres (farther is +Inf in the depth image, REP 117)",
          range=(0.0, 10000.0)),
    Param(PUBLISH_DISPARITY, True, "Publish stereo_msgs/DisparityImage on 'disparity' (when subscribed)"),
    Param(PUBLISH_DEPTH, True, "Publish a 32FC1 depth image (m) on 'depth' (when subscribed)"),
    Param(PUBLISH_POINTS, True, "Publish sensor_msgs/PointCloud2 on 'points2' (when subscribed)"),
    Param(POINT_STRIDE, 1, "Keep every n-th row and column in the point cloud", range=(1, 16)),
    Param(POINTS_ORGANIZED, True, "Organised HxW cloud with NaN for invalid points, as stereo_image_proc (else valid points only)"),
    Param(POINT_COLORS, True, "Add packed rgb from the left image to the point cloud"),
    Param(SYNC_MODE, "exact", "Pair left/right by exact stamps, or approximately within 'slop'", True, choices=SYNC_MODES),
    Param(SLOP, 0.01, "Approximate sync: largest stamp difference of a pair, seconds", True, range=(0.0, 1.0)),
    Param(QUEUE_SIZE, 5, "Messages kept per side while waiting for a partner", True, range=(1, 100)),
    Param(QOS, "auto", "Input QoS: auto (best effort until the image publishers are seen; reliable when they all "
          "publish reliable, as rviz does), sensor_data (best effort, depth 5) or reliable", True, choices=QOS_CHOICES),
    Param(DIAGNOSTICS_PERIOD, 1.0, "Seconds between diagnostics messages and log lines", True, range=(0.1, 60.0)),
    Param(DIAGNOSTICS_WINDOW, 5.0, "Seconds of history behind the diagnostics' rates, counts and level", True,
          range=(1.0, 600.0)),
    Param(STALE_TIMEOUT, 0.0, "Seconds without input images before diagnostics report STALE; 0: five input "
          "periods, at least 0.5 s", range=(0.0, 600.0)),
    Param(PUBLISH_CONFIDENCE, True, "Publish the per-pixel confidence in [0, 1] (32FC1, the disparity's header) on "
          "'confidence' (when subscribed)"),
    Param(CONFIDENCE_THRESHOLD, 0.5, "Pixels whose confidence is below this are invalid in disparity, depth and points "
          "(NaN); 0 disables", range=(0.0, 1.0)),
    Param(LR_CHECK, False, "Left-right check: a second inference on the swapped, mirrored pair; pixels it does not "
          "confirm within lr_max_diff are invalid (doubles the inference time)"),
    Param(LR_MAX_DIFF, 1.0, "Left-right check: largest disagreement kept, px", range=(0.1, 100.0)),
    Param(TEMPORAL_FILTER, False, "Temporal filter: confidence-weighted running average per pixel, reset where the "
          "disparity jumps by more than temporal_delta (edges, scene changes)"),
    Param(TEMPORAL_ALPHA, 0.3, "Temporal filter: weight of the new frame (1 = no smoothing)", range=(0.01, 1.0)),
    Param(TEMPORAL_DELTA, 2.0, "Temporal filter: a larger change than this (px) resets the pixel", range=(0.01, 100.0)),
    Param(TEMPORAL_PERSISTENCE, 2, "Temporal filter: frames a pixel without a measurement keeps its last value",
          range=(0, 100)),
    Param(TEMPORAL_CONFIRM, 3, "Temporal filter: frames a jump less confident than the filtered value must last "
          "before the pixel follows it (1: at once; a confident jump is always followed at once)", range=(1, 100)),
    Param(MONO16_MAX, 65535, "mono16/16UC1 input: the raw value shown as white, for both images and every frame "
          "(e.g. 4095 for 12-bit cameras)", range=(1, 65535)),
    Param(BASELINE, 0.0, "Stereo baseline, metres, for a driver whose right camera_info has P[0,3] = 0 or > 0 (older "
          "RealSense, some OAK-D versions); 0: from the camera_info (P_R[0,3] = -fx B), as ROS wants", True,
          range=(0.0, 100.0)),
)
BY_NAME = {p.name: p for p in PARAMS}


def validate(name: str, value: Any) -> str | None:
    """None if ``value`` is acceptable for ``name``, else the reason."""
    p = BY_NAME.get(name)
    if p is None:
        return None
    if p.choices is not None and value not in p.choices:
        return f"{name} must be one of {', '.join(p.choices)}, got '{value}'"
    if p.range is not None and not (p.range[0] <= value <= p.range[1]):
        return f"{name} must be in [{p.range[0]}, {p.range[1]}], got {value}"
    return None


def validate_all(values: dict[str, Any]) -> list[str]:
    """All problems with a full parameter set (cross-parameter checks included)."""
    problems = [r for n, v in values.items() if (r := validate(n, v))]
    if not values.get(MODEL_PATH):
        problems.append(f"{MODEL_PATH} is empty: set it to a .engine, .onnx or checkpoint directory")
    elif not Path(values[MODEL_PATH]).exists():
        problems.append(f"{MODEL_PATH} '{values[MODEL_PATH]}' does not exist")
    else:
        from m2s_export.errors import RuntimeBackendError
        from m2s_export.runtime import runtime_backend

        try:
            runtime_backend(values[MODEL_PATH], values.get(BACKEND, "auto"))
        except RuntimeBackendError as exc:
            problems.append(f"{BACKEND}: {exc}")
    if values.get(MIN_DEPTH, 0) >= values.get(MAX_DEPTH, 1):
        problems.append(f"{MIN_DEPTH} ({values.get(MIN_DEPTH)}) must be below {MAX_DEPTH} ({values.get(MAX_DEPTH)})")
    return problems
