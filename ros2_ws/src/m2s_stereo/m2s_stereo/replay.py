"""``m2s-eval-bag``: replay a stereo bag through the node (live, real DDS) or the runtime (offline)
and report accuracy, latency, throughput and dropped pairs.

live: the bag's messages are published on loopback DDS into a :class:`StereoNode` in this
process, restamped at publish time, at the recorded rate x ``--rate`` or (``--rate 0``) as fast
as the node answers; outputs are matched by stamp; latency = output received - stamp.
offline: the runtime runs directly on the bag's pairs (no DDS), for fast accuracy runs.
Accuracy uses whatever GT the bag holds (gt/disparity: EPE, D1, bad-1/2/3; gt/depth:
abs-rel and delta<1.25 on depth, plus disparity metrics through the camera model), otherwise
the left-right consistency rate. Writes report.json, report.md and PNG plots.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from calib.console import CliParser, add_common_flags, non_negative_float, positive_float, run_command
from calib.safe_files import dumps_json, write_json_atomic, write_text_atomic
from calib.errors import CalibrationError
from calib.metrics import MetricAccumulator, error_map_rgb
from m2s_stereo.bag_tools import BagError, Frame, read_frames

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


def lr_consistency(runtime: Any, left: np.ndarray, right: np.ndarray, disp: np.ndarray, tol: float = 1.0) -> float:
    """Fraction of pixels whose left disparity agrees (within ``tol`` px) with the right view's
    disparity at x - d (right disparity = flipped inference on the flipped, swapped pair)."""
    d_right = runtime.infer(np.ascontiguousarray(right[:, ::-1]), np.ascontiguousarray(left[:, ::-1]))[:, ::-1]
    h, w = disp.shape
    xs = np.arange(w)[None, :] - np.nan_to_num(disp, nan=-1e6)
    inside = (xs >= 0) & (xs <= w - 1) & np.isfinite(disp)
    xr = np.clip(np.rint(xs), 0, w - 1).astype(int)
    other = d_right[np.arange(h)[:, None], xr]
    return float(np.mean(np.abs(disp - other)[inside] <= tol)) if inside.any() else float("nan")


class Evaluation:
    """Accumulates accuracy over frames (whatever GT each frame has)."""

    def __init__(self) -> None:
        self.disp = MetricAccumulator()
        self.depth: list[dict[str, float]] = []
        self.lr: list[float] = []
        self.per_frame: list[dict[str, Any]] = []

    def add(self, frame: Frame, disp: np.ndarray, index: int, runtime: Any = None) -> dict[str, Any]:
        row: dict[str, Any] = {"frame": index, "stamp_ns": frame.stamp_ns}
        if frame.gt_disparity is not None:
            row.update(self.disp.add(disp, frame.gt_disparity))
        elif frame.gt_depth is not None:
            gt_disp = frame.camera.depth_to_disparity(frame.gt_depth)
            row.update(self.disp.add(disp, gt_disp))
            d = depth_metrics(frame.camera.disparity_to_depth(disp), frame.gt_depth)
            self.depth.append(d)
            row.update(d)
        elif runtime is not None:
            row["lr_consistency"] = lr_consistency(runtime, frame.left, frame.right, disp)
            self.lr.append(row["lr_consistency"])
        self.per_frame.append(row)
        return row

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.disp.per_image:
            out["disparity"] = self.disp.summary()["pixel"]
        if self.depth:
            n = sum(d["depth_pixels"] for d in self.depth)
            out["depth"] = {k: sum(d[k] * d["depth_pixels"] for d in self.depth) / max(n, 1) for k in ("abs_rel", "delta1")}
        if self.lr:
            out["lr_consistency"] = float(np.nanmean(self.lr))
        return out


def run_offline(bag: Path, model: str, progress: bool = True) -> dict[str, Any]:
    from m2s_export.runtime import load_runtime

    runtime = load_runtime(model)
    warnings: list[str] = []
    ev = Evaluation()
    preds = []
    frames = 0
    for i, frame in enumerate(tqdm(read_frames(bag, warnings=warnings), desc="offline", unit="pair", disable=not progress)):
        frames += 1
        try:  # the node's own check: a frame it would drop is not evaluated here either
            frame.camera.check_image_size(frame.left.shape[1], frame.left.shape[0])
        except CalibrationError as exc:
            warnings.append(f"frame {i} ({frame.stamp_ns}) not evaluated: {exc}")
            continue
        disp = runtime.infer(frame.left, frame.right)
        disp = np.where(disp > 0, disp, np.nan).astype(np.float32)
        ev.add(frame, disp, i, runtime)
        preds.append((frame, disp))
    if not frames:
        raise BagError(f"{bag}: no complete stereo frame could be read")
    timing = runtime.stats().get("total", {})
    return {"mode": "offline", "frames": frames, "answered": len(preds), "dropped": frames - len(preds),
            "warnings": warnings, "accuracy": ev.summary(), "per_frame": ev.per_frame, "inference_ms": timing,
            "_preds": preds}


def run_live(bag: Path, model: str, rate: float = 1.0, timeout_s: float = 30.0, progress: bool = True) -> dict[str, Any]:
    """Publish the bag into a StereoNode over DDS and collect its disparity outputs."""
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

    warnings: list[str] = []
    frames = list(read_frames(bag, keep_raw=True, warnings=warnings))
    if not frames:
        raise BagError(f"{bag}: no complete stereo frame could be read")
    context = rclpy.Context()
    rclpy.init(context=context)
    node = StereoNode(parameter_overrides=[Parameter("model_path", value=str(model)),
                                           Parameter("publish_points", value=False), Parameter("publish_depth", value=False)],
                      context=context)
    player = Node("m2s_bag_player", context=context)
    types = {LEFT: Image, RIGHT: Image, LEFT_INFO: CameraInfo, RIGHT_INFO: CameraInfo}
    pubs = {t: player.create_publisher(m, t, qos_profile_sensor_data) for t, m in types.items()}
    received: dict[int, tuple[float, np.ndarray]] = {}

    def on_disparity(msg: DisparityImage) -> None:
        stamp = int(msg.header.stamp.sec) * 10**9 + int(msg.header.stamp.nanosec)
        received[stamp] = (time.time(), image_to_array(msg.image).copy())

    player.create_subscription(DisparityImage, "disparity", on_disparity, 10)
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
        while time.monotonic() < end and not all(s in received for s in sent[-1:]):
            time.sleep(0.01)
        time.sleep(0.2)
        node_stats = node.stats()
    finally:
        executor.shutdown()
        node.destroy_node()
        player.destroy_node()
        rclpy.try_shutdown(context=context)
    ev = Evaluation()
    latencies = []
    preds = []
    for i, (frame, stamp) in enumerate(zip(frames, sent)):
        if stamp not in received:
            continue
        t_recv, disp = received[stamp]
        latencies.append((i, (t_recv - stamp / 1e9) * 1e3))
        ev.add(frame, disp.astype(np.float32), i)
        preds.append((frame, disp))
    wall = max(time.monotonic() - t_start, 1e-9)
    return {"mode": "live", "rate": rate, "frames": len(frames), "answered": len(preds), "dropped": len(frames) - len(preds),
            "warnings": warnings, "throughput_fps": len(preds) / wall, "latency_ms": latencies, "node": node_stats,
            "accuracy": ev.summary(), "per_frame": ev.per_frame, "_preds": preds}


def write_report(result: dict[str, Any], out: Path, examples: int = 2) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    preds = result.pop("_preds", [])
    lat = [v for _, v in result.get("latency_ms", [])]
    if lat:
        result["latency_summary_ms"] = {"median": float(np.median(lat)), "p95": float(np.percentile(lat, 95)),
                                        "max": float(np.max(lat))}
    for k, (frame, disp) in enumerate(preds[:examples]):
        gt = frame.gt_disparity if frame.gt_disparity is not None else (
            frame.camera.depth_to_disparity(frame.gt_depth) if frame.gt_depth is not None else None)
        if gt is not None:
            cv2.imwrite(str(out / f"error_map_{k}.png"), error_map_rgb(disp, gt)[:, :, ::-1])
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
            ax.plot(range(len(epe)), epe, ".-")
            ax.set(xlabel="frame", ylabel="EPE (px)", title="per-frame disparity error")
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
    if "disparity" in acc:
        d = acc["disparity"]
        lines.append(f"- disparity: EPE {d['epe']:.3f} px, D1 {100 * d['d1']:.2f} %, bad-1/2/3 {100 * d['bad1']:.1f} / "
                     f"{100 * d['bad2']:.1f} / {100 * d['bad3']:.1f} %")
    if "depth" in acc:
        lines.append(f"- depth: abs-rel {acc['depth']['abs_rel']:.4f}, delta<1.25 {100 * acc['depth']['delta1']:.1f} %")
    if "lr_consistency" in acc:
        lines.append(f"- left-right consistency (no GT in the bag): {100 * acc['lr_consistency']:.1f} %")
    lines += [f"- warning: {w}" for w in result.get("warnings", [])]
    write_text_atomic(out / "report.md", "\n".join(lines) + "\n")
    return result


def _main(args: argparse.Namespace) -> int:
    bag = Path(args.bag)
    if args.mode == "offline":
        result = run_offline(bag, args.model, progress=not args.quiet)
    else:
        result = run_live(bag, args.model, rate=args.rate, timeout_s=args.timeout, progress=not args.quiet)
    result = write_report(result, Path(args.out))
    print(dumps_json({k: result[k] for k in ("mode", "frames", "answered", "dropped", "accuracy")}
                     | {"report": str(Path(args.out) / "report.md")}))
    if not result["answered"]:
        bad = int(result.get("node", {}).get("bad_frames", 0))
        why = "; ".join(result.get("warnings", [])[:2]) or (
            f"the node answered none of them ({bad} bad frame(s); its log above says why)")
        raise BagError(f"no frame was evaluated: 0 of {result['frames']} pairs ({result['mode']} mode): {why}; "
                       f"the report in {args.out} says so")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="m2s-eval-bag", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bag", required=True, help="bag directory (sqlite3 or MCAP) written by m2s-bag make or ros2 bag record")
    p.add_argument("--model", required=True, help=".engine, .onnx or checkpoint directory")
    p.add_argument("--out", required=True, help="report directory (report.json, report.md, PNG plots)")
    p.add_argument("--mode", choices=["live", "offline"], default="live", help="live: through the node over DDS; offline: runtime only")
    p.add_argument("--rate", type=non_negative_float, default=1.0,
                   help="live: x recorded rate; 0 = as fast as the node answers")
    p.add_argument("--timeout", type=positive_float, default=30.0,
                   help="live: seconds to wait for the node's answer to a pair (default 30)")
    add_common_flags(p)
    return run_command(_main, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
