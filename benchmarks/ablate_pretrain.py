"""The CPU recipe's ablation: each lever's effect on held-out synthesized pairs, over seeds.

    python benchmarks/ablate_pretrain.py [--levers recipe lr-5e-4 ...] [--seeds 0 1] [--steps 600]
                                         [--jobs 2] [--out /tmp/m2s_ablate]

Every row is the recipe (``configs/train/cpu_recipe.yaml``, data as ``bench_pretrain.py`` makes it)
with one lever changed, trained ``--steps`` steps per seed and evaluated on the held-out
synthesized pairs (photos the training never saw). Runs go ``--jobs`` at a time, one thread each
(on 2 cores two one-thread runs do ~1.4x the work of one two-thread run); finished runs are reused.
Each run is also scored on one real pair, Middlebury Motorcycle as scikit-image ships it: the validation pair.
Aloe is never loaded here: it stays the test pair that ``bench_pretrain.py`` reports.
Prints mean ± standard deviation (range) over the seeds each row has; writes ``ablation.json``/``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pretrain import RECIPE, fmt, recipe_data, spread  # noqa: E402

from calib.safe_files import write_json_atomic  # noqa: E402
from m2s_train.evaluate import evaluate  # noqa: E402
from m2s_train.config import load_config  # noqa: E402
from m2s_train.models import load_model  # noqa: E402
from m2s_train.synth.photo_sets import photo_files, require_photo_sets  # noqa: E402
from m2s_train.train import TrainConfig, latest_checkpoint, train  # noqa: E402

# The real validation pair: Middlebury Motorcycle as scikit-image ships it (741x500, GT up to 60 px). Aloe
# stays the test pair of bench_pretrain.py; it is never loaded here.
VALIDATION, VALIDATION_SPEC = "motorcycle", "motorcycle"

# name: (what changes against the recipe, TrainConfig overrides, data changes: {"variants": K} syntheses per
# photo instead of the recipe's, {"photos": True} adds the Debian photo sets to the training photos)
LEVERS: dict[str, tuple[str, dict, dict]] = {
    "recipe": ("configs/train/cpu_recipe.yaml as it is", {}, {}),
    "1-variant": ("one synthesis per photo instead of four", {}, {"variants": 1}),
    "debian-photos": ("+ 24 Debian photographs on the training side (m2s_train.synth.photo_sets)", {}, {"photos": True}),
    "1-variant+photos": ("one synthesis per photo, + the 24 Debian photographs", {}, {"variants": 1, "photos": True}),
    "lr-5e-4": ("peak learning rate 5e-4 (the bench's before the recipe)", {"lr": 5e-4}, {}),
    "lr-1e-3": ("peak learning rate 1e-3", {"lr": 1e-3}, {}),
    "lr-2e-3": ("peak learning rate 2e-3", {"lr": 2e-3}, {}),
    "scale": ("+ spatial scale 2^[-0.2, 0.4] with stretch (p 0.8 each)",
              {"augment": {"scale_prob": 0.8, "stretch_prob": 0.8}}, {}),
    "eraser": ("+ occlusion patches on the right view (p 0.5)", {"augment": {"eraser_prob": 0.5}}, {}),
    "no-photometric": ("no photometric jitter", {"augment": {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0,
                                                             "gamma": [1.0, 1.0], "asymmetric_prob": 0.0}}, {}),
    "wide-crop": ("crop 96x352 instead of 128x256 (3 % more pixels; more pixels whose match is inside the crop)",
                  {"crop": [96, 352]}, {}),
    "wider": ("cost volume of 8 groups (aggregation base 8) and feature backbone width 0.5 instead of 4 and 0.25",
              {"model_overrides": {"groups": 8, "cost_base": 8, "backbone_width": 0.5}}, {}),
    "batch-2": ("batch 2 (half the pixels per step)", {"batch_size": 2}, {}),
    "fast-context": ("context from the matching features, one GRU, no cost attention (RT-IGEV++-style)",
                     {"model_overrides": {"context_source": "features", "gru_levels": 1, "cost_attention": False}}, {}),
}


def dotted(overrides: dict, prefix: str = "") -> dict:
    """Nested overrides as load_config's dotted keys: {"augment": {"eraser_prob": 0.5}} -> {"augment.eraser_prob": 0.5},
    so a lever changes one key of a mapping (model_overrides, augment) and keeps the recipe's others."""
    out = {}
    for key, value in overrides.items():
        if isinstance(value, dict):
            out.update(dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def lever_data(lever: str, out: Path, variants: int, holdout: int) -> tuple[list[str], str]:
    data = LEVERS[lever][2]
    extra = photo_files(require_photo_sets()) if data.get("photos") else None
    # the held-out pairs are the recipe's (its variants), whatever the lever does to the training side
    return recipe_data(out / "data", data.get("variants", variants), holdout, extra_photos=extra,
                       holdout_variants=variants)


def run_one(lever: str, seed: int, steps: int, out: Path, variants: int, holdout: int) -> dict:
    """Train and evaluate one (lever, seed) in this process; returns (and saves) its row."""
    overrides = LEVERS[lever][1]
    train_specs, test_spec = lever_data(lever, out, variants, holdout)
    config = load_config(TrainConfig, RECIPE, {"datasets": train_specs, "seed": seed, "steps": steps,
                                               "checkpoint_every": steps, "keep_checkpoints": 1, **dotted(overrides)})
    run_dir = out / "runs" / f"{lever}_seed{seed}"
    t0 = time.perf_counter()
    summary = train(config, run_dir, overwrite=True, progress=False, device="cpu")
    seconds = time.perf_counter() - t0
    model = load_model(latest_checkpoint(run_dir))
    result = evaluate(model, test_spec, progress=False)["methods"]["model"]["pixel"]
    row = {"lever": lever, "seed": seed, "steps": steps, "seconds_per_step": seconds / steps,
           "last_loss": summary["last_loss"], "epe": result["epe"], "bad3": result["bad3"],
           "train": train_specs, "holdout": test_spec, VALIDATION: validate(model)}
    write_json_atomic(out / "results" / f"{lever}_seed{seed}_{steps}.json", row)
    return row


def validate(model: torch.nn.Module) -> dict:
    """The real validation pair (Motorcycle): EPE and bad-3 of the model."""
    pixel = evaluate(model, VALIDATION_SPEC, progress=False)["methods"]["model"]["pixel"]
    return {"epe": pixel["epe"], "bad3": pixel["bad3"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levers", nargs="+", default=list(LEVERS), choices=list(LEVERS), metavar="LEVER",
                        help=f"rows to run (default: all): {', '.join(LEVERS)}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--variants", type=int, default=4, help="the recipe's syntheses per photo (default: 4)")
    parser.add_argument("--holdout", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each (default: 2)")
    parser.add_argument("--out", default="/tmp/m2s_ablate")
    parser.add_argument("--report-only", action="store_true",
                        help="no training: the table from the runs already in --out (a row says how many seeds it "
                             "has); a row saved before the Motorcycle column is scored on it if its run is still there")
    parser.add_argument("--one", nargs=2, metavar=("LEVER", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out)
    if args.one:
        torch.set_num_threads(1)
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.steps, out, args.variants, args.holdout)))
        return 0

    if not args.report_only:
        for lever in args.levers:  # every dataset once, before the parallel runs
            lever_data(lever, out, args.variants, args.holdout)

    def job(lever_seed: tuple[str, int]) -> dict | None:
        lever, seed = lever_seed
        saved = out / "results" / f"{lever}_seed{seed}_{args.steps}.json"
        if not saved.exists() and args.report_only:
            return None
        if not saved.exists():
            command = [sys.executable, __file__, "--one", lever, str(seed), "--steps", str(args.steps),
                       "--variants", str(args.variants), "--holdout", str(args.holdout), "--out", str(out)]
            done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"{lever} seed {seed} failed:\n{done.stderr[-2000:]}")
        row = json.loads(saved.read_text())
        run_dir = out / "runs" / f"{lever}_seed{seed}"
        if VALIDATION not in row and (run_dir / "checkpoints").is_dir():
            row[VALIDATION] = validate(load_model(latest_checkpoint(run_dir)))  # a row from before the column
            write_json_atomic(saved, row)
        print(f"  {lever} seed {seed}: EPE {row['epe']:.2f} px, bad-3 {100 * row['bad3']:.1f} %", file=sys.stderr)
        return row

    with ThreadPoolExecutor(args.jobs) as pool:
        rows = [r for r in pool.map(job, [(lever, seed) for lever in args.levers for seed in args.seeds]) if r]

    # seconds per step stay in ablation.json only: they depend on what else ran on the cores
    lines = ["| lever | change against the recipe | seeds | held-out EPE px | held-out bad-3 % | Motorcycle bad-3 % |",
             "|---|---|---|---|---|---|"]
    table = {}
    for lever in args.levers:
        mine = [r for r in rows if r["lever"] == lever]
        if not mine:
            continue
        epe, bad3 = spread([r["epe"] for r in mine]), spread([r["bad3"] for r in mine])
        speed = spread([r["seconds_per_step"] for r in mine])
        real = [r[VALIDATION]["bad3"] for r in mine if VALIDATION in r]
        table[lever] = {"change": LEVERS[lever][0], "epe": epe, "bad3": bad3, "seconds_per_step": speed,
                        VALIDATION: spread(real) if real else None}
        seeds = ", ".join(str(r["seed"]) for r in mine)
        lines.append(f"| {lever} | {LEVERS[lever][0]} | {seeds} | {fmt(epe)} | {fmt(bad3, 100, 1)} | "
                     f"{fmt(spread(real), 100, 1) if len(real) == len(mine) else '-'} |")
    text = "\n".join(lines) + f"\n\n{args.steps} steps per run; held-out synthesized pairs: {args.holdout} photos x " \
                              f"{args.variants} variants; Motorcycle: the real validation pair (scikit-image), full size."
    print("\n" + text)
    write_json_atomic(out / "ablation.json", {"steps": args.steps, "seeds": args.seeds, "rows": table})
    (out / "ablation.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
