"""Synthesis speed: forward warp vs a per-row reference, and the classical pipeline's pairs/s.

    python benchmarks/bench_synth.py [--repeats 10] [--images N] [--workers 2]

1. Forward warp of an RGB 1280x720 image with a smooth random disparity (0..100 px), ours
   (exact visibility, sub-pixel; the numba backend and the pure-numpy backend, which give the
   same output bit for bit) vs a simple reference that loops over rows and z-buffers by
   rounding (numpy inside the row loop), all timed here, single thread.
2. The whole classical pipeline at 640x480 on real photos (opencv-doc) excluding depth
   inference (segment-prior depth computed beforehand; maximum disparity drawn from the
   default MfS range scaled from 1280 to 640 px wide): disparity scaling + flying pixels, warp,
   EA mask, EA Telea fill, sample encoding and atomic write, in 1 process and in
   ``--workers`` processes (shards).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

cv2.setNumThreads(1)

from calib.example_data import find_opencv_examples  # noqa: E402
from calib.image_io import read_rgb  # noqa: E402
from m2s_train.synth.depth import SegmentPlaneDepthPrior  # noqa: E402
from m2s_train.synth.pipeline import SynthConfig, synthesize_pair  # noqa: E402
from m2s_train.synth.shards import ShardWriter, StereoSample  # noqa: E402
from m2s_train.synth.warp import _numba_kernel, forward_warp  # noqa: E402


def reference_warp(image: np.ndarray, disparity: np.ndarray) -> np.ndarray:
    """Baseline: per-row z-buffer by rounding; the nearest surface is written last."""
    h, w = disparity.shape
    out = np.zeros_like(image)
    xs = np.arange(w)
    for y in range(h):
        order = np.argsort(disparity[y], kind="stable")  # far first, near last
        xt = np.rint(xs[order] - disparity[y, order]).astype(np.int64)
        ok = (xt >= 0) & (xt < w)
        for x_src, x_dst in zip(xs[order][ok], xt[ok]):  # the per-pixel loop a fast warp avoids
            out[y, x_dst] = image[y, x_src]
    return out


def timed(fn, repeats: int) -> list[float]:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def scene(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = cv2.resize(rng.uniform(0, 255, (h // 8, w // 8, 3)).astype(np.float32), (w, h)).astype(np.uint8)
    inv = cv2.GaussianBlur(rng.uniform(0, 1, (h, w)).astype(np.float32), (0, 0), 25)
    inv[h // 3 : 2 * h // 3, w // 3 : w // 2] += 0.2  # a nearer box: real discontinuities
    return image, inv


def photos(n: int, offset: int) -> list[np.ndarray]:
    """n real photos from Debian opencv-doc at 640x480 (synthetic scenes where it is absent)."""
    data = find_opencv_examples()
    files = sorted(data.glob("*.jpg")) if data else []
    if not files:
        return [scene(480, 640, offset + i)[0] for i in range(n)]
    return [cv2.resize(read_rgb(files[(offset + i) % len(files)]), (640, 480), interpolation=cv2.INTER_AREA)
            for i in range(n)]


def pipeline_worker(args: tuple[int, int, str]) -> int:
    n, seed, out = args
    cv2.setNumThreads(1)
    config = SynthConfig()
    writer = ShardWriter(out, seed, 64)
    inputs = photos(n, seed * n)
    prior = SegmentPlaneDepthPrior()
    depths = [prior.estimate([img], [str(i)])[0] for i, img in enumerate(inputs)]  # not timed
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for i, (image, inv) in enumerate(zip(inputs, depths)):
        pair = synthesize_pair(image, inv, config.disparity.sample(rng) * 640 / 1280, config)
        writer.write(StereoSample(f"s{seed}_{i}", meta={"sample_id": f"s{seed}_{i}"}, **pair))
    return int((time.perf_counter() - start) * 1e9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--images", type=int, default=12, help="images per worker for the pipeline figure")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    image, inv = scene(720, 1280, 0)
    disparity = inv / inv.max() * 100.0
    mpx = 1280 * 720 / 1e6
    t_ref = statistics.median(timed(lambda: reference_warp(image, disparity), 1))
    print("forward warp, RGB 1280x720, 1 thread (goal: >= 50 Mpx/s)")
    backends = ["numba", "numpy"] if _numba_kernel() is not None else ["numpy"]
    for backend in backends:
        t = statistics.median(timed(lambda: forward_warp(image, disparity, backend=backend), args.repeats))
        label = {"numba": "ours, numba (one compiled pass per row)", "numpy": "ours, numpy (whole-image passes)"}[backend]
        print(f"  {label:<46}: {t * 1e3:8.1f} ms  {mpx / t:7.1f} Mpx/s  ({t_ref / t:.0f}x the reference)")
    if "numba" not in backends:
        print("  (numba not installed: pip install numba for the compiled backend)")
    print(f"  {'reference (per-row z-buffer, rounding)':<46}: {t_ref * 1e3:8.1f} ms  {mpx / t_ref:7.1f} Mpx/s")

    with tempfile.TemporaryDirectory() as out:
        ns = pipeline_worker((args.images, 0, out)) / 1e9
        print(f"classical pipeline at 640x480 (no depth inference), 1 process: {args.images / ns:.1f} pairs/s")
        with ProcessPoolExecutor(args.workers) as pool:
            t0 = time.perf_counter()
            list(pool.map(pipeline_worker, [(args.images, k + 1, out) for k in range(args.workers)]))
            wall = time.perf_counter() - t0
        # wall time includes the untimed depth prior of each worker; report the timed part too
        with ProcessPoolExecutor(args.workers) as pool:
            per_worker = list(pool.map(pipeline_worker, [(args.images, k + 10, out) for k in range(args.workers)]))
        pairs = args.images * args.workers
        print(f"classical pipeline at 640x480, {args.workers} processes (shards): "
              f"{pairs / (max(per_worker) / 1e9):.1f} pairs/s (timed part), wall incl. depth prior {pairs / wall:.1f} pairs/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
