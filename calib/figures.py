"""Figures that explain themselves: every picture the tools write, as titled panels with colour bars and units.

One place for the look of the project's PNGs (evaluation error maps, label-free photometric maps, synthesis
previews, replay examples): a figure title saying what and where, one titled panel per map, a colour bar with
its units on every map (disparity px, error px, confidence, photometric residual), invalid pixels shown in a
colour of their own and named, and colour scales that are fixed where pictures are compared (a shared
disparity range across a sequence; errors on 0..``max_error`` px). matplotlib is imported when a figure is
drawn (it is in the ``training`` and ``ros`` extras; the robot side does not need it to import ``calib``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

INVALID_COLOUR = "#202020"  # no measurement / no ground truth


@dataclass
class Panel:
    """One map of a figure. ``kind``: image (RGB), disparity, error, confidence, residual or mask (RGB with a
    ``legend``); ``vmin``/``vmax`` fix the colour scale, ``units`` labels the colour bar."""

    data: np.ndarray
    title: str
    kind: str = "image"
    vmin: float | None = None
    vmax: float | None = None
    units: str = ""
    legend: tuple[tuple[str, tuple[int, int, int]], ...] = ()


_STYLE = {  # kind -> (colour map, default units)
    "disparity": ("turbo", "disparity (px)"),
    "error": ("inferno", "|error| (px)"),
    "confidence": ("gray", "confidence (0 = unsure, 1 = sure)"),
    "residual": ("magma", "|left - warped right| (0..1)"),
    "depth": ("viridis_r", "depth (m)"),
}


def image_panel(rgb: np.ndarray, title: str) -> Panel:
    return Panel(np.asarray(rgb), title, "image")


def disparity_panel(disparity: np.ndarray, title: str, vmax: float | None = None) -> Panel:
    """Disparity in px (NaN or <= 0: no measurement), colour scale 0..``vmax`` (default: its 99th percentile)."""
    d = np.asarray(disparity, np.float32)
    with np.errstate(invalid="ignore"):
        shown = np.where(np.isfinite(d) & (d > 0), d, np.nan)
    if vmax is None:
        vmax = float(np.nanpercentile(shown, 99)) if np.isfinite(shown).any() else 1.0
    return Panel(shown, title, "disparity", 0.0, max(vmax, 1e-3))


def error_panel(pred: np.ndarray, gt: np.ndarray, max_error: float = 3.0, title: str = "") -> Panel:
    """|pred - gt| in px where the GT is known, on 0..``max_error`` px (beyond: the top colour)."""
    p, g = np.asarray(pred, np.float32), np.asarray(gt, np.float32)
    with np.errstate(invalid="ignore"):
        known = np.isfinite(g) & (g > 0)
        err = np.where(known, np.abs(np.nan_to_num(p, nan=np.inf) - g), np.nan)
    return Panel(err, title or f"|error|, {max_error:g} px and more at the top", "error", 0.0, max_error)


def confidence_panel(confidence: np.ndarray, title: str = "confidence") -> Panel:
    return Panel(np.asarray(confidence, np.float32), title, "confidence", 0.0, 1.0)


def panel_figure(path: str | Path, title: str, panels: list[Panel], columns: int | None = None,
                 panel_width: float = 4.0) -> Path:
    """Write ``panels`` as one PNG at ``path``: ``title`` over the figure, each panel titled, every map with a
    colour bar labelled with its units; invalid pixels (NaN) in :data:`INVALID_COLOUR`, said in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if not panels:
        raise ValueError("a figure needs at least one panel")
    columns = columns or len(panels)
    rows = (len(panels) + columns - 1) // columns
    h, w = panels[0].data.shape[:2]
    fig, axes = plt.subplots(rows, columns, figsize=(panel_width * columns, panel_width * h / max(w, 1) * rows + 1.0),
                             squeeze=False)
    any_invalid = False
    for ax, panel in zip(axes.flat, panels):
        ax.set_axis_off()
        ax.set_title(panel.title, fontsize=10)
        if panel.kind in ("image", "mask"):
            ax.imshow(np.asarray(panel.data, np.uint8))
            if panel.legend:
                ax.legend(handles=[Patch(color=np.asarray(c) / 255.0, label=name) for name, c in panel.legend],
                          loc="lower right", fontsize=7, framealpha=0.8)
            continue
        cmap_name, units = _STYLE[panel.kind]
        cmap = matplotlib.colormaps[cmap_name].with_extremes(bad=INVALID_COLOUR)
        data = np.ma.masked_invalid(np.asarray(panel.data, np.float32))
        any_invalid |= bool(np.ma.is_masked(data))
        shown = ax.imshow(data, cmap=cmap, vmin=panel.vmin, vmax=panel.vmax, interpolation="nearest")
        bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
        bar.set_label(panel.units or units, fontsize=8)
        bar.ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_axis_off()
    fig.suptitle(title + ("   (dark grey: no value / no ground truth)" if any_invalid else ""), fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(str(path), dpi=100)
    plt.close(fig)
    return path


def stereo_result_figure(path: str | Path, title: str, left: np.ndarray, disparity: np.ndarray,
                         gt: np.ndarray | None = None, confidence: np.ndarray | None = None,
                         vmax: float | None = None, max_error: float = 3.0) -> Path:
    """The standard picture of one result: left image, disparity, the ground truth and the error where there is
    one, the confidence where there is one; GT and prediction on one disparity scale (``vmax``, shared across a
    sequence by the caller)."""
    if vmax is None:
        ref = gt if gt is not None else disparity
        with np.errstate(invalid="ignore"):
            finite = np.asarray(ref, np.float32)[np.isfinite(ref) & (np.asarray(ref) > 0)]
        vmax = float(np.percentile(finite, 99)) if finite.size else 1.0
    panels = [image_panel(left, "left image"), disparity_panel(disparity, "disparity (predicted)", vmax)]
    if gt is not None:
        panels += [disparity_panel(gt, "disparity (ground truth)", vmax), error_panel(disparity, gt, max_error)]
    if confidence is not None:
        panels.append(confidence_panel(confidence))
    return panel_figure(path, title, panels, columns=min(len(panels), 3))


__all__ = ["INVALID_COLOUR", "Panel", "confidence_panel", "disparity_panel", "error_panel", "image_panel",
           "panel_figure", "stereo_result_figure"]
