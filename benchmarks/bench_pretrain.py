"""Pre-training on synthesized stereo, measured: before/after accuracy next to OpenCV SGBM.

    python benchmarks/bench_pretrain.py [--model igev-tiny] [--steps 600] [--out /tmp/m2s_bench_pretrain]

1. synthesizes pairs from the real photos of Debian opencv-doc (offline depth prior, EA Telea),
   the last ``--holdout`` photos into a separate held-out set;
2. evaluates the randomly initialised model on the held-out synthetic pairs and on the real
   Middlebury Aloe pair at half resolution (GT disparity up to ~105 px);
3. pre-trains for ``--steps`` on CPU and evaluates again; OpenCV StereoSGBM on the same pairs
   in the same run is the baseline.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from calib.example_data import require_opencv_examples
from m2s_train.config import load_config
from m2s_train.evaluate import evaluate
from m2s_train.models import create_model, load_model
from m2s_train.synth.pipeline import SynthConfig, run_synthesis
from m2s_train.train import TrainConfig, latest_checkpoint, train

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from quickstart import quickstart_photos  # noqa: E402


def row(result: dict, method: str) -> str:
    p = result["methods"][method]["pixel"]
    return f"EPE {p['epe']:6.2f} px  bad-3 {100 * p['bad3']:5.1f} %  D1 {100 * p['d1']:5.1f} %"


BENCH_SYNTH = {"max_side": 512, "disparity.min_max_disparity": 24.0, "disparity.max_max_disparity": 120.0,
               "disparity.overshoot_max": 128.0}


def synthesize(out: Path, holdout: int, overrides: dict | None = None) -> tuple[Path, Path]:
    """The bench's data (resumable): opencv-doc photos synthesized into ``out/synth_train`` and, for the last
    ``holdout`` photos, ``out/synth_test``."""
    photos = quickstart_photos(require_opencv_examples())
    synth = load_config(SynthConfig, None, {**BENCH_SYNTH, **(overrides or {})})
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="igev-tiny")
    parser.add_argument("--max-disp", type=int, default=128, help="model max disparity (Aloe half needs ~105 px)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", type=int, nargs=2, default=[128, 256])
    parser.add_argument("--holdout", type=int, default=8)
    parser.add_argument("--out", default="/tmp/m2s_bench_pretrain")
    args = parser.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    synthesize(out, args.holdout)

    overrides = {"max_disp": args.max_disp}
    torch.manual_seed(0)
    before = create_model(args.model, **overrides)
    tests = {"held-out synthetic": f"synth:{out / 'synth_test'}", "Aloe half (real)": "aloe:half"}
    res_before = {k: evaluate(before, spec, sgbm=True, progress=False) for k, spec in tests.items()}

    t0 = time.perf_counter()
    checkpoint, summary = pretrain(out, args.model, args.max_disp, args.steps, args.batch_size, tuple(args.crop),
                                   args.holdout)
    train_s = time.perf_counter() - t0
    after = load_model(checkpoint)
    res_after = {k: evaluate(after, spec, sgbm=False, progress=False) for k, spec in tests.items()}

    print(f"\n{args.model} (max_disp {args.max_disp}), {summary['steps']} steps of batch {args.batch_size} at "
          f"{args.crop[0]}x{args.crop[1]} on CPU in {train_s:.0f} s"
          + (f"; loss {summary['first_loss']:.2f} -> {summary['last_loss']:.2f}" if summary["first_loss"] is not None
             else " (an earlier, finished run of this --out)"))
    report = {}
    for name in tests:
        print(f"{name}:")
        print(f"  before pre-training : {row(res_before[name], 'model')}")
        print(f"  after pre-training  : {row(res_after[name], 'model')}")
        print(f"  OpenCV SGBM         : {row(res_before[name], 'sgbm')}")
        report[name] = {"before": res_before[name]["methods"]["model"]["pixel"],
                        "after": res_after[name]["methods"]["model"]["pixel"],
                        "sgbm": res_before[name]["methods"]["sgbm"]["pixel"]}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
