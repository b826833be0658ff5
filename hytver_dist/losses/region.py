"""Region (overlap) losses: Dice, Tversky, Focal Tversky, log-cosh Dice.

All are functions of TP = sum p*y, FP = sum p*(1-y), FN = sum (1-p)*y per reduction group and
channel (per channel: the whole batch by default, each sample with ``per_sample=True``),
p = sigmoid(logits). With C channels the loss is the mean over all C * groups.
"""

from __future__ import annotations

import torch

from ._base import SegmentationLoss
from ._inputs import check_range
from ._reference import (
    dice_coefficient,
    dice_loss,
    focal_power,
    region_sums,
    softmax_dice_loss,
    softmax_region_sums,
    tversky_index,
)


class DiceLoss(SegmentationLoss):
    """Soft Dice loss: ``L = 1 - (2*TP + s) / (S_p + S_y + s)``.

    Defaults: ``smooth=1`` (numerator and denominator), ``per_sample=False`` (one global group
    over the whole batch, as CoactSeg and the HyTver authors' code; ``True`` averages the
    per-sample losses). Source: Milletari et al. 2016 (V-Net); ``docs/losses.md``.
    MONAI's ``DiceLoss(sigmoid=True, smooth_nr=s, smooth_dr=s, batch=not per_sample)`` agrees.
    C channels: the mean over channels of each channel's Dice loss.
    """

    kind = "dice"
    fused_param_names = ("smooth",)

    def __init__(self, smooth: float = 1.0, per_sample: bool = False,
                 backend: str = "auto",
                 activation: str = "sigmoid", include_background: bool = True) -> None:
        super().__init__(backend, activation, include_background)
        self.smooth = check_range("smooth", smooth, 0.0)
        self.per_sample = bool(per_sample)

    def _reference(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return dice_loss(x, y, self.smooth, self.per_sample)

    def _reference_softmax(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return softmax_dice_loss(x, y, self.smooth, self.per_sample, self.include_background)


class TverskyLoss(SegmentationLoss):
    """Tversky loss: ``L = 1 - TI``, ``TI = (TP + s) / (TP + alpha*FN + (1-alpha)*FP + s)``.

    Defaults: ``alpha=0.7`` (weight of false negatives, the HyTver paper's notation; alpha >
    0.5 favours recall), ``smooth=1``, ``per_sample=False``. Salehi et al. 2017 and MONAI name
    the FP weight alpha: ``monai.losses.TverskyLoss(alpha=1-a, beta=a, smooth_nr=s,
    smooth_dr=s)`` computes the same index. C channels: the mean over channels of each
    channel's loss.
    """

    kind = "tversky"
    fused_param_names = ("alpha", "smooth")

    def __init__(self, alpha: float = 0.7, smooth: float = 1.0, per_sample: bool = False,
                 backend: str = "auto",
                 activation: str = "sigmoid", include_background: bool = True) -> None:
        super().__init__(backend, activation, include_background)
        self.alpha = check_range("alpha", alpha, 0.0, 1.0)
        self.smooth = check_range("smooth", smooth, 0.0)
        self.per_sample = bool(per_sample)

    def _reference(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        tp, fp, fn = region_sums(x, y, self.per_sample)
        return (1 - tversky_index(tp, fp, fn, self.alpha, self.smooth)).mean()

    def _reference_softmax(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        tp, fp, fn = softmax_region_sums(torch.softmax(x, 1), y, self.per_sample,
                                         self.include_background)
        return (1 - tversky_index(tp, fp, fn, self.alpha, self.smooth)).mean()


class FocalTverskyLoss(SegmentationLoss):
    """Focal Tversky loss: ``L = (1 - TI)^gamma`` with TI as in :class:`TverskyLoss`.

    Defaults: ``alpha=0.7`` (FN weight), ``gamma=0.75``, ``smooth=1``, ``per_sample=False``
    (with ``per_sample=True`` the power is applied per sample, then averaged). Source: Abraham &
    Khan 2019 (their code's exponent 0.75 = 1/(4/3)). C channels: the power per channel (and
    group), then the mean.
    """

    kind = "focal_tversky"
    fused_param_names = ("alpha", "gamma", "smooth")

    def __init__(self, alpha: float = 0.7, gamma: float = 0.75, smooth: float = 1.0,
                 per_sample: bool = False, backend: str = "auto",
                 activation: str = "sigmoid", include_background: bool = True) -> None:
        super().__init__(backend, activation, include_background)
        self.alpha = check_range("alpha", alpha, 0.0, 1.0)
        self.gamma = check_range("gamma", gamma, 0.0, low_open=True)
        self.smooth = check_range("smooth", smooth, 0.0)
        self.per_sample = bool(per_sample)

    def _reference(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        tp, fp, fn = region_sums(x, y, self.per_sample)
        return focal_power(1 - tversky_index(tp, fp, fn, self.alpha, self.smooth),
                           self.gamma).mean()

    def _reference_softmax(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        tp, fp, fn = softmax_region_sums(torch.softmax(x, 1), y, self.per_sample,
                                         self.include_background)
        return focal_power(1 - tversky_index(tp, fp, fn, self.alpha, self.smooth),
                           self.gamma).mean()


class LogCoshDiceLoss(DiceLoss):
    """Log-cosh Dice loss: ``L = log(cosh(L_dice))`` with ``L_dice`` of :class:`DiceLoss`.

    Defaults: ``smooth=1``, ``per_sample=False`` (per sample: log-cosh of each sample's Dice
    loss, then the mean). Source: Jadon 2020 (Semantic-Segmentation-Loss-Functions). C
    channels: log-cosh per channel (and group), then the mean.
    """

    kind = "logcosh_dice"

    def _reference(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        dice = dice_coefficient(*region_sums(x, y, self.per_sample), self.smooth)
        return torch.log(torch.cosh(1 - dice)).mean()

    def _reference_softmax(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        sums = softmax_region_sums(torch.softmax(x, 1), y, self.per_sample,
                                   self.include_background)
        return torch.log(torch.cosh(1 - dice_coefficient(*sums, self.smooth))).mean()
