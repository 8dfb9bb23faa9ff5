"""The S2DKD ablation, CPU-sized: sparse-only vs S2DKD fine-tuning from the same pre-trained model.

    python benchmarks/bench_pretrain.py            # once: makes the pre-trained checkpoint and data
    python benchmarks/bench_s2dkd.py [--steps 300]

Data: the held-out synthesized pairs of bench_pretrain (photos never used in pre-training),
labels sparsified ``lidar-like`` (~18 % density, no labels in the top 30 %). Teacher: a
*simulated* monocular network (no Depth Anything weights offline): the true disparity passed
through an unknown non-linear response (gamma 0.8), a smooth low-frequency gain error (+-8 %)
and an affine change, so it has exact edges but no metric scale, like monocular depth.
Both runs use the same seed, steps and crops; evaluation on the dense GT: EPE, bad-3 and the
EPE in the edge region (within 3 px of a GT discontinuity > 1 px), plus real Aloe (half res).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from calib.metrics import MetricAccumulator
from m2s_train.config import load_config
from m2s_train.data.stereo_datasets import build_dataset
from m2s_train.evaluate import evaluate
from m2s_train.finetune import FinetuneConfig, run_finetune
from m2s_train.models import load_model
from m2s_train.train import latest_checkpoint


def simulated_teacher(disparity: np.ndarray, rng: np.random.Generator, gamma: float = 0.8,
                      gain_error: float = 0.08) -> np.ndarray:
    d = np.nan_to_num(disparity, nan=0.0).astype(np.float32)
    h, w = d.shape
    gain = cv2.resize(rng.uniform(-gain_error, gain_error, (3, 4)).astype(np.float32), (w, h),
                      interpolation=cv2.INTER_CUBIC)
    rel = (d / max(float(d.max()), 1e-6)) ** gamma * (1.0 + gain)
    return (0.37 * rel + 0.11).astype(np.float32)


def edge_mask(gt: np.ndarray, radius: int = 3) -> np.ndarray:
    g = np.nan_to_num(gt, nan=0.0)
    jumps = (np.abs(np.diff(g, axis=1, prepend=g[:, :1])) > 1.0) | (np.abs(np.diff(g, axis=0, prepend=g[:1])) > 1.0)
    return cv2.dilate(jumps.astype(np.uint8), np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)) > 0


@torch.no_grad()
def dense_eval(model: torch.nn.Module, spec: str) -> dict[str, float]:
    dataset = build_dataset(spec)
    whole, edges = MetricAccumulator(), MetricAccumulator()
    model.eval()
    for i in range(len(dataset)):
        item = dataset[i]
        gt = np.where(item["valid"][0].numpy(), item["disparity"][0].numpy(), np.nan)
        pred = model(item["left"][None], item["right"][None]).disparity[0, 0].numpy()
        whole.add(pred, gt)
        edges.add(pred, gt, mask=edge_mask(gt))
    a, e = whole.summary()["pixel"], edges.summary()["pixel"]
    return {"epe": a["epe"], "bad3": a["bad3"], "edge_epe": e["epe"], "edge_bad3": e["bad3"], "edge_pixels": e["pixels"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrain-dir", default="/tmp/m2s_bench_pretrain")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default="/tmp/m2s_bench_s2dkd")
    parser.add_argument("--lambda-kd", type=float, default=0.5)
    parser.add_argument("--lambda-grad", type=float, default=0.5)
    parser.add_argument("--kd-width", type=float, default=1.0)
    parser.add_argument("--teacher-gamma", type=float, default=0.8, help="teacher response non-linearity (1: affine)")
    parser.add_argument("--teacher-gain", type=float, default=0.08, help="teacher low-frequency gain error (0: none)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    pre = Path(args.pretrain_dir)
    init = latest_checkpoint(pre / "run")
    data = pre / "synth_test"
    if init is None or not data.is_dir():
        print(f"no pre-trained run in {pre}: run benchmarks/bench_pretrain.py first", file=sys.stderr)
        return 2
    out = Path(args.out)
    teachers = out / f"teachers_g{args.teacher_gamma:g}_e{args.teacher_gain:g}"
    teachers.mkdir(parents=True, exist_ok=True)
    base = build_dataset(f"synth:{data}")
    rng = np.random.default_rng(0)
    for i in range(len(base)):
        np.save(teachers / f"{i:06d}.npy", simulated_teacher(base.load(i)[2], rng, args.teacher_gamma, args.teacher_gain))

    max_disp = load_model(init).config.max_disp
    rows = {}
    for name, enabled in (("sparse only", False), ("S2DKD", True)):
        cfg = load_config(FinetuneConfig, None, {
            "train.model": "igev-tiny", "train.model_overrides": {"max_disp": max_disp}, "train.init": str(init),
            "train.datasets": [f"synth:{data}"], "train.crop": [128, 256], "train.batch_size": 4,
            "train.steps": args.steps, "train.lr": 2e-4, "train.pct_start": 0.05, "train.num_workers": 0,
            "train.checkpoint_every": args.steps, "train.freeze_bn": True, "sparsify": "lidar-like",
            "s2dkd.enabled": enabled, "s2dkd.lambda_kd": args.lambda_kd if enabled else None,
            "s2dkd.lambda_grad": args.lambda_grad if enabled else None, "s2dkd.width": args.kd_width if enabled else None,
            "depth.backend": "precomputed",
            # the sparse-only run ignores the teacher: keep its config (and so its resumable run) fixed
            "depth.precomputed_dir": str(teachers if enabled else out / "teachers"),
            "teacher_cache": str(out / (f"cache_g{args.teacher_gamma:g}_e{args.teacher_gain:g}" if enabled else "cache"))})
        tag = (f"s2dkd_kd{args.lambda_kd:g}_g{args.lambda_grad:g}_b{args.kd_width:g}_t{args.teacher_gamma:g}_{args.teacher_gain:g}"
               if enabled else "sparse")
        run = out / tag
        run_finetune(cfg, run, resume=True, device="cpu", progress=True)
        model = load_model(latest_checkpoint(run))
        rows[name] = dense_eval(model, f"synth:{data}")
        aloe = evaluate(model, "aloe:half", progress=False)["methods"]["model"]["pixel"]
        rows[name].update({"aloe_epe": aloe["epe"], "aloe_bad3": aloe["bad3"]})
    rows["pre-trained (no fine-tuning)"] = dense_eval(load_model(init), f"synth:{data}")

    print(f"\nfine-tuning {args.steps} steps from {init.name} on {len(base)} pairs with lidar-like sparse labels; "
          f"S2DKD lambda_kd {args.lambda_kd:g}, lambda_grad {args.lambda_grad:g}, width {args.kd_width:g}; "
          f"teacher gamma {args.teacher_gamma:g}, gain error {args.teacher_gain:g}")
    print(f"{'':30s} {'EPE':>7s} {'bad-3 %':>8s} {'edge EPE':>9s} {'edge bad-3 %':>13s} {'Aloe EPE':>9s}")
    for name, r in rows.items():
        aloe = f"{r['aloe_epe']:9.2f}" if "aloe_epe" in r else f"{'':9s}"
        print(f"{name:30s} {r['epe']:7.2f} {100 * r['bad3']:8.1f} {r['edge_epe']:9.2f} {100 * r['edge_bad3']:13.1f} {aloe}")
    (out / "report.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
