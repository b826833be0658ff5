"""Voxel-wise cross-entropy losses: CE, weighted CE, focal. Means over all voxels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _scalar as sc
from ._base import ExponentLoss, SumLoss
from ._inputs import check_range
from ._sums import C0, C1, F0, F1, FN, TP, RegionSums


class CELoss(SumLoss):
    """Binary cross-entropy on logits: ``L = mean_i [softplus(x_i) - x_i*y_i]``.

    No hyperparameters. Equals ``torch.nn.BCEWithLogitsLoss()`` (and the 2-class
    ``F.cross_entropy`` on ``[0, x]`` logits). Logs come from the logits, never from clamped p.
    """

    uses_region = False
    uses_ce = True

    def __init__(self, backend: str = "auto") -> None:
        super().__init__(backend)

    def from_sums(self, s: RegionSums) -> torch.Tensor:
        return (s.c1 + s.c0) / s.n_voxels

    def scalar(self, rows, grad, n_voxels, tiny) -> float:
        return sc.linear(rows, grad, {C1: 1 / n_voxels, C0: 1 / n_voxels})


class WeightedCELoss(SumLoss):
    """Class-weighted cross-entropy: ``L = sum_i w_i*l_i / sum_i w_i`` with
    ``w_i*l_i = w_fg*y_i*softplus(-x_i) + w_bg*(1-y_i)*softplus(x_i)``,
    ``w_i = w_fg*y_i + w_bg*(1-y_i)``.

    Defaults: ``w_bg=0.1``, ``w_fg=0.9`` (the HyTver authors' ``weight=[0.1, 0.9]``). Equals
    ``torch.nn.CrossEntropyLoss(weight=[w_bg, w_fg])``'s weighted mean for hard labels.
    """

    uses_ce = True

    def __init__(self, w_bg: float = 0.1, w_fg: float = 0.9, backend: str = "auto") -> None:
        super().__init__(backend)
        self.w_bg = check_range("w_bg", w_bg, 0.0)
        self.w_fg = check_range("w_fg", w_fg, 0.0)
        if self.w_bg == 0 and self.w_fg == 0:
            raise ValueError("w_bg and w_fg cannot both be 0")

    def from_sums(self, s: RegionSums) -> torch.Tensor:
        s_y = (s.tp + s.fn).sum()
        weight = self.w_fg * s_y + self.w_bg * (s.n_voxels - s_y)
        return (self.w_fg * s.c1 + self.w_bg * s.c0) / weight

    def scalar(self, rows, grad, n_voxels, tiny) -> float:
        s_y = sum(r[TP] + r[FN] for r in rows)
        weight = self.w_fg * s_y + self.w_bg * (n_voxels - s_y)
        num = sum(self.w_fg * r[C1] + self.w_bg * r[C0] for r in rows)
        d_sy = -(self.w_fg - self.w_bg) * sc.div(num, weight * weight)
        for g in grad:
            g[C1] += sc.div(self.w_fg, weight)
            g[C0] += sc.div(self.w_bg, weight)
            g[TP] += d_sy
            g[FN] += d_sy
        return sc.div(num, weight)


class FocalLoss(ExponentLoss):
    """Focal loss: ``L = mean_i [ -a_t * (1-p_t)^gamma * log(p_t) ]``, p_t = p if y=1 else 1-p,
    ``a_t = alpha*y + (1-alpha)*(1-y)``.

    Defaults: ``alpha=0.25``, ``gamma=2`` (Lin et al. 2017); ``alpha=None`` drops the class
    weighting (MONAI's default). Soft labels use MONAI's form: ``(1-p_t)^gamma`` becomes
    ``sigmoid(-x*(2y-1))^gamma`` and ``-log(p_t)`` the BCE term ``softplus(x) - x*y``.
    """

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0,
                 backend: str = "auto") -> None:
        super().__init__(backend)
        self.alpha = None if alpha is None else check_range("alpha", alpha, 0.0, 1.0)
        self.gamma = check_range("gamma", gamma, 0.0)

    def voxel_gamma(self) -> float:
        return self.gamma

    def reference(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
        loss = torch.exp(self.gamma * F.logsigmoid(-x * (2 * y - 1))) * bce
        if self.alpha is not None:
            loss = (self.alpha * y + (1 - self.alpha) * (1 - y)) * loss
        return loss.mean()

    def from_exp_stats(self, stats: torch.Tensor, n_voxels: int) -> torch.Tensor:
        f1, f0 = stats[:, F1].sum(), stats[:, F0].sum()
        if self.alpha is None:
            return (f1 + f0) / n_voxels
        return (self.alpha * f1 + (1 - self.alpha) * f0) / n_voxels

    def scalar(self, rows, grad, n_voxels, tiny, weight: float = 1.0) -> float:
        w1, w0 = (1.0, 1.0) if self.alpha is None else (self.alpha, 1 - self.alpha)
        return sc.linear(rows, grad, {F1: weight * w1 / n_voxels, F0: weight * w0 / n_voxels})


def mce(s: RegionSums, beta: float) -> torch.Tensor:
    """Modified CE of Combo/HyTver: mean_i [beta*y*softplus(-x) + (1-beta)*(1-y)*softplus(x)]."""
    return (beta * s.c1 + (1 - beta) * s.c0) / s.n_voxels

