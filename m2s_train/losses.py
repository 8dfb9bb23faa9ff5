"""Training losses on disparity."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from m2s_train.models.igev import StereoOutput

CONFIDENCE_THRESHOLD_PX = 3.0  # the confidence is P(|d - d_gt| <= 3 px), the bad-3 criterion


def gt_valid_mask(gt: torch.Tensor, valid: torch.Tensor | None, max_disp: float) -> torch.Tensor:
    """B,1,H,W bool: finite GT in (0, max_disp), inside ``valid`` when given. NaN/inf GT is masked, not propagated."""
    mask = torch.isfinite(gt) & (gt > 0) & (gt < max_disp)
    if valid is not None:
        mask &= valid.bool()
    return mask


def sequence_loss(output: StereoOutput, gt: torch.Tensor, valid: torch.Tensor | None, max_disp: float,
                  gamma: float = 0.9, confidence_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """IGEV's loss: smooth-L1 on the initial disparity + gamma-weighted L1 over the iterations,
    plus ``confidence_weight`` x :func:`confidence_loss` (which reaches only the confidence head).

    The decay is normalised like the reference (``gamma ** (15 / (n - 1))``) so runs with
    different iteration counts weigh the last prediction alike. Pixels without valid GT
    contribute nothing; a batch without any gives a zero loss (still differentiable).
    """
    mask = gt_valid_mask(gt, valid, max_disp)
    gt = torch.where(mask, gt, torch.zeros_like(gt))
    n = len(output.iterations)
    count = mask.sum().clamp(min=1)
    init = F.smooth_l1_loss(output.init_disparity, gt, reduction="none")
    loss = (init * mask).sum() / count
    decay = gamma ** (15.0 / (n - 1)) if n > 1 else 1.0
    for i, pred in enumerate(output.iterations):
        weight = decay ** (n - i - 1)
        loss = loss + weight * ((pred - gt).abs() * mask).sum() / count
    conf = confidence_loss(output, gt, mask)
    loss = loss + confidence_weight * conf
    with torch.no_grad():
        err = (output.disparity - gt).abs()[mask]
        stats = {"loss": float(loss.detach()), "epe": float(err.mean()) if err.numel() else float("nan"),
                 "bad3": float((err > 3).float().mean()) if err.numel() else float("nan"),
                 "confidence_bce": float(conf.detach())}
    return loss, stats


def confidence_loss(output: StereoOutput, gt: torch.Tensor, mask: torch.Tensor,
                    threshold: float = CONFIDENCE_THRESHOLD_PX) -> torch.Tensor:
    """Binary cross-entropy of the confidence against "the final disparity is within ``threshold`` px
    of the GT", on the pixels of ``mask``. The head's inputs are detached, so this trains the head
    alone; for a model without a learned head it is a constant (reported, never trained)."""
    target = ((output.disparity.detach() - gt).abs() <= threshold).float()
    bce = F.binary_cross_entropy_with_logits(output.confidence_logit, target, reduction="none")
    return (bce * mask).sum() / mask.sum().clamp(min=1)
