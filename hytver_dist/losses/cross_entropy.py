"""Voxel-wise cross-entropy losses: CE, weighted CE, focal. Means over all B*C voxels (the
weighted CE: a weighted mean per channel, then the mean over channels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._base import SegmentationLoss
from ._inputs import check_range
from ._reference import bce, categorical, class_weights


class CELoss(SegmentationLoss):
    """Binary cross-entropy on logits: ``L = mean_i [softplus(x_i) - x_i*y_i]``.

    No hyperparameters. Equals ``torch.nn.BCEWithLogitsLoss()`` (and the 2-class
    ``F.cross_entropy`` on ``[0, x]`` logits). Logs come from the logits, never from clamped p.
    C channels: the mean over all B*C voxels (= the mean of the channels' losses).
    """

    kind = "ce"

    def __init__(self, backend: str = "auto",
                 activation: str = "sigmoid", include_background: bool = True) -> None:
        super().__init__(backend, activation, include_background)

    def _reference(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return bce(x, y)

    def _reference_softmax(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return categorical(x, y, 1.0, 1.0)


class WeightedCELoss(SegmentationLoss):
    """Class-weighted cross-entropy: ``L = sum_i w_i*l_i / sum_i w_i`` with
    ``w_i*l_i = w_fg*y_i*softplus(-x_i) + w_bg*(1-y_i)*softplus(x_i)``,
    ``w_i = w_fg*y_i + w_bg*(1-y_i)``.

    Defaults: ``w_bg=0.1``, ``w_fg=0.9`` (the HyTver authors' ``weight=[0.1, 0.9]``). Equals
    ``torch.nn.CrossEntropyLoss(weight=[w_bg, w_fg])``'s weighted mean for hard labels. C
    channels: the weighted mean over each channel's voxels, then the mean over channels.
    """

    kind = "weighted_ce"
    fused_param_names = ("w_bg", "w_fg")

    def __init__(self, w_bg: float = 0.1, w_fg: float = 0.9, backend: str = "auto",
                 activation: str = "sigmoid", include_background: bool = True) -> None:
        super().__init__(backend, activation, include_background)
        self.w_bg = check_range("w_bg", w_bg, 0.0)
        self.w_fg = check_range("w_fg", w_fg, 0.0)
        if self.w_bg == 0 and self.w_fg == 0:
            raise ValueError("w_bg and w_fg cannot both be 0")

    def _reference(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        sp = F.softplus(x)
        weighted = self.w_fg * y * (sp - x) + self.w_bg * (1 - y) * sp
        weight = self.w_fg * y + self.w_bg * (1 - y)
        dims = (0, *range(2, x.dim()))  # all but the channel axis
        return (weighted.sum(dims) / weight.sum(dims)).mean()

    def _reference_softmax(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w = class_weights(x, self.w_bg, self.w_fg) * y
        return (w * -torch.log_softmax(x, 1)).sum() / w.sum()


class FocalLoss(SegmentationLoss):
    """Focal loss: ``L = mean_i [ -a_t * (1-p_t)^gamma * log(p_t) ]``, p_t = p if y=1 else 1-p,
    ``a_t = alpha*y + (1-alpha)*(1-y)``.

    Defaults: ``alpha=0.25``, ``gamma=2`` (Lin et al. 2017); ``alpha=None`` drops the class
    weighting (MONAI's default). Soft labels use MONAI's form: ``(1-p_t)^gamma`` becomes
    ``sigmoid(-x*(2y-1))^gamma`` and ``-log(p_t)`` the BCE term ``softplus(x) - x*y`` (the
    fused op takes hard labels; soft ones use the reference). C channels: the mean over all
    B*C voxels.
    """

    kind = "focal"
    fused_param_names = ("alpha", "gamma")  # alpha None is passed as -1
    needs_hard_labels = True

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0,
                 backend: str = "auto",
                 activation: str = "sigmoid", include_background: bool = True) -> None:
        super().__init__(backend, activation, include_background)
        self.alpha = None if alpha is None else check_range("alpha", alpha, 0.0, 1.0)
        self.gamma = check_range("gamma", gamma, 0.0)

    def fused_params(self) -> list[float]:
        return [-1.0 if self.alpha is None else self.alpha, self.gamma]

    def _reference(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
        loss = torch.exp(self.gamma * F.logsigmoid(-x * (2 * y - 1))) * bce
        if self.alpha is not None:
            loss = (self.alpha * y + (1 - self.alpha) * (1 - y)) * loss
        return loss.mean()

    def _reference_softmax(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w_bg, w_fg = (1.0, 1.0) if self.alpha is None else (1 - self.alpha, self.alpha)
        q = -torch.expm1(torch.log_softmax(x, 1))  # 1 - p_c
        return categorical(x, y, w_bg, w_fg, q.pow(self.gamma))
