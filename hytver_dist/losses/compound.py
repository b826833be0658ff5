"""Compound losses: Dice+CE, Dice+focal, Combo and HyTver (a CE term plus a region term)."""

from __future__ import annotations

import torch

from . import _scalar as sc
from ._base import ExponentLoss, SumLoss
from ._inputs import check_range
from ._sums import C0, C1, RegionSums, reference_sums, sums_from_stats
from .cross_entropy import FocalLoss, mce
from .region import DiceLoss, dice_coefficient, tversky_index


class DiceCELoss(SumLoss):
    """``L = lambda_dice*L_dice + lambda_ce*L_ce`` (:class:`DiceLoss` + :class:`CELoss`).

    Defaults: ``lambda_dice=1``, ``lambda_ce=1``, ``smooth=1``, ``per_sample=False`` (applies
    to the Dice term only; CE is always the mean over all voxels). MONAI ``DiceCELoss`` with
    ``sigmoid=True`` computes the same for matching smoothing and batch flags.
    """

    uses_ce = True

    def __init__(self, lambda_dice: float = 1.0, lambda_ce: float = 1.0, smooth: float = 1.0,
                 per_sample: bool = False, backend: str = "auto") -> None:
        super().__init__(backend)
        self.lambda_dice = check_range("lambda_dice", lambda_dice, 0.0)
        self.lambda_ce = check_range("lambda_ce", lambda_ce, 0.0)
        self.smooth = check_range("smooth", smooth, 0.0)
        self.per_sample = bool(per_sample)

    def from_sums(self, s: RegionSums) -> torch.Tensor:
        dice = (1 - dice_coefficient(s.tp, s.fp, s.fn, self.smooth)).mean()
        return self.lambda_dice * dice + self.lambda_ce * (s.c1 + s.c0) / s.n_voxels

    def scalar(self, rows, grad, n_voxels, tiny) -> float:
        w = self.lambda_ce / n_voxels
        return (sc.dice_region(rows, grad, self.lambda_dice, self.per_sample, self.smooth)
                + sc.linear(rows, grad, {C1: w, C0: w}))


class FocalDiceLoss(ExponentLoss):
    """``L = lambda_dice*L_dice + lambda_focal*L_focal`` (:class:`DiceLoss` + :class:`FocalLoss`).

    Defaults: ``lambda_dice=1``, ``lambda_focal=1``, focal ``alpha=0.25``, ``gamma=2``,
    Dice ``smooth=1``, ``per_sample=False`` (Dice term only). MONAI ``DiceFocalLoss`` is the
    ``alpha=None`` case.
    """

    def __init__(self, lambda_dice: float = 1.0, lambda_focal: float = 1.0,
                 alpha: float | None = 0.25, gamma: float = 2.0, smooth: float = 1.0,
                 per_sample: bool = False, backend: str = "auto") -> None:
        super().__init__(backend)
        self.lambda_dice = check_range("lambda_dice", lambda_dice, 0.0)
        self.lambda_focal = check_range("lambda_focal", lambda_focal, 0.0)
        self.dice = DiceLoss(smooth, per_sample, backend)
        self.focal = FocalLoss(alpha, gamma, backend)

    alpha = property(lambda self: self.focal.alpha)
    gamma = property(lambda self: self.focal.gamma)
    smooth = property(lambda self: self.dice.smooth)
    per_sample = property(lambda self: self.dice.per_sample)

    def voxel_gamma(self) -> float:
        return self.focal.gamma

    def reference(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        dice = self.dice.from_sums(reference_sums(x, y, self.per_sample, ce=False))
        return self.lambda_dice * dice + self.lambda_focal * self.focal.reference(x, y)

    def from_exp_stats(self, stats: torch.Tensor, n_voxels: int) -> torch.Tensor:
        dice = self.dice.from_sums(sums_from_stats(stats, self.per_sample, n_voxels))
        return self.lambda_dice * dice + self.lambda_focal * self.focal.from_exp_stats(
            stats, n_voxels)

    def scalar(self, rows, grad, n_voxels, tiny) -> float:
        return (sc.dice_region(rows, grad, self.lambda_dice, self.per_sample, self.smooth)
                + self.focal.scalar(rows, grad, n_voxels, tiny, weight=self.lambda_focal))


class ComboLoss(SumLoss):
    """Combo loss: ``L = gamma*mCE(beta) + (1-gamma)*L_dice`` with
    ``mCE(beta) = mean_i [beta*y*softplus(-x) + (1-beta)*(1-y)*softplus(x)]``.

    Defaults: ``beta=0.5`` (lesion CE weight), ``gamma=0.5`` (CE share), ``smooth=1``,
    ``per_sample=False``. Source: Taghanaki et al. 2019 (their ``-(1-gamma)*DSC`` differs by a
    constant; same gradient). Equals :class:`HyTverLoss` with ``alpha=0.5`` and half the
    smoothing (TI(0.5) is the Dice coefficient with smoothing 2s).
    """

    uses_ce = True

    def __init__(self, beta: float = 0.5, gamma: float = 0.5, smooth: float = 1.0,
                 per_sample: bool = False, backend: str = "auto") -> None:
        super().__init__(backend)
        self.beta = check_range("beta", beta, 0.0, 1.0)
        self.gamma = check_range("gamma", gamma, 0.0, 1.0)
        self.smooth = check_range("smooth", smooth, 0.0)
        self.per_sample = bool(per_sample)

    def from_sums(self, s: RegionSums) -> torch.Tensor:
        dice = (1 - dice_coefficient(s.tp, s.fp, s.fn, self.smooth)).mean()
        return self.gamma * mce(s, self.beta) + (1 - self.gamma) * dice

    def scalar(self, rows, grad, n_voxels, tiny) -> float:
        ce = {k: self.gamma * w for k, w in sc.ce_weights(self.beta, n_voxels).items()}
        return (sc.linear(rows, grad, ce)
                + sc.dice_region(rows, grad, 1 - self.gamma, self.per_sample, self.smooth))


class HyTverLoss(SumLoss):
    """HyTver: ``L = gamma*mCE(beta) + (1-gamma)*(1 - TI(alpha))``.

    ``TI = (TP + s) / (TP + alpha*FN + (1-alpha)*FP + s)`` (alpha weights false negatives),
    ``mCE(beta) = mean_i [beta*y*softplus(-x) + (1-beta)*(1-y)*softplus(x)]`` (the paper's
    L_mCE with its misprint corrected). Defaults: ``alpha=0.7``, ``beta=0.7``, ``gamma=0.5``,
    ``smooth=1``, ``per_sample=False``: the paper gives no values; these are the constants its
    authors' code intends. Source: Perera, Ting & Baskaran, APSIPA 2025 (arXiv:2508.17639).
    """

    uses_ce = True

    def __init__(self, alpha: float = 0.7, beta: float = 0.7, gamma: float = 0.5,
                 smooth: float = 1.0, per_sample: bool = False, backend: str = "auto") -> None:
        super().__init__(backend)
        self.alpha = check_range("alpha", alpha, 0.0, 1.0)
        self.beta = check_range("beta", beta, 0.0, 1.0)
        self.gamma = check_range("gamma", gamma, 0.0, 1.0)
        self.smooth = check_range("smooth", smooth, 0.0)
        self.per_sample = bool(per_sample)

    def from_sums(self, s: RegionSums) -> torch.Tensor:
        tversky = (1 - tversky_index(s.tp, s.fp, s.fn, self.alpha, self.smooth)).mean()
        return self.gamma * mce(s, self.beta) + (1 - self.gamma) * tversky

    def scalar(self, rows, grad, n_voxels, tiny) -> float:
        ce = {k: self.gamma * w for k, w in sc.ce_weights(self.beta, n_voxels).items()}
        return sc.linear(rows, grad, ce) + sc.tversky_region(
            rows, grad, 1 - self.gamma, self.per_sample, self.alpha, self.smooth)
