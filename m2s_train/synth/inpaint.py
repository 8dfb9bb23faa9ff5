"""Edge-aware (EA) hole filling of the warped right view.

A disocclusion hole in the right view has the foreground on one side (the surface that moved
over it) and the background on the other; the true content behind it is background. A plain
inpainter fed the raw hole mask draws from both sides and smears a foreground halo into the
hole. The EA step, guided by the right-view disparity:

1. takes the background level of each hole from the lower disparity of its row neighbours and
   classifies the known pixels around it as foreground (disparity above that level by more
   than ``jump``) or background;
2. builds the inpainting mask = hole + the ``flying_width`` foreground pixels next to it (the
   mixed "flying" edge pixels) + ``bg_grow`` pixels grown into the background side (the blended
   rim there), the EA mask;
3. replaces the foreground band near the hole (``exclude``) by background mirrored from the
   hole's background side before the inpainter sees the image, so the fill continues the
   background; only pixels of the EA mask change in the result.

Fillers: OpenCV Telea / Navier-Stokes (:func:`classical_fill`, the offline default) and Stable
Diffusion inpainting through diffusers (:class:`StableDiffusionInpainter`, local weights),
both behind :func:`ea_fill`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from m2s_train.config import check_fields, num
from m2s_train.errors import ConfigError, ShapeError, SynthesisError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EAMaskConfig:
    """Pixels unless noted. ``jump``: disparity step that separates foreground from background."""

    jump: float = num(1.0, gt=0)
    flying_width: int = num(2, ge=0, le=64)
    bg_grow: int = num(1, ge=0, le=64)
    context_band: int = num(8, ge=0, le=256)

    def __post_init__(self) -> None:
        check_fields(self)


class EAMask(NamedTuple):
    """``mask``: pixels to fill (EA mask); ``exclude``: known foreground hidden from the filler."""

    mask: np.ndarray
    exclude: np.ndarray


def _row_known_neighbours(region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns of the nearest pixel outside ``region`` to the left (-1: none) and right (W: none)."""
    h, w = region.shape
    cols = np.broadcast_to(np.arange(w, dtype=np.int32), (h, w))
    left = np.maximum.accumulate(np.where(region, -1, cols), axis=1)
    right = np.minimum.accumulate(np.where(region, w, cols)[:, ::-1], axis=1)[:, ::-1]
    return left, right


def _side_disparities(region: np.ndarray, disparity: np.ndarray) -> tuple[np.ndarray, ...]:
    """Row neighbours of each pixel outside ``region`` and their disparities (inf where absent)."""
    h, w = region.shape
    left, right = _row_known_neighbours(region)
    rows = np.arange(h)[:, None]
    d = np.where(np.isfinite(disparity), disparity, np.inf).astype(np.float32)
    d_left = np.where(left >= 0, d[rows, np.clip(left, 0, w - 1)], np.inf)
    d_right = np.where(right < w, d[rows, np.clip(right, 0, w - 1)], np.inf)
    return left, right, d_left, d_right


def ea_inpaint_mask(hole: np.ndarray, right_disparity: np.ndarray, config: EAMaskConfig = EAMaskConfig()) -> EAMask:
    """The edge-aware inpainting mask of a warped right view.

    The background level of each hole pixel is the lower disparity of its two row neighbours
    outside the hole; a known pixel near a hole is foreground when its disparity exceeds the
    background level of its nearest hole pixel by more than ``config.jump``.

    Args:
        hole: HxW bool, right-view pixels without a source (from :func:`forward_warp`).
        right_disparity: HxW float32 right-view disparity, NaN in holes.

    Returns:
        :class:`EAMask` (both HxW bool, disjoint).
    """
    hole = np.asarray(hole, dtype=bool)
    if hole.ndim != 2 or right_disparity.shape != hole.shape:
        raise ShapeError(f"hole {hole.shape} and right_disparity {right_disparity.shape} must be equal HxW")
    if not hole.any():
        empty = np.zeros_like(hole)
        return EAMask(empty, empty)
    c = config
    _, _, d_left, d_right = _side_disparities(hole, right_disparity)
    hole_bg = np.minimum(d_left, d_right)  # background level, meaningful on hole pixels
    # Distance to, and identity of, the nearest hole pixel for every pixel.
    dist, nearest = cv2.distanceTransformWithLabels((~hole).astype(np.uint8), cv2.DIST_L2, 5,
                                                    labelType=cv2.DIST_LABEL_PIXEL)
    bg_of_label = np.full(int(nearest.max()) + 1, np.inf, dtype=np.float32)
    bg_of_label[nearest[hole]] = hole_bg[hole]
    bg_level = bg_of_label[nearest]
    with np.errstate(invalid="ignore"):
        foreground = ~hole & (right_disparity > bg_level + c.jump)
    background = ~hole & ~foreground
    flying = foreground & (dist <= c.flying_width)
    grown = background & (dist <= c.bg_grow)
    mask = hole | flying | grown
    exclude = foreground & (dist <= c.context_band) & ~mask
    return EAMask(mask, exclude)


def background_context(image: np.ndarray, region: np.ndarray, disparity: np.ndarray) -> np.ndarray:
    """``image`` with ``region`` replaced by background texture mirrored from the row's background side.

    For each row run of ``region``, the side whose neighbouring pixel has the lower disparity
    is the background; run pixels take the pixel mirrored across that boundary. Used as
    context so an inpainter continues the background, never the foreground.
    """
    h, w = region.shape
    left, right, d_left, d_right = _side_disparities(region, disparity)
    use_right = d_right <= d_left
    has_any = np.isfinite(np.minimum(d_left, d_right))
    cols = np.arange(w, dtype=np.int32)[None, :]
    src = np.where(use_right, 2 * right - 1 - cols, 2 * left + 1 - cols)
    src = np.where(use_right, np.clip(src, right, w - 1), np.clip(src, 0, np.maximum(left, 0)))
    rows = np.broadcast_to(np.arange(h)[:, None], (h, w))
    # a mirrored source inside another masked run falls back to the (known) boundary pixel
    src = np.clip(src, 0, w - 1)
    boundary = np.clip(np.where(use_right, right, left), 0, w - 1)
    src = np.where(region[rows, src], boundary, src)
    take = region & has_any
    out = image.copy()
    out[take] = image[rows[take], src[take]]
    return out


INPAINT_METHODS = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}


def classical_fill(image: np.ndarray, mask: np.ndarray, method: str = "telea", radius: int = 3) -> np.ndarray:
    """Fill ``mask`` with OpenCV inpainting (Telea or Navier-Stokes); pixels outside it are kept."""
    if method not in INPAINT_METHODS:
        raise ConfigError(f"inpaint method must be one of {', '.join(INPAINT_METHODS)}, got '{method}'")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or mask.shape != image.shape[:2]:
        raise ShapeError(f"expected RGB uint8 HxWx3 and an HxW mask, got {image.shape} {image.dtype} and {mask.shape}")
    if not mask.any():
        return image.copy()
    if mask.all():
        raise SynthesisError("nothing left to inpaint from: the whole image is masked")
    filled = cv2.inpaint(image, mask.astype(np.uint8), radius, INPAINT_METHODS[method])
    out = image.copy()
    out[mask] = filled[mask]
    return out


class StableDiffusionInpainter:
    """Stable Diffusion inpainting (diffusers) on tiles around the holes, prompt-free.

    Weights load from a local directory or the Hugging Face cache only. The image is processed
    in ``tile``-sized crops (multiples of 8) around connected hole regions, so any resolution
    works; only masked pixels are pasted back.
    """

    def __init__(self, model: str, device: str = "auto", fp16: bool | None = None, steps: int = 20,
                 tile: int = 512, guidance_scale: float = 1.0, seed: int = 0) -> None:
        import torch
        from diffusers import AutoPipelineForInpainting

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        fp16 = device.startswith("cuda") if fp16 is None else fp16
        if tile < 64 or tile % 8:
            raise ConfigError(f"inpaint tile must be a multiple of 8 and >= 64, got {tile}")
        try:
            self.pipe = AutoPipelineForInpainting.from_pretrained(
                model, local_files_only=True, torch_dtype=torch.float16 if fp16 else torch.float32,
                safety_checker=None, requires_safety_checker=False,
            )
        except (OSError, ValueError) as exc:
            raise SynthesisError(
                f"cannot load Stable Diffusion inpainting weights '{model}' locally ({str(exc).splitlines()[0]}). "
                "Download e.g. 'stable-diffusion-v1-5/stable-diffusion-inpainting' on a machine with internet "
                "and pass its directory, or use --inpaint telea"
            ) from None
        self.pipe.to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.device, self.steps, self.tile, self.guidance, self.seed = device, steps, tile, guidance_scale, seed
        self.model_id = str(model)

    def _tiles(self, mask: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Crop boxes (y0, x0, th, tw) covering every masked pixel."""
        h, w = mask.shape
        th, tw = min(self.tile, h - h % 8), min(self.tile, w - w % 8)
        if th < 8 or tw < 8:
            raise SynthesisError(f"image {w}x{h} is too small for diffusion inpainting")
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        boxes = []
        covered = np.zeros_like(mask)
        for x, y, bw, bh, _ in stats[1:n]:
            for yy in range(y, y + bh, th):
                for xx in range(x, x + bw, tw):
                    region = mask[yy : min(yy + th, y + bh), xx : min(xx + tw, x + bw)]
                    if not region.any() or covered[yy : yy + region.shape[0], xx : xx + region.shape[1]][region].all():
                        continue
                    # centre the crop on the piece, clamped to the image
                    cy, cx = yy + region.shape[0] // 2, xx + region.shape[1] // 2
                    y0 = int(np.clip(cy - th // 2, 0, h - th))
                    x0 = int(np.clip(cx - tw // 2, 0, w - tw))
                    boxes.append((y0, x0, th, tw))
                    covered[y0 : y0 + th, x0 : x0 + tw] = True
        return boxes

    def __call__(self, image: np.ndarray, mask: np.ndarray, context: np.ndarray | None = None) -> np.ndarray:
        """Fill ``mask`` of ``image``; ``context`` (default ``image``) is what the model sees around it."""
        import torch
        from PIL import Image

        context = image if context is None else context
        out = image.copy()
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        for y0, x0, th, tw in self._tiles(mask):
            crop_mask = mask[y0 : y0 + th, x0 : x0 + tw]
            result = self.pipe(
                prompt="", image=Image.fromarray(context[y0 : y0 + th, x0 : x0 + tw]),
                mask_image=Image.fromarray(crop_mask.astype(np.uint8) * 255), height=th, width=tw,
                num_inference_steps=self.steps, guidance_scale=self.guidance, generator=generator,
                output_type="np",
            ).images[0]
            result = np.clip(np.rint(np.asarray(result) * 255.0), 0, 255).astype(np.uint8)
            if result.shape[:2] != (th, tw):
                result = cv2.resize(result, (tw, th), interpolation=cv2.INTER_CUBIC)
            region = out[y0 : y0 + th, x0 : x0 + tw]
            region[crop_mask] = result[crop_mask]
        return out


def ea_fill(image: np.ndarray, ea: EAMask, right_disparity: np.ndarray, method: str = "telea", radius: int = 3,
            diffusion: StableDiffusionInpainter | None = None) -> np.ndarray:
    """Fill the EA mask from background context, classically or with diffusion when given.

    The foreground band near the holes (``ea.exclude``) is replaced by mirrored background
    before the filler sees the image, so Telea/NS (or the diffusion model) continue the
    background; only pixels of ``ea.mask`` change in the result.
    """
    context = background_context(image, ea.exclude | ea.mask, right_disparity)
    if diffusion is not None:
        return diffusion(image, ea.mask, context=context)
    filled = classical_fill(context, ea.mask, method, radius)
    out = image.copy()
    out[ea.mask] = filled[ea.mask]
    return out
