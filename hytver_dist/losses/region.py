"""Region (overlap) losses: Dice, Tversky, Focal Tversky, log-cosh Dice.

All are functions of TP = sum p*y, FP = sum p*(1-y), FN = sum (1-p)*y per reduction group
(the whole batch by default, each sample with ``per_sample=True``), p = sigmoid(logits).
"""

from __future__ import annotations

import torch

from . import _scalar as sc
from ._base import SumLoss
from ._inputs import check_range
from ._sums import RegionSums


def dice_coefficient(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor,
                     smooth: float) -> torch.Tensor:
    """(2*TP + s) / (2*TP + FP + FN + s), i.e. (2*S_py + s) / (S_p + S_y + s)."""
    return (2 * tp + smooth) / (2 * tp + fp + fn + smooth)


def tversky_index(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, alpha: float,
                  smooth: float) -> torch.Tensor:
    """(TP + s) / (TP + alpha*FN + (1-alpha)*FP + s): alpha weights false negatives."""
    return (tp + smooth) / (tp + alpha * fn + (1 - alpha) * fp + smooth)


class DiceLoss(SumLoss):
    """Soft Dice loss: ``L = 1 - (2*TP + s) / (S_p + S_y + s)``.

    Defaults: ``smooth=1`` (numerator and denominator), ``per_sample=False`` (one global group
    over the whole batch, as CoactSeg and the HyTver authors' code; ``True`` averages the
    per-sample losses). Source: Milletari et al. 2016 (V-Net); ``../shared/spec/losses.md``.
    MONAI's ``DiceLoss(sigmoid=True, smooth_nr=s, smooth_dr=s, batch=not per_sample)`` agrees.
    """

    def __init__(self, smooth: float = 1.0, per_sample: bool = False,
                 backend: str = "auto") -> None:
        super().__init__(backend)
        self.smooth = check_range("smooth", smooth, 0.0)
        self.per_sample = bool(per_sample)

    def from_sums(self, s: RegionSums) -> torch.Tensor:
        return (1 - dice_coefficient(s.tp, s.fp, s.fn, self.smooth)).mean()

    def scalar(self, rows, grad, n_voxels, tiny) -> float:
        return sc.dice_region(rows, grad, 1.0, self.per_sample, self.smooth)


class TverskyLoss(SumLoss):
    """Tversky loss: ``L = 1 - TI``, ``TI = (TP + s) / (TP + alpha*FN + (1-alpha)*FP + s)``.

    Defaults: ``alpha=0.7`` (weight of false negatives, the HyTver paper's notation; alpha >
    0.5 favours recall), ``smooth=1``, ``per_sample=False``. Salehi et al. 2017 and MONAI name
    the FP weight alpha: ``monai.losses.TverskyLoss(alpha=1-a, beta=a, smooth_nr=s,
    smooth_dr=s)`` computes the same index.
    """

    def __init__(self, alpha: float = 0.7, smooth: float = 1.0, per_sample: bool = False,
                 backend: str = "auto") -> None:
        super().__init__(backend)
        self.alpha = check_range("alpha", alpha, 0.0, 1.0)
        self.smooth = check_range("smooth", smooth, 0.0)
        self.per_sample = bool(per_sample)

    def from_sums(self, s: RegionSums) -> torch.Tensor:
        return (1 - tversky_index(s.tp, s.fp, s.fn, self.alpha, self.smooth)).mean()

    def scalar(self, rows, grad, n_voxels, tiny) -> float:
        return sc.tversky_region(rows, grad, 1.0, self.per_sample, self.alpha, self.smooth)


class FocalTverskyLoss(SumLoss):
    """Focal Tversky loss: ``L = (1 - TI)^gamma`` with TI as in :class:`TverskyLoss`.

    Defaults: ``alpha=0.7`` (FN weight), ``gamma=0.75``, ``smooth=1``, ``per_sample=False``
    (with ``per_sample=True`` the power is applied per sample, then averaged). Source: Abraham &
    Khan 2019 (their code's exponent 0.75 = 1/(4/3)).
    """

    def __init__(self, alpha: float = 0.7, gamma: float = 0.75, smooth: float = 1.0,
                 per_sample: bool = False, backend: str = "auto") -> None:
        super().__init__(backend)
        self.alpha = check_range("alpha", alpha, 0.0, 1.0)
        self.gamma = check_range("gamma", gamma, 0.0, low_open=True)
        self.smooth = check_range("smooth", smooth, 0.0)
        self.per_sample = bool(per_sample)

    def from_sums(self, s: RegionSums) -> torch.Tensor:
        base = 1 - tversky_index(s.tp, s.fp, s.fn, self.alpha, self.smooth)
        # A perfect prediction at saturated logits gives base == 0 exactly, where the power's
        # derivative is infinite (0 * inf = NaN in the backward): keep base off zero.
        return base.clamp_min(torch.finfo(base.dtype).tiny).pow(self.gamma).mean()

    def scalar(self, rows, grad, n_voxels, tiny) -> float:
        return sc.tversky_region(rows, grad, 1.0, self.per_sample, self.alpha, self.smooth,
                                 sc.power(self.gamma, tiny))


class LogCoshDiceLoss(DiceLoss):
    """Log-cosh Dice loss: ``L = log(cosh(L_dice))`` with ``L_dice`` of :class:`DiceLoss`.

    Defaults: ``smooth=1``, ``per_sample=False`` (per sample: log-cosh of each sample's Dice
    loss, then the mean). Source: Jadon 2020 (Semantic-Segmentation-Loss-Functions).
    """

    def from_sums(self, s: RegionSums) -> torch.Tensor:
        return torch.log(torch.cosh(1 - dice_coefficient(s.tp, s.fp, s.fn, self.smooth))).mean()

    def scalar(self, rows, grad, n_voxels, tiny) -> float:
        return sc.dice_region(rows, grad, 1.0, self.per_sample, self.smooth, sc.log_cosh)
