"""Warm start of the recurrent refinement from the previous frame's disparity, measured on a sequence.

    python benchmarks/bench_warm_start.py [--checkpoint DIR] [--frames 12] [--noise 3] [--shift 8]

The sequence of ``bench_confidence.py``'s temporal part, built the same way (``held_sequence``): Aloe
half held for ``--frames`` frames under fresh sensor noise, then the same scene shifted by ``--shift`` px
(a scene change), ``--frames`` more. Each row runs the model over it with a number of refinement
iterations, either **cold** (every frame from the GEV estimate, what the product does) or **warm**
(from the previous frame's disparity, ``model(..., init_disparity=prev)``; the first frame is cold).
Printed per row: EPE and bad-3 on the static frames (all but the first of each scene), EPE on the
first frame after the change and the frames until EPE is back within 5 % of the cold default's on the
same frame, and the median time per frame on this machine. Warm start is worth having where a warm
row with fewer iterations matches the cold default's accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from m2s_train.models import load_model

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from bench_confidence import scene_change  # noqa: E402
from bench_pretrain import pretrain  # noqa: E402


def sequence(frames: int, noise: float, shift: int) -> list[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
    from m2s_stereo.bag_tools import held_sequence

    def tensor(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(image).permute(2, 0, 1).float().div(255)[None]

    return [(tensor(f.left), tensor(f.right), f.gt_disparity)
            for f in held_sequence(iter(scene_change(shift)), frames, noise, 10.0, 0)]


def run(model: torch.nn.Module, seq: list, iters: int, warm: bool) -> dict:
    prev = None
    errors, times = [], []
    for left, right, gt in seq:
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model(left, right, iters=iters, init_disparity=prev if warm else None)
        times.append(time.perf_counter() - t0)
        disp = out.disparity
        prev = disp
        d = disp[0, 0].numpy()
        valid = np.isfinite(gt)
        err = np.abs(d[valid] - gt[valid])
        errors.append((float(err.mean()), float(np.mean(err > 3.0))))
    return {"epe": [e for e, _ in errors], "bad3": [b for _, b in errors], "ms": 1000 * float(np.median(times))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a pre-trained checkpoint (default: bench_pretrain.pretrain()'s, trained if absent)")
    parser.add_argument("--pretrain-out", default="/tmp/m2s_bench_pretrain")
    parser.add_argument("--steps", type=int, default=600, help="bench_pretrain.pretrain()'s steps when it has to train")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--noise", type=float, default=3.0)
    parser.add_argument("--shift", type=int, default=8)
    parser.add_argument("--iters", type=int, nargs="+", default=None, help="default: 1 .. 2 x the model's valid_iters")
    parser.add_argument("--out", default="/tmp/m2s_bench_warm_start")
    args = parser.parse_args()
    torch.set_num_threads(2)
    checkpoint = Path(args.checkpoint) if args.checkpoint else pretrain(Path(args.pretrain_out), steps=args.steps)[0]
    model = load_model(checkpoint).eval()
    default = model.config.valid_iters
    iters_list = args.iters or list(range(1, 2 * default + 1))
    seq = sequence(args.frames, args.noise, args.shift)
    static = [i for i in range(len(seq)) if i % args.frames]  # all but each scene's first frame
    change = args.frames
    rows = {}
    for warm in (False, True):
        for iters in iters_list:
            rows[f"{'warm' if warm else 'cold'} {iters}"] = run(model, seq, iters, warm)
    ref = rows[f"cold {default}"]
    print(f"{model.model_name} from {checkpoint}: valid_iters {default}; Aloe half, {args.frames} frames under "
          f"noise {args.noise}, then shifted {args.shift} px, {args.frames} more")
    print(f"  {'row':8s} {'static EPE':>10s} {'bad-3 %':>8s} {'EPE after change':>17s} {'settle':>7s} {'ms/frame':>9s}")
    for name, r in rows.items():
        epe = np.asarray(r["epe"])
        late = [k for k in range(change, len(seq)) if epe[k] > 1.05 * ref["epe"][k]]
        settle = 0 if not late else max(late) - change + 1
        r.update(static_epe=float(epe[static].mean()), static_bad3=float(np.mean(np.asarray(r["bad3"])[static])),
                 settle_frames=settle)
        print(f"  {name:8s} {r['static_epe']:10.3f} {100 * r['static_bad3']:8.1f} {epe[change]:17.3f} {settle:7d} "
              f"{r['ms']:9.1f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "warm_start.json").write_text(json.dumps({"checkpoint": str(checkpoint), "rows": rows}, indent=2) + "\n")
    print(f"written: {out / 'warm_start.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
