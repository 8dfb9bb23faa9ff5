"""Edge-aware (EA) vs naive inpainting of the synthesized right views, measured downstream: what a
network learns from each.

    python benchmarks/bench_ea.py [--steps 300] [--seeds 0 1 2] [--model igev-tiny] [--device cpu]
        [--depth-model DIR]

The same training photos (opencv-doc, as ``bench_pretrain.py``) are synthesized twice with
everything equal but the hole filling: the EA step (holes grown over the flying foreground pixels
and filled from background context, the default) or the plain hole mask filled as it is
(``inpaint.edge_aware: false``, ``m2s-train synth --no-ea``). The same model is pre-trained from the
same initialisation on each with the same seeds, steps and crops, and evaluated on the real Aloe
pair (half resolution) and on held-out photos synthesized with a filler neither training set used
(Navier-Stokes instead of Telea). Reported as mean +- spread (std) over the seeds: EPE, bad-3 and the
edge EPE (pixels within 2 px of a GT disparity discontinuity, where occlusions are and where a
foreground halo in the right view teaches wrong matches). Writes ``--out``/ea.json and ea.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from calib.example_data import require_opencv_examples
from m2s_train.config import load_config
from m2s_train.models import load_model
from m2s_train.synth.pipeline import SynthConfig, run_synthesis

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "scripts"))
from bench_pretrain import RECIPE_SYNTH, pretrain  # noqa: E402
from bench_s2dkd import dense_eval  # noqa: E402
from quickstart import quickstart_photos  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="igev-tiny")
    parser.add_argument("--max-disp", type=int, default=128)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--holdout", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", type=int, nargs=2, default=[128, 256])
    parser.add_argument("--depth-model", help="Depth Anything weights (local) instead of the offline prior")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="/tmp/m2s_bench_ea")
    args = parser.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    photos = quickstart_photos(require_opencv_examples())
    base = {"depth.model": args.depth_model} if args.depth_model else {}
    t0 = time.perf_counter()
    sets = {}
    for name, edge_aware in (("EA", True), ("naive", False)):
        config = load_config(SynthConfig, RECIPE_SYNTH, {**base, "inpaint.edge_aware": edge_aware})
        run_synthesis(photos[: -args.holdout], out / f"synth_{name}", config, resume=True, progress=False)
        sets[name] = out / f"synth_{name}"
    test_config = load_config(SynthConfig, RECIPE_SYNTH, {**base, "inpaint.method": "ns"})
    run_synthesis(photos[-args.holdout :], out / "synth_test_ns", test_config, resume=True, progress=False)
    print(f"synthesized {len(photos)} photos three ways in {time.perf_counter() - t0:.0f} s")
    tests = {"held-out synthesized (NS fill)": f"synth:{out / 'synth_test_ns'}", "Aloe half (real)": "aloe:half"}

    results: dict[str, dict[str, list[dict]]] = {}
    for name, data in sets.items():
        for seed in args.seeds:
            t0 = time.perf_counter()
            checkpoint, _ = pretrain(out / f"run_{name}_seed{seed}_{args.steps}", args.model, args.max_disp, args.steps,
                                     args.batch_size, tuple(args.crop), progress=False, train_set=data, seed=seed,
                                     device=args.device)
            model = load_model(checkpoint)
            for test, spec in tests.items():
                r = dense_eval(model, spec)
                results.setdefault(test, {}).setdefault(name, []).append(r)
            print(f"  {name:6s} seed {seed}: " + "; ".join(
                f"{t} EPE {results[t][name][-1]['epe']:.3f}" for t in tests) + f" ({time.perf_counter() - t0:.0f} s)",
                flush=True)

    print(f"\nEA vs naive inpainting, downstream: {args.model} pre-trained {args.steps} steps from scratch on each, "
          f"seeds {args.seeds}")
    for test, rows in results.items():
        print(f"{test}:")
        print(f"  {'':8s} {'EPE':>16s} {'bad-3 %':>16s} {'edge EPE':>16s} {'edge bad-3 %':>16s}")
        for name, runs in rows.items():
            cells = []
            for key, scale in (("epe", 1), ("bad3", 100), ("edge_epe", 1), ("edge_bad3", 100)):
                v = scale * np.array([r[key] for r in runs])
                cells.append(f"{v.mean():6.3f} +- {v.std():5.3f}")
            print(f"  {name:8s} " + " ".join(cells))
    (out / "ea.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2, default=float) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6))
        for ax, (test, rows) in zip(np.atleast_1d(axes), results.items()):
            for k, key in enumerate(("epe", "edge_epe")):
                for j, (name, runs) in enumerate(rows.items()):
                    v = np.array([r[key] for r in runs])
                    ax.errorbar(k + 0.15 * (j - 0.5), v.mean(), yerr=v.std(), fmt="o", capsize=4,
                                color=f"C{j}", label=name if k == 0 else None)
            ax.set_xticks([0, 1], ["EPE", "edge EPE"])
            ax.set(title=test, ylabel="px")
            ax.legend()
        fig.suptitle("EA vs plain inpainting: held-out error of the pre-trained model (mean +- std over seeds)")
        fig.tight_layout()
        fig.savefig(out / "ea.png", dpi=100)
    except ImportError:
        pass
    print(f"written: {out / 'ea.json'}, {out / 'ea.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
