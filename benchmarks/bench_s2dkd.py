"""The S2DKD sanity ladder: does the distillation carry a teacher's dense information to the network?

    python benchmarks/bench_s2dkd.py [--steps 200] [--seeds 0 1 2] [--teachers perfect gamma blur]
        [--lambda-dense 0] [--model igev-tiny] [--device cpu] [--depth-model DIR]

Every row fine-tunes the same warm-started model (``--warmup-steps`` of dense pre-training on the
bench's synthesized training photos, see ``bench_pretrain.py``) with the same steps, crops, data
and seeds, on the training photos; each is evaluated on the held-out synthesized pairs (dense GT,
never trained on) and on the real Aloe pair:

- **sparse only**: the labels a LiDAR gives (``--sparsify scan``: one 64-beam sweep, about 5 % of
  the pixels with the gaps between beams; the density is measured and printed);
- **S2DKD, <teacher>**: the same labels plus S2DKD with a simulated monocular teacher, aligned to the
  sparse labels by the product's own alignment code: ``perfect`` (the dense GT itself), ``gain``
  (an affine map with a smooth +-8 % gain error), ``gamma`` (a 0.8 response non-linearity and the gain
  error), ``blur`` (edges blurred over ~3 px, as monocular networks blur them), ``prior`` (the offline
  segment-plane prior: a monocular-like guess that knows nothing of the GT); with ``--depth-model``,
  ``depth-anything`` (the real monocular teacher);
- **dense GT**: the same images with every label (the upper bound).

Perfect-teacher S2DKD should land near dense GT: if it does not, the distillation term does not carry
the teacher's information. Reported per row as mean +- spread (std) over the seeds: EPE, bad-3 and the
edge EPE (pixels within 2 px of a GT disparity discontinuity) on the held-out pairs, Aloe EPE, and
error-vs-steps curves (``--out``/s2dkd.json, s2dkd.png).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
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
from m2s_train.s2dkd import SPARSIFY
from m2s_train.synth.pipeline import DepthConfig, depth_estimator_from_config

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from bench_pretrain import pretrain, synthesize  # noqa: E402

TEACHERS = ("perfect", "gain", "gamma", "blur", "prior")


def simulated_teacher(kind: str, disparity: np.ndarray, left: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Relative inverse depth as a monocular network of the given kind would give it (no metric scale)."""
    d = np.nan_to_num(disparity, nan=0.0).astype(np.float32)
    h, w = d.shape
    rel = d / max(float(d.max()), 1e-6)
    gain = cv2.resize(rng.uniform(-0.08, 0.08, (3, 4)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    if kind == "perfect":
        out = rel
    elif kind == "gain":
        out = rel * (1.0 + gain)
    elif kind == "gamma":
        out = rel**0.8 * (1.0 + gain)
    elif kind == "blur":
        out = cv2.GaussianBlur(rel, (0, 0), 3.0)
    elif kind == "prior":
        return depth_estimator_from_config(DepthConfig(backend="segment-prior")).estimate([left], ["x"])[0]
    else:
        raise ValueError(f"unknown teacher '{kind}' (one of {', '.join(TEACHERS)})")
    return (0.37 * out + 0.11).astype(np.float32)  # an unknown affine map: the alignment must undo it


def edge_mask(gt: np.ndarray, radius: int = 2) -> np.ndarray:
    """Pixels within ``radius`` px of a GT disparity discontinuity (a step > 1 px between neighbours)."""
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
    return {"epe": a["epe"], "bad3": a["bad3"], "edge_epe": e["epe"], "edge_bad3": e["bad3"]}


def label_density(dataset_spec: str, sparsify: str, crop: tuple[int, int]) -> float:
    """Share of the pixels of a training crop that carry a label (centre crops of every training image)."""
    base = build_dataset(dataset_spec)
    kept = total = 0
    for i in range(len(base)):
        disp = base.load(i)[2]
        labels = SPARSIFY[sparsify](disp, np.random.default_rng([0, i]))
        h, w = labels.shape
        y, x = max((h - crop[0]) // 2, 0), max((w - crop[1]) // 2, 0)
        window = labels[y : y + crop[0], x : x + crop[1]]
        kept += int(np.isfinite(window).sum())
        total += window.size
    return kept / max(total, 1)


def gradient_diagnosis(init: Path, train_set: Path, teacher_dir: Path, sparsify: str, crop: tuple[int, int],
                       batches: int = 4) -> dict[str, dict[str, float]]:
    """Where each S2DKD term pushes the warm-started network, against where dense GT pushes it.

    For a few training batches (the perfect teacher, the same crops): the gradient of each term with
    respect to every parameter, its norm, and its cosine with the gradient of the dense-GT sequence
    loss (the direction full supervision would take). A term that carries the teacher's dense
    information has a clearly positive cosine; the sparse sequence loss is the baseline."""
    from m2s_train.data.augment import AugmentConfig
    from m2s_train.losses import gt_valid_mask, sequence_loss
    from m2s_train.s2dkd import (
        DistillationDataset,
        S2DKDConfig,
        TeacherCache,
        dense_distillation,
        fill_teacher_cache,
        gradient_loss,
        kl_distillation,
        laplacian_target,
    )

    model = load_model(init)
    model.train()
    model.freeze_bn()
    base = build_dataset(f"synth:{train_set}")
    estimator = depth_estimator_from_config(DepthConfig(backend="precomputed", precomputed_dir=str(teacher_dir)))
    cache = TeacherCache(teacher_dir.parent.parent / "teacher_cache", estimator.model_id)
    fill_teacher_cache(base, cache, estimator, progress=False)
    sparse_ds = DistillationDataset(base, cache, AugmentConfig(crop=crop), model.config.max_disp, sparsify=sparsify)
    dense_ds = DistillationDataset(base, None, AugmentConfig(crop=crop), model.config.max_disp)
    cfg = S2DKDConfig()
    named = [(n, p) for n, p in model.named_parameters() if not n.startswith("confidence_head.")]
    params = [p for _, p in named]
    # the refinement: the GRU update and its upsampler, which only the per-iteration terms reach
    refine = torch.tensor([n.startswith(("update.", "spx2_gru.", "spx_gru.")) for n, p in named for _ in range(p.numel())])
    sums: dict[str, list[float]] = {}
    for b in range(batches):
        idx = [(4 * b + k) % len(base) for k in range(4)]
        sparse = torch.utils.data.default_collate([sparse_ds[i] for i in idx])
        dense = torch.utils.data.default_collate([dense_ds[i] for i in idx])  # the same crops (same seeds)
        out = model(sparse["left"], sparse["right"])
        gt, valid = sparse["disparity"], sparse["valid"]
        teacher, t_valid = sparse["teacher"], sparse["teacher_valid"]
        h4, w4 = out.init_prob.shape[-2:]
        t_q = torch.nn.functional.avg_pool2d(teacher * t_valid, 4) / torch.nn.functional.avg_pool2d(
            t_valid.float(), 4).clamp(min=1e-6) / 4.0
        v_q = torch.nn.functional.avg_pool2d(t_valid.float(), 4) > 0.999
        labelled = torch.nn.functional.max_pool2d(gt_valid_mask(gt, valid, model.config.max_disp).float(), 4) > 0
        weight_q = v_q.float() * torch.where(labelled, cfg.all_pixels_weight, 1.0)
        labelled_full = gt_valid_mask(gt, valid, model.config.max_disp)
        weight_full = t_valid.float() * torch.where(labelled_full, cfg.all_pixels_weight, 1.0)
        terms = {
            "dense GT sequence loss": sequence_loss(out, dense["disparity"], dense["valid"], model.config.max_disp,
                                                    confidence_weight=0.0)[0],
            "sparse sequence loss": sequence_loss(out, gt, valid, model.config.max_disp, confidence_weight=0.0)[0],
            "KL, 1/4-res GEV distribution": kl_distillation(out.init_prob, laplacian_target(
                t_q, out.init_prob.shape[1], cfg.width), weight_q),
            "gradient (structure) L1": gradient_loss(out.disparity, teacher, t_valid),
            "full-res Laplacian KL, every iteration": dense_distillation(out.iterations, teacher, weight_full,
                                                                         cfg.dense_width, cfg.gamma),
        }
        grads = {}
        for name, loss in terms.items():
            g = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            grads[name] = torch.cat([(x if x is not None else torch.zeros_like(p)).flatten() for x, p in zip(g, params)])
        ref = grads["dense GT sequence loss"]
        for name, g in grads.items():
            sums.setdefault(f"{name}|cos", []).append(float(torch.nn.functional.cosine_similarity(g, ref, dim=0)))
            sums.setdefault(f"{name}|cos_refine", []).append(
                float(torch.nn.functional.cosine_similarity(g[refine], ref[refine], dim=0)))
            sums.setdefault(f"{name}|norm", []).append(float(g.norm()))
    names = sorted({k.split("|")[0] for k in sums}, key=list(terms).index)
    return {n: {"cosine_with_dense_gt": float(np.mean(sums[f"{n}|cos"])),
                "cosine_refinement": float(np.mean(sums[f"{n}|cos_refine"])), "norm": float(np.mean(sums[f"{n}|norm"]))}
            for n in names}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrain-out", default="/tmp/m2s_bench_pretrain", help="bench_pretrain.pretrain()'s data folder")
    parser.add_argument("--model", default="igev-tiny")
    parser.add_argument("--max-disp", type=int, default=128)
    parser.add_argument("--warmup-steps", type=int, default=150, help="dense pre-training before the ladder")
    parser.add_argument("--steps", type=int, default=200, help="fine-tuning steps of every row")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teachers", nargs="+", default=["perfect", "gamma", "blur"],
                        choices=[*TEACHERS, "depth-anything"])
    parser.add_argument("--depth-model", help="Depth Anything weights (local): adds the real teacher row")
    parser.add_argument("--sparsify", default="scan", choices=sorted(SPARSIFY))
    parser.add_argument("--lambda-kd", type=float, default=None, help="S2DKD KL weight (default: the config's)")
    parser.add_argument("--lambda-grad", type=float, default=None)
    parser.add_argument("--lambda-dense", type=float, default=None, help="full-resolution distillation weight")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", type=int, nargs=2, default=[128, 256])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--diagnose-only", action="store_true", help="print the gradient diagnosis and stop")
    parser.add_argument("--out", default="/tmp/m2s_bench_s2dkd")
    args = parser.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    teachers_root = out / "teachers"
    train_set, test_set = synthesize(Path(args.pretrain_out), 8)
    t0 = time.perf_counter()
    init, _ = pretrain(out / "warmup", args.model, args.max_disp, args.warmup_steps, args.batch_size, tuple(args.crop),
                       progress=False, train_set=train_set, device=args.device)
    print(f"warm start: {args.warmup_steps} dense steps in {time.perf_counter() - t0:.0f} s ({init})")
    density = label_density(f"synth:{train_set}", args.sparsify, tuple(args.crop))
    print(f"labels: --sparsify {args.sparsify}, {100 * density:.1f} % of the pixels of a {args.crop[0]}x{args.crop[1]} "
          "training crop")

    base = build_dataset(f"synth:{train_set}")
    teachers = [t for t in args.teachers if t != "depth-anything"]
    for kind in teachers:
        folder = teachers_root / kind
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for i in range(len(base)):
            if not (folder / f"{i:06d}.npy").is_file():
                left, _, disp, _ = base.load(i)
                np.save(folder / f"{i:06d}.npy", simulated_teacher(kind, disp, left, rng))
    rows: list[tuple[str, dict]] = [("sparse only", {"s2dkd.enabled": False, "sparsify": args.sparsify})]
    weights = {k: v for k, v in (("s2dkd.lambda_kd", args.lambda_kd), ("s2dkd.lambda_grad", args.lambda_grad),
                                 ("s2dkd.lambda_dense", args.lambda_dense)) if v is not None}
    for kind in teachers:
        rows.append((f"S2DKD, {kind} teacher", {"sparsify": args.sparsify, "depth.backend": "precomputed",
                                                "depth.precomputed_dir": str(teachers_root / kind), **weights}))
    if args.depth_model or "depth-anything" in args.teachers:
        if not args.depth_model:
            parser.error("the depth-anything teacher needs --depth-model")
        rows.append(("S2DKD, Depth Anything", {"sparsify": args.sparsify, "depth.backend": "depth-anything",
                                               "depth.model": args.depth_model, **weights}))
    rows.append(("dense GT", {"s2dkd.enabled": False}))

    if "perfect" in teachers:
        diagnosis = gradient_diagnosis(init, train_set, teachers_root / "perfect", args.sparsify, tuple(args.crop))
        print("\ngradients at the warm start (perfect teacher, 4 batches): norm, and cosine with the dense-GT loss's "
              "(all weights / the refinement's: GRU update and upsampler)")
        for name, d in diagnosis.items():
            print(f"  {name:40s} norm {d['norm']:9.4f}  cosine {d['cosine_with_dense_gt']:+.3f} / "
                  f"{d['cosine_refinement']:+.3f}")
        if args.diagnose_only:
            return 0
    else:
        diagnosis = {}
    results: dict[str, list[dict]] = {}
    for name, overrides in rows:
        for seed in args.seeds:
            tag = f"{name.replace(' ', '_').replace(',', '')}_seed{seed}_{args.steps}" + "".join(
                f"_{k.split('.')[-1]}{v:g}" for k, v in weights.items() if "S2DKD" in name)
            cfg = load_config(FinetuneConfig, None, {
                "train.model": args.model, "train.model_overrides": {"max_disp": args.max_disp}, "train.init": str(init),
                "train.datasets": [f"synth:{train_set}"], "train.crop": args.crop, "train.batch_size": args.batch_size,
                "train.steps": args.steps, "train.lr": 2e-4, "train.pct_start": 0.05, "train.num_workers": 0,
                "train.checkpoint_every": max(args.steps // 4, 1), "train.keep_checkpoints": 4, "train.seed": seed,
                "train.freeze_bn": True, "teacher_cache": str(out / "teacher_cache"), **overrides})
            t0 = time.perf_counter()
            run_finetune(cfg, out / "runs" / tag, resume=True, device=args.device, progress=False)
            curve = []
            for ck in sorted((out / "runs" / tag / "checkpoints").glob("step_*")):
                curve.append({"step": int(ck.name.split("_")[1]), **dense_eval(load_model(ck), f"synth:{test_set}")})
            final = dict(curve[-1])
            aloe = evaluate(load_model(ck), "aloe:half", progress=False)["methods"]["model"]["pixel"]
            final.update({"aloe_epe": aloe["epe"], "curve": curve, "seconds": time.perf_counter() - t0})
            results.setdefault(name, []).append(final)
            print(f"  {name:28s} seed {seed}: EPE {final['epe']:.3f}, edge EPE {final['edge_epe']:.3f}, "
                  f"Aloe {final['aloe_epe']:.3f} ({final['seconds']:.0f} s)", flush=True)
    before = dense_eval(load_model(init), f"synth:{test_set}")

    def ms(name: str, key: str, scale: float = 1.0) -> str:
        v = scale * np.array([r[key] for r in results[name]])
        return f"{v.mean():6.3f} +- {v.std():5.3f}"

    print(f"\nS2DKD ladder: {args.model}, warm start {args.warmup_steps} dense steps, then {args.steps} steps per row, "
          f"seeds {args.seeds}; labels {args.sparsify} ({100 * density:.1f} % of a training crop); weights "
          f"{weights or 'the config defaults'}; held-out synthesized pairs (dense GT) and Aloe half")
    print(f"{'':30s} {'EPE':>16s} {'bad-3 %':>16s} {'edge EPE':>16s} {'Aloe EPE':>16s}")
    print(f"{'warm start (no fine-tuning)':30s} {before['epe']:6.3f}{'':10s} {100 * before['bad3']:6.3f}{'':10s} "
          f"{before['edge_epe']:6.3f}")
    for name in results:
        print(f"{name:30s} {ms(name, 'epe')} {ms(name, 'bad3', 100)} {ms(name, 'edge_epe')} {ms(name, 'aloe_epe')}")
    if "S2DKD, perfect teacher" in results:
        def mean(name: str, key: str) -> float:
            return float(np.mean([r[key] for r in results[name]]))
        def spread(name: str, key: str) -> float:
            return float(np.std([r[key] for r in results[name]]))
        for key in ("epe", "edge_epe"):
            sparse, perfect, dense = (mean(n, key) for n in ("sparse only", "S2DKD, perfect teacher", "dense GT"))
            noise = max(spread("sparse only", key), spread("dense GT", key))
            if sparse - dense <= noise:  # no room: dense labels do not beat sparse ones beyond the seed spread
                print(f"perfect teacher, {key}: cannot show an effect here: dense GT {dense:.3f} is no better than "
                      f"sparse-only {sparse:.3f} beyond the seed spread ({noise:.3f}); S2DKD lands at {perfect:.3f}")
                continue
            share = (sparse - perfect) / (sparse - dense)
            print(f"perfect teacher, {key}: {100 * share:.0f} % of the way from sparse-only to dense GT "
                  f"({'closer to dense GT' if share > 0.5 else 'NOT closer to dense GT'})")
    report = {"args": vars(args), "label_density": density, "warm_start": before, "gradients": diagnosis,
              "rows": results}
    (out / "s2dkd.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for name, runs in results.items():
            steps = [p["step"] for p in runs[0]["curve"]]
            for ax, key in zip(axes, ("epe", "edge_epe")):
                values = np.array([[p[key] for p in r["curve"]] for r in runs])
                ax.errorbar(steps, values.mean(0), yerr=values.std(0), label=name, capsize=3)
        for ax, key in zip(axes, ("held-out EPE (px)", "held-out edge EPE (px)")):
            ax.set(xlabel="fine-tuning step", ylabel=key, title=key.replace("held-out ", "").split(" (")[0])
        axes[0].legend(fontsize=7)
        fig.suptitle(f"S2DKD ladder: fine-tuning from sparse labels, mean +- std over {len(args.seeds)} seed(s)")
        fig.tight_layout()
        fig.savefig(out / "s2dkd.png", dpi=100)
    except ImportError:
        pass
    print(f"written: {out / 's2dkd.json'}, {out / 's2dkd.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
