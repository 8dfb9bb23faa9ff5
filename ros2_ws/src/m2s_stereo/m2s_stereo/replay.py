"""``m2s-eval-bag``: replay a stereo bag through the node (live, real DDS) or the runtime (offline)
and report accuracy, confidence, temporal stability, latency, throughput and dropped pairs.

live: the bag's messages are published on loopback DDS into a :class:`StereoNode` in this
process, restamped at publish time, at the recorded rate x ``--rate`` or (``--rate 0``) as fast
as the node answers; outputs (disparity and confidence) are matched by stamp; latency = output
received - stamp. offline: the runtime runs directly on the bag's pairs (no DDS), through the
node's own post-processing (:mod:`m2s_stereo.postprocess`: confidence threshold, left-right
check, temporal filter) with the same parameters (``--param NAME=VALUE``, the node's defaults
otherwise), so both modes measure what the node publishes.

Accuracy uses whatever GT the bag holds (gt/disparity: EPE, D1, bad-1/2/3; gt/depth: abs-rel and
delta<1.25 on depth, plus disparity metrics through the camera model), on the pixels the node
published, with their ``density`` (the fraction of the GT pixels that got a disparity: the
confidence threshold and the left-right check leave holes). Without GT (and with
``--label-free`` on frames with GT too): label-free figures (:func:`calib.metrics.label_free_metrics`:
the photometric error of the right view warped by the disparity, the left-right consistency rate,
the share of pixels at the disparity range limits). With a confidence: its sparsification curves (:func:`calib.metrics.sparsification`).
On a sequence: ``flicker`` (mean |d_t - d_t-1| on pixels whose GT did not change) and the step
response (frames until the error settles after the GT changes). Writes report.json, report.md
and PNG plots.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from calib.console import (
    CliParser,
    add_common_flags,
    non_negative_float,
    non_negative_int,
    positive_float,
    run_command,
)
from calib.errors import CalibrationError
from calib.figures import Panel, confidence_panel, disparity_panel, image_panel, panel_figure, stereo_result_figure
from calib.metrics import (
    MetricAccumulator,
    SparsificationAccumulator,
    disparity_metrics,
    LABEL_FREE_FIGURES,
    label_free_metrics,
    nan_mean,
    sparsification_plot,
)
from calib.safe_files import OwnedOutput, dumps_json, write_json_atomic, write_text_atomic
from calib.sgbm import SearchRange, fill_invalid, sgbm_disparity, sgbm_right_view
from m2s_stereo import params as P
from m2s_stereo.bag_tools import BagError, Frame, TopicNames, add_topic_flags, read_frames
from m2s_stereo.postprocess import FramePostprocess, defaults, disparity_scale

log = logging.getLogger("m2s-eval-bag")


def depth_metrics(pred_depth: np.ndarray, gt_depth: np.ndarray) -> dict[str, float]:
    """abs-rel and delta < 1.25 on pixels with finite positive GT depth and a finite prediction."""
    valid = np.isfinite(gt_depth) & (gt_depth > 0)
    n = int(valid.sum())
    if not n:
        return {"depth_pixels": 0, "abs_rel": float("nan"), "delta1": float("nan")}
    p, g = pred_depth[valid], gt_depth[valid]
    ok = np.isfinite(p) & (p > 0)
    ratio = np.where(ok, np.maximum(p / g, g / np.where(ok, p, 1)), np.inf)
    return {"depth_pixels": n, "abs_rel": float(np.mean(np.where(ok, np.abs(p - g) / g, 1.0))),
            "delta1": float(np.mean(ratio < 1.25))}


SETTLE_TOLERANCE = (1.1, 0.05)  # settled: EPE <= 1.1 x the segment's steady EPE + 0.05 px
CHANGED_FRACTION = 0.1  # a frame whose GT changed on more than 10 % of its pixels starts a new scene


class Evaluation:
    """Accumulates accuracy over frames (whatever GT each frame has), the confidence's sparsification
    and, on a sequence, flicker and step response."""

    def __init__(self, label_free: bool = False, max_disparity: float | None = None) -> None:
        self.label_free_always = label_free  # also on frames with GT (to compare the two)
        self.max_disparity = max_disparity
        self.label_free: list[dict[str, float]] = []
        self.unscorable: list[str] = []  # why frames could not be scored without GT
        self.disp = MetricAccumulator()
        self.confidence = SparsificationAccumulator()
        self.depth: list[dict[str, float]] = []
        self.per_frame: list[dict[str, Any]] = []
        self._previous: tuple[np.ndarray, np.ndarray] | None = None  # (gt, prediction) of the last frame
        self.flicker: list[float] = []
        self.scene_starts: list[int] = []  # indices into per_frame where the GT changed

    def camera_max_disparity(self, frame: Frame, runtime: Any) -> float | None:
        """The model's maximum disparity in the camera's pixels (the node scales it the same way): the
        model's is at the exported input width."""
        if self.max_disparity is None:
            return None
        return float(self.max_disparity) * disparity_scale(runtime, frame.left.shape[1])

    def _label_free(self, frame: Frame, published: np.ndarray, predicted: np.ndarray, runtime: Any,
                    raw: np.ndarray | None) -> dict[str, Any]:
        """Label-free figures on the published pixels (with their share of the image), on all the model's
        pixels (before the confidence / LR masks), and of OpenCV SGBM on the same pair, the baseline."""
        right_view = runtime.infer_right_view(frame.left, frame.right).disparity if runtime is not None else None
        limit = self.camera_max_disparity(frame, runtime)
        lf = label_free_metrics(frame.left, frame.right, published, right_view, limit)
        figures: dict[str, Any] = {k: lf[k] for k in LABEL_FREE_FIGURES if k in lf}
        figures["published_share"] = float(predicted.mean())
        if runtime is not None:
            full = raw if raw is not None else runtime.infer(frame.left, frame.right)
            every = label_free_metrics(frame.left, frame.right, full, right_view, limit)
            figures.update({f"{k}_all": every[k] for k in LABEL_FREE_FIGURES if k in every})
        # the fair baseline searches what the model can answer on this camera (192 px without a model)
        search = SearchRange.covering(limit, "the model's range in the camera's pixels") if limit else \
            SearchRange(192, "the default 192 px (no model range)")
        sgbm = sgbm_disparity(frame.left, frame.right, search)
        sgbm_right = sgbm_right_view(frame.left, frame.right, search)
        base = label_free_metrics(frame.left, frame.right, sgbm, sgbm_right, limit)
        figures.update({f"sgbm_{k}": base[k] for k in LABEL_FREE_FIGURES if k in base})
        dense = label_free_metrics(frame.left, frame.right, fill_invalid(sgbm), fill_invalid(sgbm_right), limit)
        figures.update({f"sgbm_{k}_all": dense[k] for k in LABEL_FREE_FIGURES if k in dense})  # on all pixels
        figures["sgbm_share"] = float(np.isfinite(sgbm).mean())
        figures["sgbm_search_px"] = search.px
        if "unscorable" in lf:
            figures["unscorable"] = lf["unscorable"]
        return figures

    def add(self, frame: Frame, disp: np.ndarray, index: int, runtime: Any = None,
            confidence: np.ndarray | None = None, raw: np.ndarray | None = None) -> dict[str, Any]:
        """``disp`` as published: NaN (or <= 0) where the node gives no disparity; ``raw``: the model's
        disparity before the node's masks (computed with ``runtime`` when not given)."""
        row: dict[str, Any] = {"frame": index, "stamp_ns": frame.stamp_ns}
        gt = frame.gt_disparity
        if gt is None and frame.gt_depth is not None:
            gt = frame.camera.depth_to_disparity(frame.gt_depth)
        with np.errstate(invalid="ignore"):
            predicted = np.isfinite(disp) & (disp > 0)
        row["published_pixels"] = int(predicted.sum())
        if raw is not None:  # the model's own output, before the node's masks (offline)
            with np.errstate(invalid="ignore"):
                row["model_pixels"] = int((np.isfinite(raw) & (raw > 0)).sum())
        if gt is not None:
            row.update(self.disp.add(disp, gt, mask=predicted))
            with np.errstate(invalid="ignore"):
                has_gt = np.isfinite(gt) & (gt > 0)
            row["density"] = float((predicted & has_gt).sum() / max(int(has_gt.sum()), 1))
            if confidence is not None:
                self.confidence.add(disp, gt, confidence, mask=predicted)
            self._temporal(gt, np.where(predicted, disp, np.nan), row)
            if frame.gt_depth is not None:
                d = depth_metrics(frame.camera.disparity_to_depth(disp), frame.gt_depth)
                self.depth.append(d)
                row.update(d)
        if gt is None or self.label_free_always:
            figures = self._label_free(frame, np.where(predicted, disp, np.nan), predicted, runtime, raw)
            if "unscorable" in figures:  # NaN figures, left out of the means and counted, never a good score
                self.unscorable.append(figures.pop("unscorable"))
                row["unscorable"] = self.unscorable[-1]
            row.update(figures)
            self.label_free.append(figures)
        self.per_frame.append(row)
        return row

    def _temporal(self, gt: np.ndarray, pred: np.ndarray, row: dict[str, Any]) -> None:
        previous, self._previous = self._previous, (gt, pred)
        if previous is None or previous[0].shape != gt.shape:
            self.scene_starts.append(len(self.per_frame))
            return
        with np.errstate(invalid="ignore"):
            both = np.isfinite(gt) & np.isfinite(previous[0])
            same = both & (np.abs(gt - previous[0]) <= 1e-3)
        if both.sum() - same.sum() > CHANGED_FRACTION * max(int(both.sum()), 1):
            self.scene_starts.append(len(self.per_frame))
            row["scene_change"] = True
            return
        stable = same & np.isfinite(pred) & np.isfinite(previous[1])
        if stable.any():
            row["flicker"] = float(np.abs(pred[stable] - previous[1][stable]).mean())
            self.flicker.append(row["flicker"])

    def step_response(self) -> list[int]:
        """Per scene change (not the first scene): frames from the change until the EPE first comes within
        SETTLE_TOLERANCE of the scene's steady EPE (the median over its second half); 1 = at once."""
        out = []
        bounds = self.scene_starts[1:] + [len(self.per_frame)]
        for start, end in zip(self.scene_starts[1:], bounds[1:]):
            epe = [r.get("epe", float("nan")) for r in self.per_frame[start:end]]
            if len(epe) < 4 or not np.isfinite(epe).any():
                continue
            steady = float(np.nanmedian(epe[len(epe) // 2:]))
            limit = SETTLE_TOLERANCE[0] * steady + SETTLE_TOLERANCE[1]
            out.append(next((k + 1 for k, e in enumerate(epe) if np.isfinite(e) and e <= limit), len(epe)))
        return out

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.disp.per_image:
            out["disparity"] = self.disp.summary()["pixel"]
            densities = [r["density"] for r in self.per_frame if "density" in r]
            out["disparity"]["density"] = float(np.mean(densities)) if densities else float("nan")
        confidence = self.confidence.summary()
        if confidence is not None:
            out["confidence"] = confidence
        if self.flicker:
            out["temporal"] = {"flicker_px": float(np.mean(self.flicker)), "frame_pairs": len(self.flicker),
                               "scene_changes": len(self.scene_starts) - 1, "settle_frames": self.step_response()}
        if self.depth:
            n = sum(d["depth_pixels"] for d in self.depth)
            out["depth"] = {k: sum(d[k] * d["depth_pixels"] for d in self.depth) / max(n, 1) for k in ("abs_rel", "delta1")}
        if self.label_free:
            keys = sorted({k for r in self.label_free for k in r})
            out["label_free"] = {k: nan_mean([r.get(k, np.nan) for r in self.label_free]) for k in keys}
            out["label_free"]["frames"] = len(self.label_free)
            if self.unscorable:
                out["label_free"]["unscorable_frames"] = len(self.unscorable)
                out["label_free"]["unscorable_reason"] = self.unscorable[-1]
        return out


def node_values(params: dict[str, Any] | None) -> dict[str, Any]:
    """The node's parameter values for a replay: its defaults with ``params`` applied (checked)."""
    values = defaults()
    for name, value in (params or {}).items():
        if name not in P.BY_NAME:
            raise BagError(f"--param: the node has no parameter '{name}' (it has {', '.join(sorted(P.BY_NAME))})")
        if (problem := P.validate(name, value)) is not None:
            raise BagError(f"--param: {problem}")
        values[name] = value
    return values


def _baseline(params: dict[str, Any] | None) -> float | None:
    """The node's 'baseline' parameter (None: from the camera_info), which the bag's frames use too."""
    return float((params or {}).get(P.BASELINE, 0.0)) or None


def run_offline(bag: Path, model: str, progress: bool = True, params: dict[str, Any] | None = None,
                label_free: bool = False, names: TopicNames | None = None) -> dict[str, Any]:
    """The runtime on every pair of ``bag`` through the node's post-processing (``params``: node parameters).
    ``label_free``: the label-free figures on frames with GT too (they are always computed without)."""
    from m2s_export.runtime import load_runtime

    values = node_values(params)
    runtime = load_runtime(model)
    post = FramePostprocess(values, keep_raw=True)
    warnings: list[str] = []
    ev = Evaluation(label_free, runtime.meta.get("max_disp"))
    preds = []
    frames = 0
    for i, frame in enumerate(tqdm(read_frames(bag, warnings=warnings, names=names, baseline_m=_baseline(params)), desc="offline", unit="pair", disable=not progress)):
        frames += 1
        try:  # the node's own check: a frame it would drop is not evaluated here either
            frame.camera.check_image_size(frame.left.shape[1], frame.left.shape[0])
        except CalibrationError as exc:
            warnings.append(f"frame {i} ({frame.stamp_ns}) not evaluated: {exc}")
            continue
        out = post(runtime, frame.left, frame.right)
        disp = np.where(out.disparity > 0, out.disparity, np.nan).astype(np.float32)
        confidence = out.confidence if values[P.PUBLISH_CONFIDENCE] else None
        ev.add(frame, disp, i, runtime, confidence, raw=out.raw)
        preds.append((frame, disp, confidence))
    if not frames:
        raise BagError(no_frame_message(bag, warnings))
    timing = runtime.stats().get("total", {})
    return {"mode": "offline", "frames": frames, "answered": len(preds), "dropped": frames - len(preds),
            "warnings": warnings, "node_parameters": _changed(values), "accuracy": ev.summary(),
            "per_frame": ev.per_frame, "inference_ms": timing, "_preds": preds}


def no_frame_message(bag: Path, reasons: list[str], limit: int = 3) -> str:
    """'no complete stereo frame' with the reasons the frames were skipped (a NaN P, an unsupported
    encoding, data shorter than declared...), the distinct ones first, so the cause is named."""
    distinct = list(dict.fromkeys(reasons))
    if not distinct:
        return f"{bag}: no complete stereo frame could be read"
    more = f" (and {len(distinct) - limit} more)" if len(distinct) > limit else ""
    return f"{bag}: no complete stereo frame could be read: " + "; ".join(distinct[:limit]) + more


def _changed(values: dict[str, Any]) -> dict[str, Any]:
    """The node parameters that differ from the defaults (what the report should name)."""
    base = defaults()
    return {k: v for k, v in values.items() if v != base.get(k)}


def run_live(bag: Path, model: str, rate: float = 1.0, timeout_s: float = 30.0, progress: bool = True,
             params: dict[str, Any] | None = None, label_free: bool = False,
             names: TopicNames | None = None) -> dict[str, Any]:
    """Publish the bag into a StereoNode over DDS and collect its disparity (and confidence) outputs."""
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.qos import qos_profile_sensor_data
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CameraInfo, Image
    from stereo_msgs.msg import DisparityImage

    from m2s_stereo.bag_tools import LEFT, LEFT_INFO, RIGHT, RIGHT_INFO
    from m2s_stereo.image_codec import image_to_array
    from m2s_stereo.stereo_node import StereoNode

    values = node_values(params)
    warnings: list[str] = []
    frames = list(read_frames(bag, keep_raw=True, warnings=warnings, names=names, baseline_m=_baseline(params)))
    if not frames:
        raise BagError(no_frame_message(bag, warnings))
    context = rclpy.Context()
    rclpy.init(context=context)
    overrides = {**_changed(values), P.MODEL_PATH: str(model), P.PUBLISH_POINTS: False, P.PUBLISH_DEPTH: False}
    node = StereoNode(parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()], context=context)
    player = Node("m2s_bag_player", context=context)
    types = {LEFT: Image, RIGHT: Image, LEFT_INFO: CameraInfo, RIGHT_INFO: CameraInfo}
    pubs = {t: player.create_publisher(m, t, qos_profile_sensor_data) for t, m in types.items()}
    received: dict[int, tuple[float, np.ndarray]] = {}
    confidences: dict[int, np.ndarray] = {}

    def stamp_of(msg: Any) -> int:
        return int(msg.header.stamp.sec) * 10**9 + int(msg.header.stamp.nanosec)

    def on_disparity(msg: DisparityImage) -> None:
        received[stamp_of(msg)] = (time.time(), image_to_array(msg.image).copy())

    def on_confidence(msg: Image) -> None:
        confidences[stamp_of(msg)] = image_to_array(msg).copy()

    player.create_subscription(DisparityImage, "disparity", on_disparity, 10)
    want_confidence = values[P.PUBLISH_CONFIDENCE] and node.has_confidence
    if want_confidence:
        player.create_subscription(Image, "confidence", on_confidence, 10)
    executor = MultiThreadedExecutor(num_threads=2, context=context)
    executor.add_node(node)
    executor.add_node(player)
    import threading

    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (all(p.get_subscription_count() for p in pubs.values())
                                                   and node.pub_disp.get_subscription_count()):
            time.sleep(0.02)
        sent: list[int] = []
        t_start = time.monotonic()
        bag_t0 = frames[0].stamp_ns
        for i, frame in enumerate(tqdm(frames, desc="live replay", unit="pair", disable=not progress)):
            if rate > 0:  # recorded timing, sped up by ``rate``
                due = t_start + (frame.stamp_ns - bag_t0) / 1e9 / rate
                time.sleep(max(0.0, due - time.monotonic()))
            stamp = time.time_ns()
            msgs = {t: deserialize_message(frame.raw[t], types[t]) for t in types}
            for t in (LEFT_INFO, RIGHT_INFO, LEFT, RIGHT):
                msgs[t].header.stamp.sec, msgs[t].header.stamp.nanosec = stamp // 10**9, stamp % 10**9
                pubs[t].publish(msgs[t])
            sent.append(stamp)
            if rate <= 0:  # as fast as the node accepts: wait for this answer (or a timeout)
                end = time.monotonic() + timeout_s
                while stamp not in received and time.monotonic() < end:
                    time.sleep(0.002)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and not all(s in received and (s in confidences or not want_confidence)
                                                 for s in sent[-1:]):
            time.sleep(0.01)
        time.sleep(0.2)
        node_stats = node.stats()
        runtime = node.runtime  # for the label-free right-view pass, after the replay
    finally:
        executor.shutdown()
        spinner.join(timeout=5.0)  # spin has returned before the nodes and the context go (else: abort at exit)
        node.destroy_node()
        player.destroy_node()
        rclpy.try_shutdown(context=context)
    ev = Evaluation(label_free, node.max_disparity)
    latencies = []
    preds = []
    for i, (frame, stamp) in enumerate(zip(frames, sent)):
        if stamp not in received:
            continue
        t_recv, disp = received[stamp]
        latencies.append((i, (t_recv - stamp / 1e9) * 1e3))
        # the DisparityImage carries d + doffs (the message's convention): back to the model's d
        disp = (disp - np.float32(frame.camera.doffs)).astype(np.float32)
        confidence = confidences.get(stamp)
        if want_confidence and confidence is None:
            warnings.append(f"frame {i}: no confidence arrived with its disparity")
        ev.add(frame, disp, i, runtime, confidence)
        preds.append((frame, disp, confidence))
    wall = max(time.monotonic() - t_start, 1e-9)
    return {"mode": "live", "rate": rate, "frames": len(frames), "answered": len(preds), "dropped": len(frames) - len(preds),
            "warnings": warnings, "node_parameters": _changed(values), "throughput_fps": len(preds) / wall,
            "latency_ms": latencies, "node": node_stats, "accuracy": ev.summary(), "per_frame": ev.per_frame,
            "_preds": preds}


def frame_title(frame: Frame, k: int, first_stamp_ns: int) -> str:
    """How a report names a frame: its source's name where the bag records one (a folder's file name), else
    its time in the recording and its stamp."""
    if frame.name:
        return f"frame {k} ({frame.name})"
    return f"frame {k} (t = {(frame.stamp_ns - first_stamp_ns) / 1e9:.2f} s, stamp {frame.stamp_ns})"


def write_report(result: dict[str, Any], out: Path, examples: int | None = None) -> dict[str, Any]:
    """``report.json``, ``report.md`` and pictures into ``out``: ``examples`` frames of each kind (None: every
    frame), titled by :func:`frame_title`, on one disparity scale and one depth scale per report."""
    out.mkdir(parents=True, exist_ok=True)
    preds = result.pop("_preds", [])
    first = preds[0][0].stamp_ns if preds else 0
    lat = [v for _, v in result.get("latency_ms", [])]
    if lat:
        result["latency_summary_ms"] = {"median": float(np.median(lat)), "p95": float(np.percentile(lat, 95)),
                                        "max": float(np.max(lat))}
    shown = []
    for frame, disp, confidence in preds[:examples]:
        gt = frame.gt_disparity if frame.gt_disparity is not None else (
            frame.camera.depth_to_disparity(frame.gt_depth) if frame.gt_depth is not None else None)
        if gt is not None:
            shown.append((frame, disp, confidence, gt))
    no_gt = [(f, d, c) for f, d, c in preds if f.gt_disparity is None and f.gt_depth is None]
    if no_gt:  # what the model does on a camera without ground truth: pictures, on one scale per sequence
        with np.errstate(invalid="ignore"):
            finite = np.concatenate([d[np.isfinite(d) & (d > 0)] for _, d, _ in no_gt[:examples]] + [np.zeros(0)])
        vmax_free = float(np.percentile(finite, 99)) if finite.size else None
        depths = []
        for frame, disp, _ in no_gt[:examples]:
            with np.errstate(invalid="ignore", divide="ignore"):
                depth = frame.camera.disparity_to_depth(np.where(np.isfinite(disp) & (disp > 0), disp, np.nan))
            depths.append(np.where(np.isfinite(depth) & (depth > 0), depth, np.nan).astype(np.float32))
        seen = np.concatenate([d[np.isfinite(d)] for d in depths] + [np.zeros(0, np.float32)])
        far = float(np.percentile(seen, 95)) if seen.size else 1.0  # one depth scale for the whole report
        for k, ((frame, disp, confidence), depth) in enumerate(zip(no_gt[:examples], depths)):
            panels = [image_panel(frame.left, "left image"), disparity_panel(disp, "disparity (published)", vmax_free),
                      Panel(depth, "depth (published)", "depth", 0.0, far, "depth (m)")]
            if confidence is not None:
                panels.append(confidence_panel(confidence))
            published = float(np.mean(np.isfinite(disp) & (disp > 0)))
            panel_figure(out / f"result_{k}.png", f"{frame_title(frame, k, first)}, no ground truth: "
                         f"{100 * published:.0f} % published", panels, columns=2)
    with np.errstate(invalid="ignore"):  # one disparity scale for every example of the sequence
        values = [g[np.isfinite(g) & (g > 0)] for *_, g in shown]
    vmax = float(np.percentile(np.concatenate(values), 99)) if values and sum(v.size for v in values) else None
    for k, (frame, disp, confidence, gt) in enumerate(shown):
        published = np.isfinite(disp)  # the node publishes NaN where it has no value (e.g. below the confidence threshold)
        m = disparity_metrics(np.nan_to_num(disp), gt, mask=published)
        with np.errstate(invalid="ignore"):
            share = float(np.mean(published[np.isfinite(gt) & (gt > 0)])) if np.any(np.isfinite(gt) & (gt > 0)) else 0.0
        stereo_result_figure(out / f"error_map_{k}.png", f"node replay, {frame_title(frame, k, first)} of "
                             f"{result.get('frames', '?')}: "
                             f"EPE {m['epe']:.2f} px, bad-3 {100 * m['bad3']:.1f} % on the {100 * share:.0f} % of the "
                             "ground truth it published", frame.left, disp, gt, confidence, vmax=vmax)
    if result["accuracy"].get("confidence"):
        try:
            sparsification_plot(result["accuracy"]["confidence"], out / "sparsification.png", "node confidence")
        except ImportError:
            pass  # matplotlib missing: said below
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if lat:
            fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
            ax[0].plot([i for i, _ in result["latency_ms"]], lat, ".-")
            ax[0].set(xlabel="frame", ylabel="latency (ms)", title="end-to-end latency")
            ax[1].hist(lat, bins=30)
            ax[1].set(xlabel="latency (ms)", ylabel="frames", title="latency histogram")
            fig.tight_layout()
            fig.savefig(out / "latency.png", dpi=100)
            plt.close(fig)
        epe = [r.get("epe") for r in result["per_frame"] if r.get("epe") is not None]
        if epe:
            fig, ax = plt.subplots(figsize=(6, 3.5))
            ax.plot(range(len(epe)), epe, ".-", label="EPE")
            changes = [r["frame"] for r in result["per_frame"] if r.get("scene_change")]
            for c in changes:
                ax.axvline(c, color="grey", lw=0.8)
            flicker = [(r["frame"], r["flicker"]) for r in result["per_frame"] if "flicker" in r]
            if flicker:
                ax.plot(*zip(*flicker), "x", label="flicker (px)")
                ax.legend()
            ax.set(xlabel="frame", ylabel="px", title="per-frame disparity error")
            fig.tight_layout()
            fig.savefig(out / "per_frame_error.png", dpi=100)
            plt.close(fig)
    except ImportError:
        log.warning("matplotlib is not installed: no plots (pip install matplotlib)")
    write_json_atomic(out / "report.json", result)
    acc = result["accuracy"]
    lines = [f"# Replay evaluation ({result['mode']})", "", f"- frames: {result['frames']}, answered: {result['answered']}, "
             f"dropped: {result['dropped']}"]
    if "throughput_fps" in result:
        lines.append(f"- throughput: {result['throughput_fps']:.2f} fps")
    if lat:
        s = result["latency_summary_ms"]
        lines.append(f"- latency: median {s['median']:.1f} ms, p95 {s['p95']:.1f} ms, max {s['max']:.1f} ms")
    if result.get("node_parameters"):
        lines.append("- node parameters: " + ", ".join(f"{k}={v}" for k, v in result["node_parameters"].items()))
    if "disparity" in acc:
        d = acc["disparity"]
        lines.append(f"- disparity (on the published pixels, density {100 * d['density']:.1f} % of the GT pixels): "
                     f"EPE {d['epe']:.3f} px, D1 {100 * d['d1']:.2f} %, bad-1/2/3 {100 * d['bad1']:.1f} / "
                     f"{100 * d['bad2']:.1f} / {100 * d['bad3']:.1f} %")
    if "confidence" in acc:
        c = acc["confidence"]
        lines.append(f"- confidence: sparsification AUC (EPE) {c['auc_epe']['confidence']:.3f} vs oracle "
                     f"{c['auc_epe']['oracle']:.3f} / random {c['auc_epe']['random']:.3f} (gap closed "
                     f"{c['gap_closed_epe']:.2f}); bad-3 of the most confident 50 / 80 / 95 / 100 %: "
                     f"{100 * c['bad3_at_50']:.1f} / {100 * c['bad3_at_80']:.1f} / {100 * c['bad3_at_95']:.1f} / "
                     f"{100 * c['bad3_all']:.1f} %")
    if "temporal" in acc:
        t = acc["temporal"]
        lines.append(f"- temporal: flicker {t['flicker_px']:.4f} px (mean |d_t - d_t-1| where the GT did not change, "
                     f"{t['frame_pairs']} frame pairs); {t['scene_changes']} scene change(s), settled after "
                     f"{t['settle_frames']} frame(s)")
    if "depth" in acc:
        lines.append(f"- depth: abs-rel {acc['depth']['abs_rel']:.4f}, delta<1.25 {100 * acc['depth']['delta1']:.1f} %")
    if "label_free" in acc:
        lf = acc["label_free"]
        def figures(prefix: str = "", suffix: str = "") -> str:
            got = [f"photometric {lf[f'{prefix}photometric{suffix}']:.4f}"]
            if f"{prefix}lr_consistency{suffix}" in lf:
                got.append(f"LR consistency {100 * lf[f'{prefix}lr_consistency{suffix}']:.1f} %")
            got.append(f"{100 * lf[f'{prefix}at_range_limit{suffix}']:.2f} % at the range limits")
            return ", ".join(got)

        parts = [f"on the published pixels ({100 * lf.get('published_share', float('nan')):.1f} % of the image): "
                 + figures()]
        if "photometric_all" in lf:
            parts.append("on all the model's pixels: " + figures(suffix="_all"))
        if "sgbm_photometric" in lf:
            parts.append(f"OpenCV SGBM (fair: search range {lf.get('sgbm_search_px', float('nan')):.0f} px, the model's "
                         f"range on this camera, left band answered; {100 * lf['sgbm_share']:.1f} % of the pixels "
                         "answered): " + figures("sgbm_") + ("; on all pixels (its holes filled along the row): "
                                                             + figures("sgbm_", "_all") if "sgbm_photometric_all" in lf
                                                             else ""))
        parts.append("photometric = 0.85 (1 - SSIM) / 2 + 0.15 L1 of the right view warped to the left, on the pixels "
                     "the disparity says are visible; range limit in the camera's pixels")
        if lf.get("unscorable_frames"):
            parts.append(f"{lf['unscorable_frames']} frame(s) not scored (e.g. {lf['unscorable_reason']})")
        lines.append(f"- label-free ({lf['frames']} frames): " + "; ".join(parts))
    lines += [f"- warning: {w}" for w in result.get("warnings", [])]
    write_text_atomic(out / "report.md", "\n".join(lines) + "\n")
    return result


def _main(args: argparse.Namespace) -> int:
    # checked before the (slow) replay; the earlier report is deleted only once the replay has succeeded
    claim = OwnedOutput(args.out, tool="m2s-eval-bag", overwrite=args.overwrite, inputs=(args.bag, args.model))
    bag = Path(args.bag)
    params = dict(args.param or [])
    if args.baseline is not None:
        params[P.BASELINE] = args.baseline
    if args.mode == "offline":
        result = run_offline(bag, args.model, progress=not args.quiet, params=params, label_free=args.label_free,
                             names=TopicNames.from_args(args))
    else:
        result = run_live(bag, args.model, rate=args.rate, timeout_s=args.timeout, progress=not args.quiet,
                          params=params, label_free=args.label_free, names=TopicNames.from_args(args))
    answered = [r for r in result.get("per_frame", []) if "published_pixels" in r]
    if answered and not any(r["published_pixels"] or r.get("model_pixels") for r in answered):
        raise BagError(f"the model gave no valid disparity on any of the {len(answered)} frame(s) it answered "
                       f"(every value NaN, inf or <= 0): a damaged or tampered model ({args.model})"
                       + ("" if any("model_pixels" in r for r in answered) else
                          ", or a confidence_threshold that rejects every pixel")
                       + "; no score is reported from nothing")
    claim.begin()
    result = write_report(result, Path(args.out), examples=args.examples)
    claim.finish()
    print(dumps_json({k: result[k] for k in ("mode", "frames", "answered", "dropped", "accuracy")}
                     | {"report": str(Path(args.out) / "report.md")}))
    if not result["answered"]:
        bad = int(result.get("node", {}).get("bad_frames", 0))
        why = "; ".join(result.get("warnings", [])[:2]) or (
            f"the node answered none of them ({bad} bad frame(s); its log above says why)")
        raise BagError(f"no frame was evaluated: 0 of {result['frames']} pairs ({result['mode']} mode): {why}; "
                       f"the report in {args.out} says so")
    return 0


def node_param(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` -> (name, value typed like the parameter's default); argparse turns errors into one line."""
    name, sep, raw = text.partition("=")
    if not sep or name not in P.BY_NAME:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with NAME one of the node's parameters, got '{text}'")
    default = P.BY_NAME[name].default
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            value: Any = raw.lower() in ("true", "1")
        elif isinstance(default, int):
            value = int(raw)
        elif isinstance(default, float):
            value = float(raw)
            if not np.isfinite(value):
                raise ValueError(raw)
        else:
            value = raw
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name} takes a {type(default).__name__}, got '{raw}'") from None
    if (problem := P.validate(name, value)) is not None:
        raise argparse.ArgumentTypeError(problem)
    return name, value


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="m2s-eval-bag", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bag", required=True, help="bag directory (sqlite3 or MCAP, split files too) written by m2s-bag make or "
                                                 "ros2 bag record")
    p.add_argument("--model", required=True, help=".engine, .onnx or checkpoint directory")
    add_topic_flags(p)
    p.add_argument("--examples", type=non_negative_int, metavar="N",
                   help="pictures of the first N frames of each kind (with GT: error maps; without: results); "
                        "default every frame")
    p.add_argument("--baseline", type=positive_float,
                   help="stereo baseline, metres, for a driver whose right camera_info has P[0,3] = 0 or > 0 (the "
                        "node's 'baseline' parameter)")
    p.add_argument("--out", required=True, help="report directory (report.json, report.md, PNG plots)")
    p.add_argument("--overwrite", action="store_true",
                   help="--out holds an earlier report of this command: replace the files it wrote, once the inputs "
                        "are checked (nothing else in --out is deleted; without this flag it is refused)")
    p.add_argument("--mode", choices=["live", "offline"], default="live", help="live: through the node over DDS; offline: runtime only")
    p.add_argument("--rate", type=non_negative_float, default=1.0,
                   help="live: x recorded rate; 0 = as fast as the node answers")
    p.add_argument("--timeout", type=positive_float, default=30.0,
                   help="live: seconds to wait for the node's answer to a pair (default 30)")
    p.add_argument("--label-free", action="store_true",
                   help="also the label-free figures (photometric error, left-right consistency, range limits) on "
                        "frames that have GT; frames without GT always get them")
    p.add_argument("--param", action="append", type=node_param, metavar="NAME=VALUE",
                   help="a node parameter for both modes, e.g. confidence_threshold=0 or temporal_filter=true "
                        "(repeatable; default: the node's config/stereo.yaml defaults)")
    add_common_flags(p)
    return run_command(_main, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
