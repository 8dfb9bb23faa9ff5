"""IGEV-Stereo (Xu et al., CVPR 2023), written for training here and deployment on TensorRT.

Pipeline: MobileNetV2 feature pyramid (1/4..1/32) -> group-wise correlation volume at 1/4 over
``max_disp / 4`` candidates -> 3-D hourglass regularisation with feature attention = geometry
encoding volume (GEV) -> soft-argmin initial disparity -> ConvGRU iterations (1/4, 1/8, 1/16)
that look up the GEV pyramid and an all-pairs correlation pyramid around the current
disparity -> learned convex (3x3 context) upsampling to full resolution.

Deployment-minded differences from the reference code, same mathematics:
- the group-wise volume comes from one batched matmul per row (all pairs) and a gather of the
  disparity band, no per-disparity Python loop of slice assignments; the same all-pairs product
  gives the all-pairs correlation (its sum over groups), so it is computed once;
- volume look-ups are linear interpolation by gather (exactly ``grid_sample`` with
  ``align_corners=True`` and zero padding), which TensorRT runs natively;
- inputs are NCHW float in [0, 1], normalised inside with the config's mean/std, and padded to a
  multiple of 32 inside (replicate), the output cropped back;
- no autocast or CLI arguments inside ``forward``; one typed output in every mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from m2s_train.config import check_fields, num
from m2s_train.errors import ShapeError
from m2s_train.models.igev_blocks import ContextNet, ConvNormAct, FeatureContext, FeatureNet, UpConcat, UpdateBlock
from m2s_train.models.registry import register_model


@dataclass(frozen=True)
class IGEVConfig:
    """Architecture options. Defaults are the paper's (12.6 M parameters in the reference)."""

    max_disp: int = num(192, ge=16, le=1024)  # disparity range at full resolution, px (volume has max_disp / 4 candidates)
    train_iters: int = num(22, ge=1)
    valid_iters: int = num(32, ge=1)
    groups: int = num(8, ge=1)  # group-wise correlation groups = channels of the 3-D cost volume
    corr_levels: int = num(2, ge=1, le=4)  # look-up pyramid levels
    corr_radius: int = num(4, ge=1, le=16)  # look-up radius, candidates
    gru_levels: int = num(3, ge=1, le=3)  # ConvGRUs at 1/4, 1/8, 1/16
    hidden_dim: int = num(128, ge=1)  # GRU hidden and context channels
    backbone_width: float = num(1.0, gt=0, le=4)  # MobileNetV2 width multiplier
    context_width: int = num(128, ge=1)  # context encoder width
    stem_dims: tuple[int, int] = num((32, 48), ge=1)  # image stems at 1/2 and 1/4 (detail for matching and upsampling)
    spx_dim: int = num(24, ge=1)  # features of the initial-disparity upsampler
    motion_dim: int = num(128, ge=1)
    # channels of each motion-encoder branch (look-ups, disparity); None: motion_dim / 2 (IGEV-Stereo's 64)
    motion_branch_dim: int | None = num(None, ge=1)
    head_dim: int = num(256, ge=1)  # hidden channels of the disparity-update head
    cost_base: int = num(8, ge=1)  # channels of the first hourglass level (x2, x4, x6 deeper)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # input normalisation from [0, 1] images
    std: tuple[float, float, float] = num((0.5, 0.5, 0.5), gt=0)
    # learned confidence head (False: the confidence is derived from the GEV distribution alone)
    confidence_head: bool = True
    confidence_width: int = num(16, ge=1)  # channels of the confidence head
    # where the hidden state and context come from: "image" (a residual encoder of the left image, one
    # map per GRU level: IGEV-Stereo) or "features" (two convs on the 1/4 matching features: RT-IGEV++)
    context_source: str = "image"
    cost_attention: bool = True  # 3-D stem + feature attention on the volume before the hourglass (RT-IGEV++: none)
    corr_lookup: bool = True  # look up the all-pairs correlation pyramid beside the GEV (RT-IGEV++: GEV only)
    # where the pad to a multiple of 32 goes: "centre" (the authors' InputPadder: replicate, centred) or
    # "end" (bottom and right: checkpoints saved before this option)
    pad_mode: str = "centre"
    # the 3x3 neighbours of the convex upsampling beyond the border: "zeros" (the authors' F.unfold) or
    # "replicate" (checkpoints saved before this option)
    upsample_border: str = "zeros"

    # what a field absent from a saved config means: checkpoints from before the field existed
    ABSENT_MEANS: ClassVar[dict[str, Any]] = {"confidence_head": False, "pad_mode": "end",
                                              "upsample_border": "replicate"}
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"context_source": ("image", "features"),
                                                     "pad_mode": ("centre", "end"),
                                                     "upsample_border": ("zeros", "replicate")}

    def __post_init__(self) -> None:
        check_fields(self)
        if self.max_disp % 16 or self.max_disp < 16:
            raise ValueError(f"max_disp must be a positive multiple of 16, got {self.max_disp}")
        if not 1 <= self.gru_levels <= 3:
            raise ValueError(f"gru_levels must be 1, 2 or 3, got {self.gru_levels}")
        if min(self.train_iters, self.valid_iters) < 1:
            raise ValueError("train_iters and valid_iters must be >= 1")
        if (self.max_disp // 4) % 8:
            raise ValueError(f"max_disp / 4 must be divisible by 8 for the 3-D hourglass, got {self.max_disp // 4}")
        if not 1 <= self.corr_levels <= 4:
            raise ValueError(f"corr_levels must be in 1..4 (each level halves the volume), got {self.corr_levels}")
        for name, allowed in self.CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.context_source == "features" and self.gru_levels != 1:
            raise ValueError("context_source 'features' gives one context map (1/4): gru_levels must be 1, "
                             f"got {self.gru_levels}")


class StereoOutput(NamedTuple):
    """Every mode returns this.

    disparity: B,1,H,W final full-resolution disparity (px).
    iterations: full-resolution predictions of every GRU iteration in training; ``[disparity]`` otherwise.
    init_disparity: B,1,H,W soft-argmin disparity from the geometry encoding volume, upsampled.
    init_prob: B,D,H/4,W/4 softmax over the D = max_disp/4 candidates (the distribution S2DKD distils).
    confidence: B,1,H,W in [0, 1], how likely ``disparity`` is within 3 px of the truth
        (:class:`ConfidenceHead`; with ``confidence_head=False`` the GEV mass around ``disparity``).
    confidence_logit: B,1,H,W, the logit of ``confidence`` (what its loss is computed on).
    """

    disparity: torch.Tensor
    iterations: list[torch.Tensor]
    init_disparity: torch.Tensor
    init_prob: torch.Tensor
    confidence: torch.Tensor
    confidence_logit: torch.Tensor


class FeatureAttention(nn.Module):
    """Gate a cost volume's channels per pixel with sigmoid(weights from image features)."""

    def __init__(self, cost_channels: int, feat_channels: int) -> None:
        super().__init__()
        self.att = nn.Sequential(ConvNormAct(feat_channels, feat_channels // 2, 1), nn.Conv2d(feat_channels // 2, cost_channels, 1))

    def forward(self, cost: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.att(feat)).unsqueeze(2) * cost  # B,C,1,H,W broadcast over D


class Hourglass(nn.Module):
    """3-D encoder-decoder over (D, H, W) guided by 2-D features at 1/8, 1/16, 1/32."""

    def __init__(self, c: int, feat_channels: tuple[int, int, int], out_channels: int) -> None:
        super().__init__()
        f8, f16, f32 = feat_channels

        def down(cin: int, cout: int) -> nn.Module:
            return nn.Sequential(ConvNormAct(cin, cout, 3, 2, 1, dims=3), ConvNormAct(cout, cout, 3, 1, 1, dims=3))

        def agg(cin: int, cout: int) -> nn.Module:
            return nn.Sequential(ConvNormAct(cin, cout, 1, dims=3), ConvNormAct(cout, cout, 3, 1, 1, dims=3),
                                 ConvNormAct(cout, cout, 3, 1, 1, dims=3))

        self.down1, self.down2, self.down3 = down(c, 2 * c), down(2 * c, 4 * c), down(4 * c, 6 * c)
        self.up3 = ConvNormAct(6 * c, 4 * c, 4, 2, 1, dims=3, transposed=True)
        self.up2 = ConvNormAct(4 * c, 2 * c, 4, 2, 1, dims=3, transposed=True)
        self.up1 = ConvNormAct(2 * c, out_channels, 4, 2, 1, dims=3, norm=None, act=False, transposed=True)
        self.agg2, self.agg1 = agg(8 * c, 4 * c), agg(4 * c, 2 * c)
        self.att1, self.att2, self.att3 = FeatureAttention(2 * c, f8), FeatureAttention(4 * c, f16), FeatureAttention(6 * c, f32)
        self.att2_up, self.att1_up = FeatureAttention(4 * c, f16), FeatureAttention(2 * c, f8)

    def forward(self, cost: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        c1 = self.att1(self.down1(cost), feats[1])
        c2 = self.att2(self.down2(c1), feats[2])
        c3 = self.att3(self.down3(c2), feats[3])
        c2 = self.att2_up(self.agg2(torch.cat([self.up3(c3), c2], 1)), feats[2])
        c1 = self.att1_up(self.agg1(torch.cat([self.up2(c2), c1], 1)), feats[1])
        return self.up1(c1)


def all_pairs_group_correlation(left: torch.Tensor, right: torch.Tensor, groups: int) -> torch.Tensor:
    """Per-row all-pairs correlation, channel mean per group: B,C,H,W x2 -> B,G,H,W(left),W(right)."""
    b, c, h, w = left.shape
    if c % groups:
        raise ShapeError(f"feature channels {c} are not divisible by {groups} groups")
    lg = left.reshape(b, groups, c // groups, h, w).permute(0, 1, 3, 4, 2)  # B,G,H,W,c
    rg = right.reshape(b, groups, c // groups, h, w).permute(0, 1, 3, 2, 4)  # B,G,H,c,W
    return torch.matmul(lg, rg) / (c // groups)


def disparity_band(corr: torch.Tensor, candidates: int) -> torch.Tensor:
    """B,G,H,W,W all-pairs -> B,G,D,H,W with volume[d, x] = corr[x, x - d], 0 where x - d < 0.

    One ``Gather`` of the flattened (W*W) pair axis with a small W x D index: an index expanded to
    the volume's shape would be constant-folded by the ONNX export into an int64 initializer the
    size of the volume (59 MB for igev-rt at 640x480, three times its weights).
    """
    b, g, h, w, _ = corr.shape
    x = torch.arange(w, device=corr.device).view(w, 1)
    d = torch.arange(candidates, device=corr.device).view(1, candidates)
    source = x - d  # W,D
    valid = (source >= 0).to(corr.dtype)  # W,D
    flat = x * w + source.clamp(min=0)  # W,D index into the flattened (x_left, x_right) pairs
    band = corr.reshape(b, g, h, w * w)[..., flat] * valid  # B,G,H,W,D
    return band.permute(0, 1, 4, 2, 3)


def pad_for_lookup(volume: torch.Tensor) -> torch.Tensor:
    """``volume`` with one zero on each end of its last axis, as :func:`linear_lookup` wants it
    (pad a volume once when it is looked up many times, e.g. in every GRU iteration)."""
    return F.pad(volume, (1, 1))


def lookup_index(positions: torch.Tensor, last: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather index and interpolation weight of fractional ``positions`` (B,H,W,K) in a padded axis
    whose last index is ``last``: index B,H,W,2K (left then right neighbours), frac B,H,W,1,K.

    NaN-safe: a NaN or infinite position (a network that diverged) reads the pads through an
    in-range index and gets a NaN weight, so its sample is NaN, never an out-of-range gather (a
    crash on CPU, a device-side assert on CUDA, an out-of-bounds read in TensorRT). Precision:
    ``frac`` needs fp32 (in fp16 a position near 150 has a spacing of 1/8), so the export keeps this
    function's nodes in fp32 (:class:`LookupCoordinates`).
    """
    p0 = torch.floor(torch.where(positions == positions, positions, -2.0))  # NaN -> a position left of the pads
    frac = (positions - p0).unsqueeze(3)  # B,H,W,1,K; NaN for NaN/inf positions, so the sample is NaN
    index = torch.cat([p0 + 1, p0 + 2], -1).clamp(0, last).long()  # +1: the left pad
    return index, frac


def gather_blend(volume: torch.Tensor, index: torch.Tensor, frac: torch.Tensor) -> torch.Tensor:
    """Linear interpolation from :func:`lookup_index`'s result: volume B,H,W,C,L -> B,H,W,C,K."""
    k = index.shape[-1] // 2
    both = torch.gather(volume, 4, index.unsqueeze(3).expand(-1, -1, -1, volume.shape[3], -1))
    return both[..., :k] * (1 - frac) + both[..., k:] * frac


def linear_lookup(volume: torch.Tensor, positions: torch.Tensor, *, padded: bool = False) -> torch.Tensor:
    """Sample ``volume[..., L]`` at fractional ``positions[..., K]`` (linear, zero outside [0, L-1]).

    Shapes: volume B,H,W,C,L; positions B,H,W,K -> B,H,W,C,K. Equals ``grid_sample`` with
    ``align_corners=True`` and zero padding along one axis, built from floor/gather/mul only.
    ``padded``: ``volume`` already comes from :func:`pad_for_lookup` (its L includes the pads).
    Out-of-range samples read the zero pads (no mask), and both neighbours of every position are
    read by one gather. NaN/inf positions give NaN samples (see :func:`lookup_index`).
    """
    if not padded:
        volume = pad_for_lookup(volume)
    index, frac = lookup_index(positions, volume.shape[-1] - 1)
    return gather_blend(volume, index, frac)


def upsample_weights(logits: torch.Tensor) -> torch.Tensor:
    """B,9,H,W convex-combination weights from the upsampling logits (see :func:`convex_upsample`).

    In ONNX export the softmax is written out and left unnormalised (:func:`convex_combine` divides
    by the sum): onnxruntime's Softmax over a 9-wide non-last axis costs ~6x the whole written-out
    form at 640x480, while PyTorch's is faster than the written-out form.
    """
    if torch.onnx.is_in_onnx_export():
        return torch.exp(logits - logits.amax(1, keepdim=True))
    return F.softmax(logits, 1)


def convex_combine(disp_low: torch.Tensor, weights: torch.Tensor, factor: int = 4,
                   border: str = "replicate") -> torch.Tensor:
    """Full-resolution disparity as a per-pixel convex combination of the 3x3 low-res neighbours.

    disp_low B,1,h,w (in full-resolution px), weights B,9,h*f,w*f from :func:`upsample_weights`
    -> B,1,H,W. ``border``: the neighbours beyond the image edge, "replicate" or "zeros" (what the
    authors' ``F.unfold`` reads there). Kept in fp32 by the export (:class:`ConvexCombine`): in fp16 a
    disparity above 128 px has a spacing of 1/8 px.
    """
    b, _, h, w = disp_low.shape
    padded = F.pad(disp_low, (1, 1, 1, 1), mode="replicate" if border == "replicate" else "constant")
    neighbours = torch.cat([padded[:, :, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], 1)
    neighbours = F.interpolate(neighbours, scale_factor=factor, mode="nearest")  # B,9,H,W
    if torch.onnx.is_in_onnx_export():
        return (neighbours * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True)
    return (neighbours * weights).sum(1, keepdim=True)


def convex_upsample(disp_low: torch.Tensor, logits: torch.Tensor, factor: int = 4,
                    border: str = "replicate") -> torch.Tensor:
    """:func:`convex_combine` of ``disp_low`` with the softmax of ``logits`` (B,9,h*f,w*f) over the 9."""
    return convex_combine(disp_low, upsample_weights(logits), factor, border)


# -- computations the FP16 export keeps in fp32 ---------------------------------------------------------
# Each is a module so that every ONNX node it produces is named /model/<attribute>/...; the export
# finds them by that name (m2s_export.fp16.FP32_REGIONS) and pins them in both TensorRT paths.

class LookupCoordinates(nn.Module):
    """Look-up positions around ``disp`` and their gather indices / weights, per pyramid level."""

    def __init__(self, radius: int) -> None:
        super().__init__()
        self.radius = radius

    def forward(self, disp: torch.Tensor, coords: torch.Tensor,
                lasts: list[tuple[int, int | None]]) -> list[tuple[torch.Tensor, ...]]:
        """Per level (last index of the padded GEV, of the padded correlation or None when it is not
        looked up): GEV index and weight, then the correlation's (when looked up)."""
        r = self.radius
        offsets = torch.arange(-r, r + 1, device=disp.device, dtype=disp.dtype)  # K
        d = disp.squeeze(1).unsqueeze(-1)  # B,h,w,1
        out = []
        for level, (last_geo, last_corr) in enumerate(lasts):
            scale = 2.0**level
            geo = lookup_index(d / scale + offsets, last_geo)
            corr = () if last_corr is None else lookup_index((coords - d) / scale + offsets, last_corr)
            out.append((*geo, *corr))
        return out


class CandidateSoftmax(nn.Module):
    """The distribution over the D disparity candidates (softmax of the classifier's logits, B,D,h,w).
    In fp32: the soft-argmin sums 48 products of it, and probabilities made in fp16 (spacing 1/2048 near
    0.5, subnormal below 6e-5) moved an igev-rt soft-argmin by 0.02 px on average."""

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return F.softmax(logits, dim=1)


class SoftArgmin(nn.Module):
    """Expected candidate of a distribution over candidates: B,D,h,w -> B,1,h,w (sum of 48 products)."""

    def forward(self, prob: torch.Tensor) -> torch.Tensor:
        candidates = torch.arange(prob.shape[1], device=prob.device, dtype=prob.dtype).view(1, -1, 1, 1)
        return (prob * candidates).sum(1, keepdim=True)


class DisparityUpdate(nn.Module):
    """The recurrent ``disp + delta``: small updates to a value near 48 vanish in fp16 (spacing 1/32)."""

    def forward(self, disp: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return disp + delta


class ConvexCombine(nn.Module):
    """Full-resolution disparity from the 1/4-resolution one (B,1,h,w, 1/4-res px) and the upsampling
    weights: x4 in value, then :func:`convex_combine` (its ONNX nodes are pinned to fp32)."""

    def __init__(self, border: str = "replicate") -> None:
        super().__init__()
        self.border = border

    def forward(self, disp_quarter: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return convex_combine(disp_quarter * 4.0, weights, border=self.border)


class ConfidenceCues(nn.Module):
    """Per-pixel cues of how trustworthy the final disparity is, from what the network already has
    (B,C,h,w at 1/4 resolution; parameter-free, kept in fp32 by the export):

    0. the GEV probability mass within +-1 candidate (4 px) of the final disparity: the *derived*
       confidence (a triangular window, so the mass moves smoothly with the disparity);
    1. the mass within +-2 candidates;
    2. the peak probability of the GEV distribution;
    3. its entropy over log(D) (0: one candidate, 1: uniform);
    4. how far the refinement moved from the GEV estimate, |d - d_init| / (1 + |d - d_init|);
    5. the size of the last update, |delta| / (1 + |delta|) (a pixel still moving has not converged).
    """

    count = 6

    def forward(self, prob: torch.Tensor, disp: torch.Tensor, init_disp: torch.Tensor,
                delta: torch.Tensor) -> torch.Tensor:
        candidates = torch.arange(prob.shape[1], device=prob.device, dtype=prob.dtype).view(1, -1, 1, 1)
        distance = (candidates - disp).abs()  # B,D,h,w in candidates
        mass1 = (prob * (2.0 - distance).clamp(0, 1)).sum(1, keepdim=True)
        mass2 = (prob * (3.0 - distance).clamp(0, 1)).sum(1, keepdim=True)
        peak = prob.amax(1, keepdim=True)
        entropy = -(prob * torch.log(prob.clamp(min=1e-6))).sum(1, keepdim=True) / math.log(prob.shape[1])
        moved = (disp - init_disp).abs()
        step = delta.abs()
        return torch.cat([mass1, mass2, peak, entropy, moved / (1 + moved), step / (1 + step)], 1)


def derived_confidence_logit(cues: torch.Tensor) -> torch.Tensor:
    """The logit of the GEV mass within +-1 candidate (cue 0), for models without a learned head."""
    mass = cues[:, :1].clamp(1e-4, 1 - 1e-4)
    return torch.log(mass) - torch.log1p(-mass)


class PhotometricResidual(nn.Module):
    """How well the right image, sampled at ``x - d``, matches the left one at full resolution:
    B,2,H,W = the per-pixel mean absolute difference over the channels of the normalised images and
    its 3x3 mean, 1.0 where ``x - d`` falls outside the right image or ``d`` is not finite.
    Parameter-free and kept in fp32 by the export (``x - d`` runs up to the image width, where fp16
    has a spacing of 0.5 px)."""

    def forward(self, left: torch.Tensor, right: torch.Tensor, disparity: torch.Tensor) -> torch.Tensor:
        b, c, h, w = right.shape
        x = torch.arange(w, device=right.device, dtype=right.dtype).view(1, 1, 1, w)
        pos = x - disparity  # B,1,H,W
        p0 = torch.floor(torch.where(pos == pos, pos, -2.0))  # NaN-safe, as lookup_index (scalars: no folded constants)
        frac = pos - p0
        i0 = p0.clamp(0, w - 1).long().expand(b, c, h, w)
        i1 = (p0 + 1).clamp(0, w - 1).long().expand(b, c, h, w)
        warped = torch.gather(right, 3, i0) * (1 - frac) + torch.gather(right, 3, i1) * frac
        inside = (pos >= 0) & (pos <= w - 1)
        residual = torch.where(inside, (left - warped).abs().mean(1, keepdim=True), 1.0)
        return torch.cat([residual, F.avg_pool2d(residual, 3, 1, 1, count_include_pad=False)], 1)


class ConfidenceHead(nn.Module):
    """Learned confidence: P(|disparity - truth| <= 3 px) per full-resolution pixel.

    Inputs, all detached, so training the head leaves every gradient of the disparity path unchanged:
    at 1/4 resolution the GEV cues (:class:`ConfidenceCues`), the volume look-ups at the final
    disparity (the local matching costs around it, the classic stereo-confidence evidence) and the
    GRU hidden state; at full resolution the photometric residual of the right view warped by the
    final disparity (:class:`PhotometricResidual`) and the disparity's local slope (errors
    concentrate at depth edges and occlusions, which a 1/4-resolution map blurs over 4 px). Trained
    with a binary cross-entropy against "within 3 px" on the pixels with GT
    (:func:`m2s_train.losses.confidence_loss`).
    """

    def __init__(self, hidden: int, lookup_channels: int, width: int) -> None:
        super().__init__()
        self.quarter = nn.Sequential(nn.Conv2d(hidden + ConfidenceCues.count + lookup_channels, width, 3, 1, 1),
                                     nn.ReLU(), nn.Conv2d(width, width, 3, 1, 1), nn.ReLU(), nn.Conv2d(width, 8, 1))
        self.full = nn.Sequential(nn.Conv2d(8 + 4, 8, 3, 1, 1), nn.ReLU(), nn.Conv2d(8, 1, 1))
        # forward differences along x and y as one fixed convolution (no Slice nodes in the export)
        diff = torch.zeros(2, 1, 2, 2)
        diff[0, 0, 0, 0], diff[0, 0, 0, 1], diff[1, 0, 0, 0], diff[1, 0, 1, 0] = -1.0, 1.0, -1.0, 1.0
        self.register_buffer("diff", diff, persistent=False)

    def forward(self, cues: torch.Tensor, lookup: torch.Tensor, hidden: torch.Tensor, photo: torch.Tensor,
                disparity: torch.Tensor) -> torch.Tensor:
        """cues B,6,h,w, lookup B,L,h,w, hidden B,C,h,w; photo B,2,H,W, disparity B,1,H,W (px) -> logits B,1,H,W."""
        q = self.quarter(torch.cat([cues, lookup, hidden], 1).detach())
        q = F.interpolate(q, size=disparity.shape[-2:], mode="bilinear", align_corners=False)
        slope = F.conv2d(F.pad(disparity.detach(), (0, 1, 0, 1), mode="replicate"), self.diff).abs()  # B,2,H,W
        return self.full(torch.cat([q, slope / (1 + slope), photo.detach()], 1))


class IGEVStereo(nn.Module):
    def __init__(self, config: IGEVConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.candidates = cfg.max_disp // 4
        self.feature = FeatureNet(cfg.backbone_width)
        f4, f8, f16, f32 = self.feature.channels
        s2, s4 = cfg.stem_dims
        self.stem2 = nn.Sequential(ConvNormAct(3, s2, 3, 2, 1, norm="instance"), nn.Conv2d(s2, s2, 3, 1, 1, bias=False),
                                   nn.InstanceNorm2d(s2), nn.ReLU())
        self.stem4 = nn.Sequential(ConvNormAct(s2, s4, 3, 2, 1, norm="instance"), nn.Conv2d(s4, s4, 3, 1, 1, bias=False),
                                   nn.InstanceNorm2d(s4), nn.ReLU())
        match = f4 + s4
        if match % cfg.groups:
            raise ShapeError(f"matching features ({match} channels) must be divisible by groups={cfg.groups}")
        self.match_conv = ConvNormAct(match, match, 3, 1, 1, norm="instance")
        self.match_desc = nn.Conv2d(match, match, 1)
        if cfg.cost_attention:
            self.cost_stem = ConvNormAct(cfg.groups, cfg.groups, 3, 1, 1, dims=3)
            self.cost_att = FeatureAttention(cfg.groups, match)
        self.hourglass = Hourglass(cfg.cost_base, (f8, f16, f32), cfg.groups)
        self.classifier = nn.Conv3d(cfg.groups, 1, 3, 1, 1, bias=False)
        # upsampling weights for the initial disparity (from matching features) and the GRU output
        self.spx4 = nn.Sequential(ConvNormAct(match, cfg.spx_dim, 3, 1, 1, norm="instance"),
                                  nn.Conv2d(cfg.spx_dim, cfg.spx_dim, 3, 1, 1, bias=False), nn.InstanceNorm2d(cfg.spx_dim), nn.ReLU())
        self.spx2 = UpConcat(cfg.spx_dim, s2, norm="instance")
        self.spx = nn.ConvTranspose2d(2 * s2, 9, 4, 2, 1)
        self.spx2_gru = UpConcat(s2, s2, norm="batch")
        self.spx_gru = nn.ConvTranspose2d(2 * s2, 9, 4, 2, 1)
        self.context = (ContextNet(cfg.context_width, cfg.hidden_dim, cfg.gru_levels) if cfg.context_source == "image"
                        else FeatureContext(match, cfg.hidden_dim))
        self.context_gates = nn.ModuleList(nn.Conv2d(cfg.hidden_dim, 3 * cfg.hidden_dim, 3, padding=1)
                                           for _ in range(cfg.gru_levels))
        lookup_channels = cfg.corr_levels * (2 * cfg.corr_radius + 1) * (cfg.groups + int(cfg.corr_lookup))
        self.update = UpdateBlock(cfg.hidden_dim, cfg.gru_levels, lookup_channels, cfg.motion_dim, cfg.head_dim, s2,
                                  cfg.motion_branch_dim)
        # parameter-free modules that name the computations an FP16 engine must keep in fp32
        self.lookup_coords = LookupCoordinates(cfg.corr_radius)
        self.candidate_softmax = CandidateSoftmax()
        self.softargmin = SoftArgmin()
        self.disp_update = DisparityUpdate()
        self.upsample_combine = ConvexCombine(cfg.upsample_border)
        self.confidence_cues = ConfidenceCues()  # parameter-free: named for the fp32 set of the export
        # created last, so the disparity path's initial weights are the same with or without it
        self.confidence_photo = PhotometricResidual()  # parameter-free, fp32 in the export
        self.confidence_head = (ConfidenceHead(cfg.hidden_dim, lookup_channels, cfg.confidence_width)
                                if cfg.confidence_head else None)
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)

    def freeze_bn(self) -> None:
        """Keep BatchNorm statistics fixed (fine-tuning with small batches)."""
        for m in self.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                m.eval()

    def _lookup(self, geo: list[torch.Tensor], corr: list[torch.Tensor], disp: torch.Tensor,
                coords: torch.Tensor) -> torch.Tensor:
        """Look-up features around ``disp`` (B,1,h,w, 1/4-res px): B, levels*(2r+1)*(G+1), h, w.

        ``geo`` and ``corr`` are the pyramids after :func:`pad_for_lookup` (``corr`` empty: GEV only)."""
        corr_or_none = corr or [None] * len(geo)
        lasts = [(g.shape[-1] - 1, None if c is None else c.shape[-1] - 1) for g, c in zip(geo, corr_or_none)]
        out = []
        for g, c, index in zip(geo, corr_or_none, self.lookup_coords(disp, coords, lasts)):
            out.append(gather_blend(g, index[0], index[1]).flatten(3))  # B,h,w,G*K
            if c is not None:
                out.append(gather_blend(c, index[2], index[3]).flatten(3))  # B,h,w,K
        return torch.cat(out, -1).permute(0, 3, 1, 2)

    def _pads(self, h: int, w: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) replicate padding of an h x w input to a multiple of 32."""
        pad_h, pad_w = (-h) % 32, (-w) % 32
        if self.config.pad_mode == "centre":  # the authors' InputPadder(divis_by=32)
            return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2
        return 0, pad_w, 0, pad_h

    @staticmethod
    def _warm_start(init_disparity: torch.Tensor, init_disp: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
        """A full-resolution disparity (B,1,H,W px) as the refinement's start at 1/4 resolution (1/4-res px),
        the GEV estimate ``init_disp`` where it is not finite. ``pads``: the images' (left, right, top, bottom)."""
        if init_disparity.dim() != 4 or init_disparity.shape[1] != 1 or init_disparity.shape[0] != init_disp.shape[0]:
            raise ShapeError(f"init_disparity must be B,1,H,W; got {tuple(init_disparity.shape)}")
        d = init_disparity.to(init_disp.dtype)
        known = torch.isfinite(d)
        d = F.pad(torch.where(known, d, 0.0), pads, mode="replicate")
        weight = F.pad(known.to(d.dtype), pads, mode="replicate")
        if d.shape[-2:] != (init_disp.shape[-2] * 4, init_disp.shape[-1] * 4):
            raise ShapeError(f"init_disparity {tuple(init_disparity.shape[-2:])} does not match the images")
        total, count = F.avg_pool2d(d * weight, 4), F.avg_pool2d(weight, 4)
        return torch.where(count > 0, total / count.clamp(min=1e-6) / 4.0, init_disp)

    def forward(self, left: torch.Tensor, right: torch.Tensor, iters: int | None = None,
                final_only: bool | None = None, init_disparity: torch.Tensor | None = None) -> StereoOutput:
        """Disparity of ``left`` (B,3,H,W float in [0, 1]) w.r.t. ``right``.

        ``iters`` defaults to ``train_iters`` in training mode and ``valid_iters`` otherwise;
        ``final_only`` (default: not training) upsamples only the last iteration.
        ``init_disparity`` (B,1,H,W px, e.g. the previous frame's disparity; non-finite = unknown, where
        the GEV estimate is used) warm-starts the recurrent refinement from it instead of from the GEV
        estimate (RAFT-style); the GEV volume, its estimate and the confidence cues are unchanged.
        """
        if iters is not None and iters < 1:
            raise ShapeError(f"iters must be >= 1, got {iters}")
        if left.shape != right.shape or left.dim() != 4 or left.shape[1] != 3:
            raise ShapeError(f"left and right must both be B,3,H,W; got {tuple(left.shape)} and {tuple(right.shape)}")
        cfg = self.config
        iters = iters if iters is not None else (cfg.train_iters if self.training else cfg.valid_iters)
        final_only = (not self.training) if final_only is None else final_only
        h_in, w_in = left.shape[-2:]
        pads = self._pads(h_in, w_in)  # left, right, top, bottom
        images = torch.cat([left, right], 0)
        images = (images - self.mean) / self.std
        if any(pads):
            images = F.pad(images, pads, mode="replicate")
        b = left.shape[0]

        feats = self.feature(images)  # both views in one pass
        stem2 = self.stem2(images)
        stem4 = self.stem4(stem2)
        match_feat = torch.cat([feats[0], stem4], 1)
        match = self.match_desc(self.match_conv(match_feat))
        match_l, match_r = match[:b], match[b:]
        feats_l = [match_feat[:b]] + [f[:b] for f in feats[1:]]
        stem2_l = stem2[:b]

        pairs = all_pairs_group_correlation(match_l, match_r, cfg.groups)  # B,G,h,w,w
        cost = disparity_band(pairs, self.candidates)  # B,G,D,h,w
        if cfg.cost_attention:
            cost = self.cost_att(self.cost_stem(cost), feats_l[0])
        gev = self.hourglass(cost, feats_l)  # B,G,D,h,w geometry encoding volume
        init_prob = self.candidate_softmax(self.classifier(gev).squeeze(1))  # B,D,h,w
        init_disp = self.softargmin(init_prob)  # B,1,h,w in 1/4-res px

        spx_logits = self.spx(self.spx2(self.spx4(feats_l[0]), stem2_l))
        init_full = self.upsample_combine(init_disp, upsample_weights(spx_logits))

        ctx = self.context(images[:b] if cfg.context_source == "image" else feats_l[0])
        net = [torch.tanh(n) for n, _ in ctx]
        gates = [tuple(conv(c).chunk(3, dim=1)) for (_, c), conv in zip(ctx, self.context_gates)]

        # look-up pyramids: GEV over candidates, all-pairs correlation (sum over groups) over columns
        h4, w4 = match_l.shape[-2:]
        geo = [gev.permute(0, 3, 4, 1, 2)]  # B,h,w,G,D
        corr = [(pairs.sum(1) * (match_l.shape[1] // cfg.groups)).unsqueeze(3)] if cfg.corr_lookup else []  # B,h,w,1,w
        for _ in range(cfg.corr_levels - 1):  # halve the last axis (even by construction): Reshape + ReduceMean
            geo.append(geo[-1].unflatten(-1, (-1, 2)).mean(-1))
            if corr:
                corr.append(corr[-1].unflatten(-1, (-1, 2)).mean(-1))
        geo, corr = [pad_for_lookup(g) for g in geo], [pad_for_lookup(c) for c in corr]  # once, not per iteration
        coords = torch.arange(w4, device=left.device, dtype=init_disp.dtype).view(1, 1, w4, 1)

        disp = init_disp if init_disparity is None else self._warm_start(init_disparity, init_disp, pads)
        predictions = []
        for i in range(iters):
            if self.training:
                disp = disp.detach()
            net, mask_feat, delta = self.update(net, gates, self._lookup(geo, corr, disp, coords), disp)
            disp = self.disp_update(disp, delta)
            if final_only and i < iters - 1:
                continue
            logits = self.spx_gru(self.spx2_gru(mask_feat, stem2_l))
            predictions.append(self.upsample_combine(disp, upsample_weights(logits)))

        final = predictions[-1]  # B,1,H,W padded size
        cues = self.confidence_cues(init_prob.detach(), disp.detach(), init_disp.detach(), delta.detach())
        if self.confidence_head is not None:
            with torch.no_grad():
                lookup = self._lookup(geo, corr, disp, coords)  # matching costs around the final estimate
                photo = self.confidence_photo(images[:b], images[b:], final)
            conf_logit = self.confidence_head(cues, lookup, net[0], photo, final)
        else:
            conf_logit = F.interpolate(derived_confidence_logit(cues), size=final.shape[-2:], mode="bilinear",
                                       align_corners=False)
        crop = (slice(None), slice(None), slice(pads[2], pads[2] + h_in), slice(pads[0], pads[0] + w_in))
        predictions = [p[crop] for p in predictions]
        conf_logit = conf_logit[crop]
        return StereoOutput(predictions[-1], predictions, init_full[crop], init_prob, torch.sigmoid(conf_logit),
                            conf_logit)


IGEV_DEFAULT = IGEVConfig()
# Real-time configuration for Jetson-class devices: same code, 2 GRU levels, half the hidden
# and context width, lighter update head, 6 iterations at inference (IGEV's accuracy falls off
# slowly with iterations thanks to the GEV initialisation).
IGEV_RT = IGEVConfig(train_iters=12, valid_iters=6, gru_levels=2, hidden_dim=64, context_width=64,
                     motion_dim=64, head_dim=128)
# RT-IGEV++ (Xu et al., IGEV++ paper, core_rt): GEV only (no all-pairs look-up), no cost-volume stem or
# attention, hidden state and context from the matching features, one ConvGRU at 1/4 (hidden 96),
# 8 iterations at test as its authors evaluate it. train_iters is ours (their training script is not
# among the reference sources).
RT_IGEV = IGEVConfig(train_iters=12, valid_iters=8, gru_levels=1, hidden_dim=96, motion_dim=96, motion_branch_dim=64,
                     head_dim=128, context_source="features", cost_attention=False, corr_lookup=False)
# Tests and CPU smoke runs only.
IGEV_TINY = IGEVConfig(max_disp=64, train_iters=3, valid_iters=3, groups=4, corr_levels=2, corr_radius=2,
                       gru_levels=2, hidden_dim=16, backbone_width=0.25, context_width=16, stem_dims=(8, 8),
                       spx_dim=8, motion_dim=16, head_dim=16, cost_base=4)

register_model("igev", IGEV_DEFAULT, IGEVStereo)
register_model("igev-rt", IGEV_RT, IGEVStereo)
register_model("rt-igev", RT_IGEV, IGEVStereo)
register_model("igev-tiny", IGEV_TINY, IGEVStereo)
