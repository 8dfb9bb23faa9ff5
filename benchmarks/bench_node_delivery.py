"""Sustained delivery through the node: a camera process streams for minutes, the node keeps up or says why.

    python benchmarks/bench_node_delivery.py [--seconds 60] [--sizes 640x480 1280x720] [--rates 10 30]
                                             [--model MODEL.onnx] [--shm-mb 40] [--dead-segments 2] [--json OUT]

Three processes per row, as on a robot: ``tests/ros/camera_process.py`` (rectified rgb8 pairs and camera_info,
sensor-data QoS, for ``--seconds`` at the rate), the node (``m2s-stereo-node``, default parameters) and this
process, which counts the disparities it receives and reads the node's diagnostics. All three use the
large-image DDS profile, as the README says. Per row: pairs sent, pairs the node received (the rest was lost
in transport: one image of a pair suffices), published, skipped by the node because the model was busy (its one-slot buffer: the node's own
capacity), disparities received here, and the node's input rate at its lowest after the first 5 s window.

``--shm-mb N`` runs the row in a private mount namespace whose /dev/shm is a tmpfs of N MiB (root and
``unshare`` needed), ``--dead-segments K`` first leaves K segments there as killed Fast DDS processes leave
them: what made large images stop arriving a few seconds into a stream (m2s_stereo.dds).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAMERA = ROOT / "tests" / "ros" / "camera_process.py"
INSIDE = "M2S_BENCH_INSIDE_NAMESPACE"


def dead_segments(count: int) -> None:
    """Leave ``count`` segments in /dev/shm as a killed Fast DDS process leaves its own: the segment, allocated,
    and its lock file, held by nobody."""
    from m2s_stereo.dds import SEGMENT_BYTES, SHM_DIR, fast_dds_major

    prefix = "fastrtps" if (fast_dds_major() or 3) < 3 else "fastdds"  # Fast DDS 2 (Jazzy) names them fastrtps_
    for i in range(count):
        name = f"{prefix}_{random.getrandbits(64):016x}"
        with open(SHM_DIR / name, "wb") as f:
            f.write(b"\0" * SEGMENT_BYTES)
        (SHM_DIR / f"{name}_el").touch()


def row(width: int, height: int, rate: float, seconds: float, model: str, camera_qos: str = "sensor_data") -> dict:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from stereo_msgs.msg import DisparityImage

    from m2s_stereo.dds import PROFILE, profile_variables

    # the profile in the variable this Fast DDS reads (FASTRTPS_ on Jazzy's Fast DDS 2.14, FASTDDS_ on Kilted's 3.x)
    profile = {v: str(PROFILE) for v in profile_variables()}
    env = {**os.environ, **profile, "ROS_DOMAIN_ID": str(random.randint(120, 200)),
           "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    os.environ.update({k: env[k] for k in (*profile, "ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    node = subprocess.Popen([sys.executable, "-m", "m2s_stereo.node_main", "--ros-args", "-p", f"model_path:={model}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    context = rclpy.Context()
    rclpy.init(context=context)
    counter = rclpy.create_node("delivery_counter", context=context)
    received, diagnostics = [], []

    def on_diag(msg: DiagnosticArray) -> None:
        for s in msg.status:
            if s.name.startswith("m2s_stereo"):
                diagnostics.append((time.monotonic(), s.message, {kv.key: float(kv.value) for kv in s.values}))

    counter.create_subscription(DisparityImage, "disparity", lambda m: received.append(time.monotonic()), 10)
    counter.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(counter)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    count = int(round(rate * seconds))
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end and not diagnostics and node.poll() is None:
            time.sleep(0.1)
        t0 = time.monotonic()
        qos = ["--qos", "reliable", "--expect-matches", "2"] if camera_qos == "reliable" else []  # qos auto re-subscribes
        cam = subprocess.run([sys.executable, str(CAMERA), "--width", str(width), "--height", str(height), "--rate",
                              str(rate), "--count", str(count), *qos], env=env, capture_output=True, text=True,
                             timeout=seconds + 120)
        sent = json.loads(cam.stdout.strip().splitlines()[-1])["sent"] if cam.returncode == 0 else 0
        time.sleep(3.0)
        last = diagnostics[-1][2] if diagnostics else {}
        window = [d[2].get("left_fps", 0.0) for d in diagnostics if d[0] > t0 + 6 and d[0] < t0 + seconds + 2]
    finally:
        node.send_signal(2)
        log = node.communicate(timeout=30)[0]
        executor.shutdown()
        spinner.join(timeout=5.0)  # spin has returned before the node and the context go (else: abort at exit)
        counter.destroy_node()
        rclpy.try_shutdown(context=context)
    taken = int(last.get("pairs_in", 0) + last.get("out_of_order", 0))  # complete pairs that reached the node
    return {"size": f"{width}x{height}", "rate_hz": rate, "seconds": seconds, "camera_qos": camera_qos, "sent": sent,
            "node_received": taken, "lost_in_transport": int(sent - taken),
            "images_lost": {side: int(sent - last.get(f"{side}_total", 0)) for side in ("left", "right")},
            "published": int(last.get("published", 0)),
            "skipped_busy": int(last.get("dropped_pairs", 0)), "received_here": len(received),
            "min_input_fps_after_5s": min(window) if window else None,
            "warnings": sorted({line.split("]: ", 1)[-1][:300] for line in log.splitlines() if "[WARN]" in line}),
            "removed_dead_segments": next((int(line.split("removed ", 1)[1].split()[0]) for line in log.splitlines()
                                           if "shared-memory segment(s) of Fast DDS processes that died" in line), 0)}


def default_model(tmp: Path) -> str:
    import torch

    from m2s_export.onnx_export import export_onnx
    from m2s_train.models import create_model, save_model

    torch.manual_seed(0)
    save_model(create_model("igev-tiny"), tmp / "ckpt")
    export_onnx(tmp / "ckpt", tmp / "tiny.onnx", 192, 256, verify=False, fp16=False)
    return str(tmp / "tiny.onnx")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--sizes", nargs="+", default=["640x480", "1280x720"])
    p.add_argument("--rates", nargs="+", type=float, default=[10.0, 30.0])
    p.add_argument("--model", help="ONNX the node runs (default: igev-tiny, random weights, 256x192)")
    p.add_argument("--shm-mb", type=int, default=0, help="run in a private /dev/shm of this many MiB (root)")
    p.add_argument("--dead-segments", type=int, default=0, help="segments of killed processes left in it first")
    p.add_argument("--camera-qos", choices=["sensor_data", "reliable"], default="sensor_data",
                   help="the camera driver's QoS (the node's qos auto follows it)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args()
    if args.shm_mb and not os.environ.get(INSIDE):
        script = (f"mount -t tmpfs -o size={args.shm_mb}m tmpfs /dev/shm && exec {sys.executable} "
                  + " ".join(map(str, [__file__, *sys.argv[1:]])))
        return subprocess.run(["unshare", "--mount", "sh", "-c", script], env={**os.environ, INSIDE: "1"}).returncode
    if args.dead_segments:
        dead_segments(args.dead_segments)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or default_model(Path(tmp))
        rows = []
        print(f"{'size':>9s} {'Hz':>4s} {'sent':>6s} {'pairs in':>9s} {'lost':>5s} {'published':>10s} {'busy':>5s} "
              f"{'here':>5s} {'min in fps':>10s}" + (f"   (/dev/shm {args.shm_mb} MiB, {args.dead_segments} dead segments)"
                                                      if args.shm_mb else ""))
        for size in args.sizes:
            w, h = (int(v) for v in size.split("x"))
            for rate in args.rates:
                r = row(w, h, rate, args.seconds, model, args.camera_qos)
                rows.append({**r, "shm_mb": args.shm_mb or None, "dead_segments": args.dead_segments})
                fps = f"{r['min_input_fps_after_5s']:.1f}" if r["min_input_fps_after_5s"] is not None else "-"
                print(f"{size:>9s} {rate:4.0f} {r['sent']:6d} {r['node_received']:9d} {r['lost_in_transport']:5d} "
                      f"{r['published']:10d} {r['skipped_busy']:5d} {r['received_here']:5d} {fps:>10s}", flush=True)
                for warning in r["warnings"]:
                    if "no image for" not in warning:  # the end of the stream
                        print(f"      node warned: {warning}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
