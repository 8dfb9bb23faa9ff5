"""Pre-training on synthesized stereo, measured: the CPU recipe next to OpenCV SGBM, over seeds.

    python benchmarks/bench_pretrain.py [--config configs/train/cpu_recipe.yaml] [--seeds 0 1 2]
                                        [--steps N] [--out /tmp/m2s_bench_recipe]

1. synthesizes the opencv-doc photos (quickstart's selection) with ``configs/synth/cpu_recipe.yaml``
   (offline depth prior, EA Telea), ``--variants`` times each (seeds 0..K-1); the last ``--holdout``
   photos go to a separate held-out set, synthesized as many times;
2. pre-trains the recipe (``configs/train/cpu_recipe.yaml``: model, crop, batch, schedule, augmentation)
   once per ``--seeds`` entry, on ``--threads`` CPU threads, timing each run (resumable: a finished
   run of the same ``--out`` is reused, not retrained);
3. evaluates every run on the held-out synthesized pairs, on the real Middlebury Motorcycle pair that
   scikit-image ships (741x500, GT up to 60 px; the validation pair) and on the real Middlebury Aloe pair at
   half resolution (GT disparity up to ~105 px), OpenCV StereoSGBM on the same pairs in the same run, and
   prints the mean, standard deviation and range over seeds; writes ``report.json`` and ``report.md``.

Aloe is a test pair only: the recipe's choices were made on held-out synthesized pairs (and Motorcycle) with
``benchmarks/ablate_pretrain.py``, which never loads it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from calib.example_data import require_opencv_examples
from calib.safe_files import write_json_atomic
from m2s_train.config import load_config
from m2s_train.evaluate import evaluate
from m2s_train.models import load_model
from m2s_train.synth.photo_sets import photo_files, require_photo_sets
from m2s_train.synth.pipeline import SynthConfig, run_synthesis
from m2s_train.train import TrainConfig, latest_checkpoint, train

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from quickstart import quickstart_photos  # noqa: E402


def row(result: dict, method: str) -> str:
    p = result["methods"][method]["pixel"]
    return f"EPE {p['epe']:6.2f} px  bad-3 {100 * p['bad3']:5.1f} %  D1 {100 * p['d1']:5.1f} %"


RECIPE = ROOT / "configs" / "train" / "cpu_recipe.yaml"
RECIPE_SYNTH = ROOT / "configs" / "synth" / "cpu_recipe.yaml"  # the benches' synthesis settings too
ALOE = "aloe:half"


def synthesize(out: Path, holdout: int, overrides: dict | None = None) -> tuple[Path, Path]:
    """The older benches' data (resumable): one synthesis (``configs/synth/cpu_recipe.yaml``, seed 0) of the
    opencv-doc photos into ``out/synth_train`` and, for the last ``holdout`` photos, ``out/synth_test``."""
    photos = quickstart_photos(require_opencv_examples())
    synth = load_config(SynthConfig, RECIPE_SYNTH, overrides)
    t0 = time.perf_counter()
    run_synthesis(photos[:-holdout], out / "synth_train", synth, resume=True, progress=False)
    run_synthesis(photos[-holdout:], out / "synth_test", synth, resume=True, progress=False)
    print(f"synthesized {len(photos)} photos in {time.perf_counter() - t0:.0f} s")
    return out / "synth_train", out / "synth_test"


def pretrain(out: Path, model: str = "igev-tiny", max_disp: int = 128, steps: int = 600, batch_size: int = 4,
             crop: tuple[int, int] = (128, 256), holdout: int = 8, progress: bool = True,
             train_set: Path | None = None, seed: int = 0, checkpoint_every: int | None = None,
             keep_checkpoints: int = 3, device: str = "auto") -> tuple[Path, dict]:
    """Synthesize (if needed; or train on ``train_set``) and pre-train (or resume, or reuse a finished run)
    the bench's model into ``out/run``; returns the final checkpoint and the training summary."""
    train_set = train_set or synthesize(out, holdout)[0]
    cfg = load_config(TrainConfig, None, {
        "model": model, "model_overrides": {"max_disp": max_disp}, "datasets": [f"synth:{train_set}"],
        "crop": list(crop), "batch_size": batch_size, "steps": steps, "lr": 5e-4, "pct_start": 0.05,
        "num_workers": 0, "checkpoint_every": checkpoint_every or max(steps // 4, 1), "log_every": 50, "seed": seed,
        "keep_checkpoints": keep_checkpoints})
    summary = train(cfg, out / "run", resume=True, progress=progress, device=device)
    return latest_checkpoint(out / "run"), summary


def recipe_data(out: Path, variants: int, holdout: int, synth_config: Path = RECIPE_SYNTH,
                extra_photos: list[Path] | None = None, holdout_variants: int = 4) -> tuple[list[str], str]:
    """The recipe's data (resumable): ``variants`` syntheses of the training photos (seeds 0..K-1) and
    ``holdout_variants`` of the ``holdout`` held-out photos, whatever the training side uses, so that every
    lever is measured on the same held-out pairs; ``extra_photos`` (the Debian photo sets) join the training
    side only. Returns the training dataset specs and the held-out spec."""
    photos = quickstart_photos(require_opencv_examples())
    sets = [(photos[:-holdout], "synth_train", variants), (photos[-holdout:], "synth_test", holdout_variants)]
    if extra_photos:
        sets.append((list(extra_photos), "synth_extra", variants))
    train_specs, test_specs = [], []
    t0 = time.perf_counter()
    for k in range(max(variants, holdout_variants)):
        config = load_config(SynthConfig, synth_config, {"seed": k})
        for subset, name, count in sets:
            if k < count:
                run_synthesis(subset, out / f"{name}_v{k}", config, resume=True, progress=False)
                (test_specs if name == "synth_test" else train_specs).append(f"synth:{out / f'{name}_v{k}'}")
    print(f"{len(photos) - holdout + len(extra_photos or [])} training photos x {variants} variants, "
          f"{holdout} held-out photos x {holdout_variants}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return train_specs, "+".join(test_specs)


def recipe_config(config: Path, datasets: list[str], seed: int, steps: int | None) -> TrainConfig:
    return load_config(TrainConfig, config, {"datasets": datasets, "seed": seed, "steps": steps})


def pixel(result: dict, method: str) -> dict:
    return result["methods"][method]["pixel"]


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def fmt(stats: dict, scale: float = 1.0, digits: int = 2) -> str:
    text = f"{scale * stats['mean']:.{digits}f}"
    if stats["n"] > 1:
        text += f" ± {scale * stats['std']:.{digits}f} ({scale * stats['min']:.{digits}f}..{scale * stats['max']:.{digits}f})"
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(RECIPE), help="training recipe (default: configs/train/cpu_recipe.yaml)")
    parser.add_argument("--synth-config", default=str(RECIPE_SYNTH))
    parser.add_argument("--variants", type=int, default=4, help="syntheses per photo, seeds 0..K-1 (default: 4)")
    parser.add_argument("--holdout", type=int, default=8, help="held-out photos (default: 8, the last ones)")
    parser.add_argument("--holdout-variants", type=int, default=4, help="syntheses per held-out photo (default: 4)")
    parser.add_argument("--debian-photos", action="store_true",
                        help="add the 24 Debian photographs (python -m m2s_train.synth.photo_sets fetch) to the training side")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default: 0)")
    parser.add_argument("--steps", type=int, help="override the recipe's steps")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for training (default: 2)")
    parser.add_argument("--out", default="/tmp/m2s_bench_recipe")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    extra = photo_files(require_photo_sets()) if args.debian_photos else None
    train_specs, test_spec = recipe_data(out, args.variants, args.holdout, Path(args.synth_config), extra,
                                         holdout_variants=args.holdout_variants)
    tests = {"held-out synthetic": test_spec, "Motorcycle (real, validation)": "motorcycle", "Aloe half (real)": ALOE}

    runs, sgbm = [], {}
    for seed in args.seeds:
        config = recipe_config(Path(args.config), train_specs, seed, args.steps)
        run_dir = out / f"run_seed{seed}"
        timing = run_dir / "bench_time.json"
        fresh = not run_dir.exists()  # timed only when it runs from step 0 to the end in this call
        t0 = time.perf_counter()
        train(config, run_dir, resume=True, progress=True, device="cpu")
        if fresh:
            write_json_atomic(timing, {"train_s": time.perf_counter() - t0, "threads": args.threads})
        timed = json.loads(timing.read_text()) if timing.exists() else {}
        seconds, threads = timed.get("train_s"), timed.get("threads")
        model = load_model(latest_checkpoint(run_dir))
        evaluated = {name: evaluate(model, spec, sgbm=not sgbm, progress=False) for name, spec in tests.items()}
        results = {name: pixel(result, "model") for name, result in evaluated.items()}
        # SGBM once (fair: its range the pair's GT maximum, the left band answered; calib.sgbm)
        sgbm = sgbm or {name: pixel(result, "sgbm") for name, result in evaluated.items()}
        runs.append({"seed": seed, "steps": config.steps, "train_s": seconds, "threads": threads, **results})
        took = f"{seconds / 60:.1f} min" if seconds else "time not known (resumed)"
        print(f"seed {seed}: {config.steps} steps, {took}; "
              + "; ".join(f"{n} EPE {r['epe']:.2f} px bad-3 {100 * r['bad3']:.1f} %" for n, r in results.items()),
              file=sys.stderr)

    report = {"config": str(args.config), "variants": args.variants, "holdout": args.holdout, "runs": runs,
              "sgbm": sgbm, "summary": {}}
    lines = [f"| test set | recipe, {len(runs)} seed(s): EPE px | bad-3 % | OpenCV SGBM: EPE px | bad-3 % |",
             "|---|---|---|---|---|"]
    for name in tests:
        epe, bad3 = spread([r[name]["epe"] for r in runs]), spread([r[name]["bad3"] for r in runs])
        report["summary"][name] = {"epe": epe, "bad3": bad3}
        lines.append(f"| {name} | {fmt(epe)} | {fmt(bad3, 100, 1)} | {sgbm[name]['epe']:.2f} | "
                     f"{100 * sgbm[name]['bad3']:.1f} |")
    timed = [r for r in runs if r["train_s"]]
    if timed:  # each run's time with the threads it had (runs side by side on one thread each are not idle figures)
        report["summary"]["train_minutes"] = {r["seed"]: r["train_s"] / 60 for r in timed}
        lines.append("\ntraining: " + ", ".join(f"seed {r['seed']} {r['train_s'] / 60:.1f} min on {r['threads']} thread(s)"
                                             for r in timed))
    table = "\n".join(lines)
    print("\n" + table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
