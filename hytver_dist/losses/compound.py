"""Compound losses: Dice+CE, Dice+focal, Combo and HyTver (a CE term plus a region term). The
CE terms are means over all B*C voxels, the region terms per channel (and group)."""

from __future__ import annotations

import torch

from ._base import SegmentationLoss
from ._inputs import check_range
from ._reference import (
    bce,
    categorical,
    dice_loss,
    mce,
    region_sums,
    softmax_dice_loss,
    softmax_region_sums,
    tversky_index,
)
from .cross_entropy import FocalLoss


class DiceCELoss(SegmentationLoss):
    """``L = lambda_dice*L_dice + lambda_ce*L_ce`` (:class:`DiceLoss` + :class:`CELoss`).

    Defaults: ``lambda_dice=1``, ``lambda_ce=1``, ``smooth=1``, ``per_sample=False`` (applies
    to the Dice term only; CE is always the mean over all voxels). MONAI ``DiceCELoss`` with
    ``sigmoid=True`` computes the same for matching smoothing and batch flags. C channels: the
    mean over channels of each channel's loss.
    """

    kind = "dice_ce"
    fused_param_names = ("lambda_dice", "lambda_ce", "smooth")

    def __init__(self, lambda_dice: float = 1.0, lambda_ce: float = 1.0, smooth: float = 1.0,
                 per_sample: bool = False, backend: str = "auto",
                 activation: str = "sigmoid", include_background: bool = True) -> None:
        super().__init__(backend, activation, include_background)
        self.lambda_dice = check_range("lambda_dice", lambda_dice, 0.0)
        self.lambda_ce = check_range("lambda_ce", lambda_ce, 0.0)
        self.smooth = check_range("smooth", smooth, 0.0)
        self.per_sample = bool(per_sample)

    def _reference(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (self.lambda_dice * dice_loss(x, y, self.smooth, self.per_sample)
                + self.lambda_ce * bce(x, y))

    def _reference_softmax(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        dice = softmax_dice_loss(x, y, self.smooth, self.per_sample, self.include_background)
        return self.lambda_dice * dice + self.lambda_ce * categorical(x, y, 1.0, 1.0)


class FocalDiceLoss(SegmentationLoss):
    """``L = lambda_dice*L_dice + lambda_focal*L_focal`` (:class:`DiceLoss` + :class:`FocalLoss`).

    Defaults: ``lambda_dice=1``, ``lambda_focal=1``, focal ``alpha=0.25``, ``gamma=2``,
    Dice ``smooth=1``, ``per_sample=False`` (Dice term only). MONAI ``DiceFocalLoss`` is the
    ``alpha=None`` case. C channels: the mean over channels of each channel's loss.
    """

    kind = "focal_dice"
    fused_param_names = ("lambda_dice", "lambda_focal", "alpha", "gamma", "smooth")
    needs_hard_labels = True

    def __init__(self, lambda_dice: float = 1.0, lambda_focal: float = 1.0,
                 alpha: float | None = 0.25, gamma: float = 2.0, smooth: float = 1.0,
                 per_sample: bool = False, backend: str = "auto",
                 activation: str = "sigmoid", include_background: bool = True) -> None:
        super().__init__(backend, activation, include_background)
        self.lambda_dice = check_range("lambda_dice", lambda_dice, 0.0)
        self.lambda_focal = check_range("lambda_focal", lambda_focal, 0.0)
        self.focal = FocalLoss(alpha, gamma, backend, activation, include_background)
        self.smooth = check_range("smooth", smooth, 0.0)
        self.per_sample = bool(per_sample)

    alpha = property(lambda self: self.focal.alpha)
    gamma = property(lambda self: self.focal.gamma)

    def fused_params(self) -> list[float]:
        return [self.lambda_dice, self.lambda_focal, *self.focal.fused_params(), self.smooth]

    def _reference(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (self.lambda_dice * dice_loss(x, y, self.smooth, self.per_sample)
                + self.lambda_focal * self.focal._reference(x, y))

    def _reference_softmax(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        dice = softmax_dice_loss(x, y, self.smooth, self.per_sample, self.include_background)
        return self.lambda_dice * dice + self.lambda_focal * self.focal._reference_softmax(x, y)


class ComboLoss(SegmentationLoss):
    """Combo loss: ``L = gamma*mCE(beta) + (1-gamma)*L_dice`` with
    ``mCE(beta) = mean_i [beta*y*softplus(-x) + (1-beta)*(1-y)*softplus(x)]``.

    Defaults: ``beta=0.5`` (lesion CE weight), ``gamma=0.5`` (CE share), ``smooth=1``,
    ``per_sample=False``. Source: Taghanaki et al. 2019 (their ``-(1-gamma)*DSC`` differs by a
    constant; same gradient). Equals :class:`HyTverLoss` with ``alpha=0.5`` and half the
    smoothing (TI(0.5) is the Dice coefficient with smoothing 2s). C channels: the mean over
    channels of each channel's loss.
    """

    kind = "combo"
    fused_param_names = ("beta", "gamma", "smooth")

    def __init__(self, beta: float = 0.5, gamma: float = 0.5, smooth: float = 1.0,
                 per_sample: bool = False, backend: str = "auto",
                 activation: str = "sigmoid", include_background: bool = True) -> None:
        super().__init__(backend, activation, include_background)
        self.beta = check_range("beta", beta, 0.0, 1.0)
        self.gamma = check_range("gamma", gamma, 0.0, 1.0)
        self.smooth = check_range("smooth", smooth, 0.0)
        self.per_sample = bool(per_sample)

    def _reference(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (self.gamma * mce(x, y, self.beta)
                + (1 - self.gamma) * dice_loss(x, y, self.smooth, self.per_sample))

    def _reference_softmax(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        dice = softmax_dice_loss(x, y, self.smooth, self.per_sample, self.include_background)
        return (self.gamma * categorical(x, y, 1 - self.beta, self.beta)
                + (1 - self.gamma) * dice)


class HyTverLoss(SegmentationLoss):
    """HyTver: ``L = gamma*mCE(beta) + (1-gamma)*(1 - TI(alpha))``.

    ``TI = (TP + s) / (TP + alpha*FN + (1-alpha)*FP + s)`` (alpha weights false negatives),
    ``mCE(beta) = mean_i [beta*y*softplus(-x) + (1-beta)*(1-y)*softplus(x)]`` (the paper's
    L_mCE with its misprint corrected). Defaults: ``alpha=0.7``, ``beta=0.7``, ``gamma=0.5``,
    ``smooth=1``, ``per_sample=False``: the paper gives no values; these are the constants its
    authors' code intends. Source: Perera, Ting & Baskaran, APSIPA 2025 (arXiv:2508.17639).
    C channels: the mean over channels of each channel's loss (TI per channel, mCE over all
    B*C voxels).
    """

    kind = "hytver"
    fused_param_names = ("alpha", "beta", "gamma", "smooth")

    def __init__(self, alpha: float = 0.7, beta: float = 0.7, gamma: float = 0.5,
                 smooth: float = 1.0, per_sample: bool = False, backend: str = "auto",
                 activation: str = "sigmoid", include_background: bool = True) -> None:
        super().__init__(backend, activation, include_background)
        self.alpha = check_range("alpha", alpha, 0.0, 1.0)
        self.beta = check_range("beta", beta, 0.0, 1.0)
        self.gamma = check_range("gamma", gamma, 0.0, 1.0)
        self.smooth = check_range("smooth", smooth, 0.0)
        self.per_sample = bool(per_sample)

    def _reference(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        tp, fp, fn = region_sums(x, y, self.per_sample)
        tversky = (1 - tversky_index(tp, fp, fn, self.alpha, self.smooth)).mean()
        return self.gamma * mce(x, y, self.beta) + (1 - self.gamma) * tversky

    def _reference_softmax(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        tp, fp, fn = softmax_region_sums(torch.softmax(x, 1), y, self.per_sample,
                                         self.include_background)
        tversky = (1 - tversky_index(tp, fp, fn, self.alpha, self.smooth)).mean()
        return (self.gamma * categorical(x, y, 1 - self.beta, self.beta)
                + (1 - self.gamma) * tversky)
