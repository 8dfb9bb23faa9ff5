"""Imported checkpoints against the authors' code: the parity table of ``m2s-train import``.

    python benchmarks/bench_published.py [--archs igev rt-igev] [--growth-iters 1 2 4 8 16 32]

For each architecture: the authors' reference network (../shared/reference, random weights and random
BatchNorm statistics, saved in the published format) and our model imported from that file, run on
real pairs (Middlebury Aloe from opencv-doc; Middlebury Motorcycle from scikit-image where installed) at
two sizes, one of them not a multiple of 32 (the authors' InputPadder pads it), at the published test
iterations (IGEV-Stereo 32, RT-IGEV++ 8). Prints max / mean |dd| per row, the initial (soft-argmin)
disparity's max |dd|, and how the difference grows with the iterations on one pair; writes JSON.
The real weights cannot be downloaded here: the figures prove the conversion, not the accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from calib.example_data import require_opencv_examples
from m2s_train.models import load_model
from m2s_train.models.published import import_checkpoint
from m2s_train.models.reference_oracle import load_oracle, reference_disparity, reference_network

TEST_ITERS = {"igev": 32, "rt-igev": 8}


def real_pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    data = require_opencv_examples()
    read = lambda p: cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)  # noqa: E731
    pairs = {"aloe": (read(data / "aloeL.jpg"), read(data / "aloeR.jpg"))}
    try:
        from skimage import data as skdata

        left, right, _ = skdata.stereo_motorcycle()
        pairs["motorcycle"] = (left, right)
    except ImportError:
        print("(scikit-image not installed: Motorcycle skipped; pip install scikit-image)", file=sys.stderr)
    return pairs


def tensor(image: np.ndarray, h: int, w: int) -> torch.Tensor:
    image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(image).permute(2, 0, 1)[None].float()


def initial_disparity_gap(name: str, reference: torch.nn.Module, ours: torch.nn.Module, left, right) -> float:
    """max |dd| of the soft-argmin disparity (1/4 resolution, in 1/4-res px) before any iteration."""
    captured = {}
    hook = reference.classifier.register_forward_hook(lambda m, i, o: captured.setdefault("logits", o))
    try:
        reference_disparity(name, reference, left, right, 1)
    finally:
        hook.remove()
    prob = torch.softmax(captured["logits"].squeeze(1), 1)
    theirs = (prob * torch.arange(prob.shape[1]).view(1, -1, 1, 1)).sum(1, keepdim=True)
    with torch.no_grad():
        mine = ours.softargmin(ours(left / 255, right / 255, iters=1).init_prob)
    if mine.shape != theirs.shape:  # padded sizes: both are at the padded 1/4 resolution
        return float("nan")
    return (mine - theirs).abs().max().item()


def compare(name: str, reference, ours, left, right, iters: int) -> dict[str, float]:
    t0 = time.perf_counter()
    ref = reference_disparity(name, reference, left, right, iters)
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        mine = ours(left / 255, right / 255, iters=iters).disparity
    t_ours = time.perf_counter() - t0
    diff = (mine - ref).abs()
    return {"max_abs_px": diff.max().item(), "mean_abs_px": diff.mean().item(), "ref_range_px": [ref.min().item(), ref.max().item()],
            "seconds_reference": round(t_ref, 2), "seconds_ours": round(t_ours, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=list(TEST_ITERS), choices=list(TEST_ITERS))
    parser.add_argument("--sizes", nargs="+", default=["256x320", "250x370"],
                        help="HxW; keep one that is not a multiple of 32 (default 256x320 250x370)")
    parser.add_argument("--growth-iters", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32],
                        help="iterations for the growth table (first pair, first size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="/tmp/m2s_bench_published.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_oracle()
    pairs = real_pairs()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    oracle = load_oracle()
    rows, growth = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.archs:
            reference = reference_network(name, args.seed)
            published = Path(tmp) / name / "sceneflow.pth"
            published.parent.mkdir()
            torch.save(oracle.official_state_dict(reference), published)  # the published format
            report = import_checkpoint(published, name, Path(tmp) / f"{name}_imported")
            ours = load_model(Path(tmp) / f"{name}_imported").eval()
            for pair, (left_img, right_img) in pairs.items():
                for h, w in sizes:
                    left, right = tensor(left_img, h, w), tensor(right_img, h, w)
                    row = {"arch": name, "pair": pair, "size": f"{h}x{w}", "padded": bool(h % 32 or w % 32),
                           "iters": TEST_ITERS[name], **compare(name, reference, ours, left, right, TEST_ITERS[name]),
                           "init_max_abs_px": initial_disparity_gap(name, reference, ours, left, right)}
                    rows.append(row)
                    print(f"{name:8s} {pair:10s} {h}x{w}{' (padded)' if row['padded'] else '         '} "
                          f"iters {row['iters']:2d}: max |dd| {row['max_abs_px']:.2e} px, mean {row['mean_abs_px']:.2e} px, "
                          f"initial {row['init_max_abs_px']:.2e} | reference {row['seconds_reference']} s, "
                          f"ours {row['seconds_ours']} s", file=sys.stderr)
            (pair, (left_img, right_img)), (h, w) = next(iter(pairs.items())), sizes[0]
            left, right = tensor(left_img, h, w), tensor(right_img, h, w)
            growth[name] = {n: compare(name, reference, ours, left, right, n) for n in args.growth_iters}
            print(f"{name}: growth with iterations on {pair} {h}x{w}: " + ", ".join(
                f"{n}: {g['max_abs_px']:.1e}/{g['mean_abs_px']:.1e}" for n, g in growth[name].items()) + " (max/mean px)",
                file=sys.stderr)
            rows[-1]["coverage"] = {k: report[k] for k in ("source_tensors", "mapped", "aliases", "target_tensors_filled")}

    print("\n| model | pair | size | iterations | max abs dd (px) | mean abs dd (px) | initial disparity max abs dd |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arch']} | {r['pair']} | {r['size']}{' (padded)' if r['padded'] else ''} | {r['iters']} | "
              f"{r['max_abs_px']:.1e} | {r['mean_abs_px']:.1e} | {r['init_max_abs_px']:.1e} |")
    print("\n| model | " + " | ".join(f"{n} it." for n in args.growth_iters) + " |  (max abs dd, px)")
    print("|---|" + "---|" * len(args.growth_iters))
    for name, g in growth.items():
        print(f"| {name} | " + " | ".join(f"{g[n]['max_abs_px']:.1e}" for n in args.growth_iters) + " |")
    ok = all(r["max_abs_px"] <= 0.01 and r["mean_abs_px"] <= 0.001 for r in rows)
    print(f"\nall rows within max 0.01 px / mean 0.001 px: {ok}")
    Path(args.out).write_text(json.dumps({"rows": rows, "growth": growth}, indent=2))
    print(f"-> {args.out}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
