"""Building blocks of the reference (pure-PyTorch, per-voxel) forms, on ``(B, C, *spatial)``.

Region sums are per sample and channel, then grouped per channel: over the batch (one group per
channel) or per sample (``per_sample=True``). Means over the resulting ``(G, C)`` terms average
the channels' losses, as the multi-channel definition asks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def spatial_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over the spatial axes: ``(B, C)``."""
    return t.sum(tuple(range(2, t.dim())))


def group(t: torch.Tensor, per_sample: bool) -> torch.Tensor:
    """``(B, C)`` per-sample sums as per-group sums: ``(B, C)`` or ``(1, C)``."""
    return t if per_sample else t.sum(0, keepdim=True)


def region_sums(x: torch.Tensor, y: torch.Tensor, per_sample: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TP = sum p*y, FP = sum p*(1-y), FN = sum (1-p)*y per group and channel."""
    p = torch.sigmoid(x)
    py = p * y
    return (group(spatial_sum(py), per_sample), group(spatial_sum(p - py), per_sample),
            group(spatial_sum(y - py), per_sample))


def dice_coefficient(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor,
                     smooth: float) -> torch.Tensor:
    """(2*TP + s) / (2*TP + FP + FN + s), i.e. (2*S_py + s) / (S_p + S_y + s)."""
    return (2 * tp + smooth) / (2 * tp + fp + fn + smooth)


def tversky_index(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, alpha: float,
                  smooth: float) -> torch.Tensor:
    """(TP + s) / (TP + alpha*FN + (1-alpha)*FP + s): alpha weights false negatives."""
    return (tp + smooth) / (tp + alpha * fn + (1 - alpha) * fp + smooth)


def dice_loss(x: torch.Tensor, y: torch.Tensor, smooth: float, per_sample: bool) -> torch.Tensor:
    """Mean over groups and channels of 1 - Dice."""
    return (1 - dice_coefficient(*region_sums(x, y, per_sample), smooth)).mean()


def bce(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Binary CE on logits, the mean over all voxels: mean_i [softplus(x) - x*y]."""
    return (F.softplus(x) - x * y).mean()


def mce(x: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """Modified CE of Combo/HyTver: mean_i [beta*y*softplus(-x) + (1-beta)*(1-y)*softplus(x)]."""
    sp = F.softplus(x)  # softplus(-x) = softplus(x) - x: one transcendental per voxel
    return (beta * y * (sp - x) + (1 - beta) * (1 - y) * sp).mean()


def focal_power(base: torch.Tensor, exponent: float) -> torch.Tensor:
    """base**exponent with base kept off 0: where base is exactly 0 (a perfect prediction at
    saturated logits) the power's infinite derivative would turn the gradient into NaN."""
    return base.clamp_min(torch.finfo(base.dtype).tiny).pow(exponent)


# ---- softmax (C classes): x logits and y a one-hot / soft target, both (B, C, *spatial)


def class_weights(like: torch.Tensor, w_bg: float, w_fg: float) -> torch.Tensor:
    """(1, C, 1, ...) weights: w_bg for class 0, w_fg for classes 1..C-1."""
    w = torch.full((like.shape[1],), float(w_fg), dtype=like.dtype, device=like.device)
    w[0] = w_bg
    return w.reshape(1, -1, *([1] * (like.dim() - 2)))


def included(t: torch.Tensor, include_background: bool) -> torch.Tensor:
    """The included classes of per-class terms ``(G, C)``: all, or 1..C-1."""
    return t if include_background else t[:, 1:]


def softmax_region_sums(p: torch.Tensor, y: torch.Tensor, per_sample: bool,
                        include_background: bool
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TP, FP, FN of each included class per group, from class probabilities p."""
    sums = (spatial_sum(p * y), spatial_sum(p * (1 - y)), spatial_sum((1 - p) * y))
    return tuple(included(group(t, per_sample), include_background) for t in sums)


def categorical(x: torch.Tensor, y: torch.Tensor, w_bg: float, w_fg: float,
                modulation: torch.Tensor | None = None) -> torch.Tensor:
    """mean over B*voxels of sum_c w_c * y_c * [modulation_c *] (-log p_c), log-softmax."""
    term = class_weights(x, w_bg, w_fg) * y * -torch.log_softmax(x, 1)
    if modulation is not None:
        term = term * modulation
    return term.sum(1).mean()


def softmax_dice_loss(x: torch.Tensor, y: torch.Tensor, smooth: float, per_sample: bool,
                      include_background: bool) -> torch.Tensor:
    """Mean over groups and included classes of 1 - Dice."""
    sums = softmax_region_sums(torch.softmax(x, 1), y, per_sample, include_background)
    return (1 - dice_coefficient(*sums, smooth)).mean()
