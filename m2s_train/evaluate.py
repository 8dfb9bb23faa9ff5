"""``m2s-train eval``: accuracy of a checkpoint (and optionally the fair OpenCV SGBM, :mod:`calib.sgbm`) on
datasets with GT, on all GT pixels and on the columns where SGBM's search over its range is possible."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from calib.errors import DataError
from calib.figures import (
    Panel,
    disparity_panel,
    image_panel,
    panel_figure,
    stereo_result_figure,
)
from calib.metrics import (
    MetricAccumulator,
    SparsificationAccumulator,
    disparity_metrics,
    LABEL_FREE_FIGURES,
    label_free_metrics,
    nan_mean,
    sparsification_plot,
)
from calib.safe_files import write_json_atomic, write_text_atomic
from calib.sgbm import SGBM_PARAMETERS, WLS_PARAMETERS, SearchRange, fill_invalid, has_wls, sgbm_disparity, sgbm_right_view, sgbm_wls_disparity
from m2s_train.data.stereo_datasets import build_dataset

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate(model: torch.nn.Module | None, dataset_spec: str, *, iters: int | None = None, out: str | os.PathLike | None = None,
             error_maps: int = 0, sgbm: bool = False, device: str = "cpu", progress: bool = True,
             max_images: int | None = None, label_free: bool = False, wls: bool = False) -> dict[str, Any]:
    """Evaluate on every pair of ``dataset_spec``; writes ``metrics.json`` + ``metrics.md`` into ``out``.

    ``sgbm``: also the fair OpenCV SGBM (:mod:`calib.sgbm`: its search range is the pair's GT maximum
    rounded up to 16, or without GT the model's range, 192 px without a model; the left band answered);
    ``wls``: also SGBM + WLS (needs ``cv2.ximgproc``). Every method is scored on all GT pixels
    (``pixel``) and on the columns x >= the pair's search range (``full_search``), where SGBM's
    search is complete.

    ``label_free``: also the model's figures that need no GT (:func:`calib.metrics.label_free_metrics`;
    a second pass on the swapped, mirrored pair gives the right view for the left-right check), per
    pair and as the mean over pairs, to compare with the GT metrics or to use where there is no GT."""
    if max_images is not None and max_images < 1:
        raise DataError(f"--max-images must be >= 1, got {max_images}")
    dataset = build_dataset(dataset_spec)
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    rows: dict[str, MetricAccumulator] = {}
    timing: dict[str, list[float]] = {}
    confidences: dict[str, SparsificationAccumulator] = {}
    free: list[dict[str, Any]] = []
    free_sgbm: list[dict[str, Any]] = []
    if model is not None:
        model = model.to(device).eval()
        rows["model"] = MetricAccumulator()
        confidences["model"] = SparsificationAccumulator()
    if wls and not has_wls():
        sgbm_wls_disparity(np.zeros((16, 64), np.uint8), np.zeros((16, 64), np.uint8), 16)  # raises, naming the package
    if sgbm:
        rows["sgbm"] = MetricAccumulator()
    if wls:
        rows["sgbm_wls"] = MetricAccumulator()
    full_search = {name: MetricAccumulator() for name in rows}
    ranges: list[dict[str, Any]] = []
    out_dir = Path(out) if out else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    max_disp = model.config.max_disp if model is not None else 192
    for i in tqdm(range(n), desc=f"eval {dataset_spec}", unit="pair", disable=not progress):
        item = dataset[i]
        gt = item["disparity"][0].numpy()
        gt = np.where(item["valid"][0].numpy(), gt, np.nan)
        with np.errstate(invalid="ignore"):
            has_gt = bool((gt > 0).any())
        search = SearchRange.from_ground_truth(gt) if has_gt else SearchRange.covering(
            max_disp, "the model's range" if model is not None else "the default 192 px (no GT, no model)")
        ranges.append({"sample_id": item["sample_id"], "px": search.px, "from": search.source})
        preds, confs = {}, {}
        if model is not None:
            t0 = time.perf_counter()
            out = model(item["left"][None].to(device), item["right"][None].to(device), iters=iters)
            preds["model"] = out.disparity[0, 0].cpu().numpy()
            confs["model"] = out.confidence[0, 0].cpu().numpy()
            timing.setdefault("model", []).append(time.perf_counter() - t0)
            if label_free:
                mirrored = model(item["right"].flip(-1)[None].to(device), item["left"].flip(-1)[None].to(device),
                                 iters=iters).disparity[0, 0].flip(-1).cpu().numpy()
                lf = label_free_metrics(_rgb(item["left"]), _rgb(item["right"]), preds["model"], mirrored,
                                        model.config.max_disp)
                free.append({"sample_id": item["sample_id"],
                             **{k: lf[k] for k in (*LABEL_FREE_FIGURES, "unscorable") if k in lf}})
                if "unscorable" in lf:
                    log.warning("%s: no label-free score: %s", item["sample_id"], lf["unscorable"])
                if out_dir and i < error_maps:
                    panel_figure(out_dir / f"photometric_model_{i:04d}.png",
                                 f"model on {dataset_spec}, {item['sample_id']}: photometric residual "
                                 f"{lf['photometric']:.3f}, left-right consistent {100 * lf['lr_consistency']:.0f} %",
                                 [image_panel(_rgb(item["left"]), "left image"),
                                  disparity_panel(preds["model"], "disparity (predicted)"),
                                  Panel(lf["photometric_map"], "right view warped by it vs left", "residual", 0.0, 0.3)])
        if sgbm:
            left, right = _rgb(item["left"]), _rgb(item["right"])
            t0 = time.perf_counter()
            raw = sgbm_disparity(left, right, search)
            timing.setdefault("sgbm", []).append(time.perf_counter() - t0)
            preds["sgbm"] = fill_invalid(raw)
            if label_free:  # the baseline on the same figures: SGBM's own answers, its right view from the mirrored pair
                lf = label_free_metrics(left, right, raw, sgbm_right_view(left, right, search), max_disp)
                free_sgbm.append({"sample_id": item["sample_id"], "share": float(np.isfinite(raw).mean()),
                                  **{k: lf[k] for k in (*LABEL_FREE_FIGURES, "unscorable") if k in lf}})
        if wls:
            t0 = time.perf_counter()
            preds["sgbm_wls"] = fill_invalid(sgbm_wls_disparity(_rgb(item["left"]), _rgb(item["right"]), search))
            timing.setdefault("sgbm_wls", []).append(time.perf_counter() - t0)
        searchable = np.zeros(gt.shape, bool)
        searchable[:, search.px:] = True
        for name, pred in preds.items():
            rows[name].add(pred, gt, sample_id=item["sample_id"])
            full_search[name].add(pred, gt, mask=searchable, sample_id=item["sample_id"])
            if name in confs:
                confidences[name].add(pred, gt, confs[name])
            if out_dir and i < error_maps:  # the confidence beside the error it should predict
                m = disparity_metrics(pred, gt)
                stereo_result_figure(out_dir / f"error_{name}_{i:04d}.png",
                                     f"{name} on {dataset_spec}, {item['sample_id']}: EPE {m['epe']:.2f} px, "
                                     f"bad-3 {100 * m['bad3']:.1f} %", _rgb(item["left"]), pred, gt, confs.get(name))
    methods = {k: {**acc.summary(), "full_search": full_search[k].summary()["pixel"],
                   "seconds_per_pair": float(np.median(timing.get(k, [np.nan])))} for k, acc in rows.items()}
    for name, acc in confidences.items():
        methods[name]["confidence"] = acc.summary()
        if out_dir and methods[name]["confidence"] is not None:
            sparsification_plot(methods[name]["confidence"], out_dir / f"sparsification_{name}.png",
                                f"{name} on {dataset_spec}")
    for name, rows_free in (("model", free), ("sgbm", free_sgbm)):
        if rows_free:
            keys = LABEL_FREE_FIGURES + (("share",) if name == "sgbm" else ())
            methods[name]["label_free"] = {k: nan_mean([r[k] for r in rows_free]) for k in keys}
            if unscorable := sum("unscorable" in r for r in rows_free):
                methods[name]["label_free"]["unscorable_pairs"] = unscorable
    result = {"dataset": dataset_spec, "images": n, "iters": iters, "methods": methods, "search_range": ranges,
              "sgbm_parameters": {**SGBM_PARAMETERS, **({"wls": WLS_PARAMETERS} if wls else {})} if (sgbm or wls) else None,
              "per_image": {k: acc.per_image for k, acc in rows.items()}}
    if free:
        result["per_image_label_free"] = free
    first = next(iter(rows.values()), None)
    unmeasured = [r["sample_id"] for r in (first.per_image if first else []) if not r["pixels"]]
    if unmeasured and len(unmeasured) < n:
        log.warning("%d of %d pairs of %s have no valid GT pixel and count for nothing (e.g. %s)",
                    len(unmeasured), n, dataset_spec, unmeasured[0])
    if out_dir:
        write_json_atomic(out_dir / "metrics.json", result)
        write_text_atomic(out_dir / "metrics.md", markdown_table(result))
    if first is not None and not first.total.pixels and not (free or free_sgbm):
        raise DataError(f"nothing could be measured on {dataset_spec}: none of its {n} pair(s) has a valid GT pixel "
                        "(finite, > 0); metrics are null" + (f" (written to {out_dir / 'metrics.json'})" if out_dir else ""))
    return result


def _rgb(image: torch.Tensor) -> np.ndarray:
    """A dataset item's 3xHxW float image in [0, 1] as RGB uint8 HxWx3."""
    return (image.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def _fmt(value: float, scale: float = 1.0, digits: int = 2) -> str:
    """A metric for a table: ``n/a`` where it could not be measured (NaN)."""
    return f"{scale * value:.{digits}f}" if np.isfinite(value) else "n/a"


def markdown_table(result: dict[str, Any]) -> str:
    ranges = result.get("search_range") or []
    spans = sorted({r["px"] for r in ranges})
    lines = [f"# {result['dataset']} ({result['images']} pairs)", "",
             "All GT pixels, and the columns x >= the search range (where a search over the whole range is possible); "
             "SGBM's search range: " + (", ".join(f"{r['px']} px ({r['from']})" for r in ranges[:3]) +
                                         (f", ... ({spans[0]}..{spans[-1]} px)" if len(ranges) > 3 else "") or "-") + ".",
             "",
             "| method | EPE px | D1 % | bad-1 % | bad-2 % | bad-3 % | x >= range: EPE px | bad-3 % | s/pair |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, m in result["methods"].items():
        p, f = m["pixel"], m.get("full_search") or {"epe": float("nan"), "bad3": float("nan")}
        lines.append(f"| {name} | {_fmt(p['epe'], digits=3)} | {_fmt(p['d1'], 100)} | {_fmt(p['bad1'], 100)} | "
                     f"{_fmt(p['bad2'], 100)} | {_fmt(p['bad3'], 100)} | {_fmt(f['epe'], digits=3)} | "
                     f"{_fmt(f['bad3'], 100)} | {_fmt(m['seconds_per_pair'], digits=3)} |")
    confident = {k: m["confidence"] for k, m in result["methods"].items() if m.get("confidence")}
    if confident:
        lines += ["", "Confidence (sparsification, mean of images): AUC of the error of the most confident pixels over "
                  "5-100 % density, next to the oracle (sorted by true error) and a random order; gap closed = "
                  "(random - confidence) / (random - oracle).", "",
                  "| method | AUC EPE conf / oracle / random | gap closed | AUC bad-3 % conf / oracle / random | gap closed | "
                  "bad-3 % at 50 / 80 / 95 / 100 % |", "|---|---|---|---|---|---|"]
        for name, c in confident.items():
            e, b = c["auc_epe"], c["auc_bad3"]
            lines.append(f"| {name} | {e['confidence']:.3f} / {e['oracle']:.3f} / {e['random']:.3f} | "
                         f"{_fmt(c['gap_closed_epe'])} | {100 * b['confidence']:.2f} / {100 * b['oracle']:.2f} / "
                         f"{100 * b['random']:.2f} | {_fmt(c['gap_closed_bad3'])} | {_fmt(c['bad3_at_50'], 100)} / "
                         f"{_fmt(c['bad3_at_80'], 100)} / {_fmt(c['bad3_at_95'], 100)} / {_fmt(c['bad3_all'], 100)} |")
    free = {k: m["label_free"] for k, m in result["methods"].items() if m.get("label_free")}
    if free:
        lines += ["", "Label-free (no GT used; mean of pairs): photometric error of the right view warped to the left, "
                  "left-right consistency, share of pixels at the disparity range limits.", "",
                  "| method | photometric | LR consistency % | at range limit % | pixels answered % |", "|---|---|---|---|---|"]
        for name, f in free.items():
            lines.append(f"| {name} | {_fmt(f['photometric'], digits=4)} | {_fmt(f['lr_consistency'], 100)} | "
                         f"{_fmt(f['at_range_limit'], 100)} | {_fmt(f.get('share', 1.0), 100, 1)} |")
    return "\n".join(lines) + "\n"
