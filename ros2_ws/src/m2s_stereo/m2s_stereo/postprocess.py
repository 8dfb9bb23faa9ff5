"""What happens to a frame between the runtime and the outputs, shared by the node and the offline
replay (so ``m2s-eval-bag`` measures what the node publishes):

1. inference: disparity and confidence (:meth:`StereoRuntime.infer_with_confidence`);
2. optional left-right check (``lr_check``): a second inference on the swapped, mirrored pair
   gives the right view's disparity; left pixels it does not confirm within ``lr_max_diff`` px
   (:func:`calib.geometry.left_right_consistency`) become invalid;
3. confidence threshold (``confidence_threshold``, 0 disables): pixels below it become invalid;
4. optional temporal filter (``temporal_filter``, :mod:`m2s_stereo.temporal`).

Invalid is NaN in the disparity, which the camera model turns into NaN depth and NaN points
(DESIGN.md §4). A model without a confidence output (exported before models had one) gets no
threshold and no confidence topic; the node says so at start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from calib.geometry import left_right_consistency
from m2s_stereo import params as P
from m2s_stereo.temporal import TemporalConfig, TemporalFilter


@dataclass
class Processed:
    disparity: np.ndarray  # HxW float32 px; NaN (masked, or no answer) and <= 0 are invalid
    confidence: np.ndarray | None  # HxW float32 in [0, 1] (None: the model has none)
    masked_confidence: int  # pixels below the confidence threshold (set invalid)
    masked_lr: int  # pixels the left-right check did not confirm (set invalid)
    raw: np.ndarray | None = None  # the model's disparity before any masking or filtering (``keep_raw`` only)


class FramePostprocess:
    """Steps 2-4 with their settings from the node's parameter values (``update`` on a change)."""

    def __init__(self, values: dict[str, Any], keep_raw: bool = False) -> None:
        self.keep_raw = keep_raw  # evaluation: also the unmasked disparity (a copy per frame; the node needs none)
        self.filter: TemporalFilter | None = None
        self.values: dict[str, Any] = {}
        self.update(values)

    def update(self, values: dict[str, Any]) -> None:
        cfg = TemporalConfig(alpha=float(values[P.TEMPORAL_ALPHA]), delta=float(values[P.TEMPORAL_DELTA]),
                             persistence=int(values[P.TEMPORAL_PERSISTENCE]), confirm=int(values[P.TEMPORAL_CONFIRM]))
        if not values[P.TEMPORAL_FILTER]:
            self.filter = None
        elif self.filter is None or self.filter.config != cfg:
            fresh = TemporalFilter(cfg)  # a new setting starts from a clean state
            fresh.warm_up()  # compiled here (parameter callback), not on the next frame
            self.filter = fresh
        self.values = dict(values)

    def reset(self) -> None:
        if self.filter is not None:
            self.filter.reset()

    def __call__(self, runtime: Any, left: np.ndarray, right: np.ndarray) -> Processed:
        v, filt = self.values, self.filter  # read once: ros2 param set may replace them from another thread
        out = runtime.infer_with_confidence(left, right)
        disparity = out.disparity  # a fresh array from the runtime: masked in place; <= 0 is invalid too
        raw = disparity.copy() if self.keep_raw else None
        confidence = out.confidence
        masked_lr = masked_conf = 0
        if v[P.LR_CHECK]:
            right_view = runtime.infer_right_view(left, right)
            consistent, _ = left_right_consistency(disparity, right_view.disparity, float(v[P.LR_MAX_DIFF]))
            masked_lr = int(np.count_nonzero(~consistent))
            np.copyto(disparity, np.float32(np.nan), where=~consistent)
        threshold = float(v[P.CONFIDENCE_THRESHOLD])
        if confidence is not None and threshold > 0:
            low = confidence < threshold
            masked_conf = int(np.count_nonzero(low))
            np.copyto(disparity, np.float32(np.nan), where=low)
        if filt is not None:
            disparity = filt(disparity, confidence)  # it reads <= 0 as no measurement itself
        return Processed(disparity, confidence, masked_conf, masked_lr, raw)


def disparity_scale(runtime: Any, width: int) -> float:
    """How much wider an image ``width`` px wide is than the runtime's input (1 for a runtime that runs at
    the image's own size): its disparities, and its maximum disparity, scale by this."""
    size = getattr(runtime, "input_size", None)
    return width / size[1] if size else 1.0


def defaults() -> dict[str, Any]:
    """The node's default parameter values (what the offline replay uses unless told otherwise)."""
    return {p.name: p.default for p in P.PARAMS}


__all__ = ["FramePostprocess", "Processed", "defaults", "disparity_scale"]
