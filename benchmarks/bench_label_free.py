"""Do the label-free figures move the right way when a model gets better? Measured across the
checkpoints of one training run, on pairs that do have GT.

    python benchmarks/bench_label_free.py [--steps 400] [--every 50]

A model is pre-trained as in ``bench_pretrain.py`` with a checkpoint every ``--every`` steps (all
kept); every checkpoint is evaluated on the real Aloe pair (half resolution) and on the held-out
synthesized pairs with the GT metrics (EPE) and the label-free ones (photometric error of the right
view warped by the disparity, left-right consistency, share at the range limits; no GT used), and
the Spearman rank correlation between each label-free figure and EPE across the checkpoints is
printed (photometric error and range share should rise with EPE: rho > 0; the left-right
consistency should fall: rho < 0). Writes ``--out``/label_free.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from m2s_train.evaluate import evaluate
from m2s_train.models import load_model

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from bench_pretrain import pretrain, synthesize  # noqa: E402

FIGURES = ("photometric", "lr_consistency", "at_range_limit")


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    def ranks(x: list[float]) -> np.ndarray:
        x = np.asarray(x, np.float64)
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=np.float64)
        for v in np.unique(x):  # ties share their mean rank
            r[x == v] = r[x == v].mean()
        return r
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrain-out", default="/tmp/m2s_bench_pretrain", help="bench_pretrain.pretrain()'s data folder")
    parser.add_argument("--model", default="igev-tiny")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--every", type=int, default=50, help="a checkpoint every N steps (all are kept)")
    parser.add_argument("--out", default="/tmp/m2s_bench_label_free")
    args = parser.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    train_set, test_set = synthesize(Path(args.pretrain_out), 8)
    pretrain(out, args.model, steps=args.steps, train_set=train_set, checkpoint_every=args.every,
             keep_checkpoints=args.steps // args.every + 1, progress=False)
    checkpoints = sorted((out / "run" / "checkpoints").glob("step_*"))
    tests = {"Aloe half (real)": "aloe:half", "held-out synthesized": f"synth:{test_set}"}
    rows: dict[str, list[dict]] = {t: [] for t in tests}
    for ck in checkpoints:
        model = load_model(ck)
        for test, spec in tests.items():
            m = evaluate(model, spec, label_free=True, progress=False)["methods"]["model"]
            rows[test].append({"step": int(ck.name.split("_")[1]), "epe": m["pixel"]["epe"], **m["label_free"]})
    report = {"checkpoints": [c.name for c in checkpoints], "rows": rows, "spearman": {}}
    for test, table in rows.items():
        print(f"\n{test}: {len(table)} checkpoints of one run")
        print(f"  {'step':>6s} {'EPE':>8s} {'photometric':>12s} {'LR consistency %':>17s} {'at range limit %':>17s}")
        for r in table:
            print(f"  {r['step']:6d} {r['epe']:8.3f} {r['photometric']:12.4f} {100 * r['lr_consistency']:17.1f} "
                  f"{100 * r['at_range_limit']:17.2f}")
        rho = {f: spearman([r[f] for r in table], [r["epe"] for r in table]) for f in FIGURES}
        report["spearman"][test] = rho
        print("  Spearman rho with EPE: " + ", ".join(f"{f} {v:+.2f}" for f, v in rho.items())
              + "  (right way: photometric > 0, lr_consistency < 0, at_range_limit > 0)")
    (out / "label_free.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {out / 'label_free.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
