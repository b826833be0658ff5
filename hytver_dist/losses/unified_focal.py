"""Unified focal losses (Yeung et al. 2022) and DSC++ (Yeung et al. 2023), two-class form.

As in the mlyg reference code: p_fg = p, p_bg = 1 - p, y_fg = y, y_bg = 1 - y, with p clamped
to [eps, 1 - eps] (eps = 1e-7) before every use, and the Tversky-like indices computed per
sample and per class, background included. With C channels: per sample, channel and class,
then the mean (focal terms: means over all B*C voxels). The fused op takes hard labels (soft
ones use the reference).
"""

from __future__ import annotations

import torch

from ._base import SegmentationLoss
from ._inputs import check_range
from ._reference import focal_power, included, spatial_sum

EPS = 1e-7


def _safe_pow(base: torch.Tensor, exponent: float) -> torch.Tensor:
    """base**exponent with a zero gradient (not NaN) at base == 0 for exponents below 1."""
    positive = base > 0
    return torch.where(positive, torch.where(positive, base, 1).pow(exponent), 0)


def clamped_probabilities(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """p~ = clamp(p, eps, 1-eps) and q~ = 1 - p~, the latter as clamp(sigmoid(-x), eps, 1-eps):
    equal in exact arithmetic, but 1 - p~ in float32 rounds q~ = 1e-7 up to 1.19e-7."""
    return torch.sigmoid(x).clamp(EPS, 1 - EPS), torch.sigmoid(-x).clamp(EPS, 1 - EPS)


def modified_tversky(tp: torch.Tensor, fn: torch.Tensor, fp: torch.Tensor,
                     delta: float) -> torch.Tensor:
    """mTI = (TP + eps) / (TP + delta*FN + (1-delta)*FP + eps)."""
    return (tp + EPS) / (tp + delta * fn + (1 - delta) * fp + EPS)


class _UnifiedFocal(SegmentationLoss):
    fused_param_names = ("weight", "delta", "gamma")
    needs_hard_labels = True

    def __init__(self, weight: float = 0.5, delta: float = 0.6, gamma: float = 0.5,
                 backend: str = "auto",
                 activation: str = "sigmoid", include_background: bool = True) -> None:
        super().__init__(backend, activation, include_background)
        self.weight = check_range("weight", weight, 0.0, 1.0)
        self.delta = check_range("delta", delta, 0.0, 1.0)
        self.gamma = check_range("gamma", gamma, 0.0, 1.0)

    def _region(self, mti_fg: torch.Tensor, mti_bg: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _fg_modulation(self, q: torch.Tensor) -> torch.Tensor | float:
        """The foreground CE term's factor (1 - p_fg)^gamma, or 1."""
        raise NotImplementedError

    def _reference(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p, q = clamped_probabilities(x)
        tp_fg, fn_fg, fp_fg = spatial_sum(y * p), spatial_sum(y * q), spatial_sum((1 - y) * p)
        tp_bg = spatial_sum((1 - y) * q)
        # The background's FN is the foreground's FP and vice versa; (B, C) indices.
        mti_fg = modified_tversky(tp_fg, fn_fg, fp_fg, self.delta)
        mti_bg = modified_tversky(tp_bg, fp_fg, fn_fg, self.delta)
        # -(1-y)*log(p_bg) with (1 - p_bg)^gamma = p^gamma, and -y*log(p_fg) with its factor.
        ce_bg = (1 - self.delta) * p.pow(self.gamma) * (-(1 - y) * torch.log(q))
        ce_fg = self.delta * self._fg_modulation(q) * (-y * torch.log(p))
        focal = (ce_bg + ce_fg).mean()
        return self.weight * self._region(mti_fg, mti_bg) + (1 - self.weight) * focal

    def _region_softmax(self, t: torch.Tensor) -> torch.Tensor:
        """The region term from t = 1 - mTI of every (sample, class), (B, C)."""
        raise NotImplementedError

    def _reference_softmax(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(x, 1).clamp(EPS, 1 - EPS)
        tp, fn, fp = spatial_sum(y * p), spatial_sum(y * (1 - p)), spatial_sum((1 - y) * p)
        region = self._region_softmax(1 - modified_tversky(tp, fn, fp, self.delta))
        nlp = -torch.log(p)  # of the clamped probability (the reference code's form)
        # The background's CE term always carries (1 - p_bg)^gamma, the classes' as in L_F.
        bg = (1 - self.delta) * y[:, :1] * (1 - p[:, :1]).pow(self.gamma) * nlp[:, :1]
        fg = self.delta * y[:, 1:] * self._fg_modulation(1 - p[:, 1:]) * nlp[:, 1:]
        focal = bg.sum(1) + fg.sum(1)
        return self.weight * region + (1 - self.weight) * focal.mean()


class SymmetricUnifiedFocalLoss(_UnifiedFocal):
    """Symmetric unified focal loss: ``L = weight*L_sFT + (1-weight)*L_sF``.

    ``L_sFT = mean_{b,c} (1 - mTI_bc)^(1-gamma)`` over samples b and classes c in {bg, fg};
    ``L_sF = mean_i [(1-delta)*(1-p_bg)^gamma*(-y_bg*log p_bg)
    + delta*(1-p_fg)^gamma*(-y_fg*log p_fg)]``. Defaults: ``weight=0.5``, ``delta=0.6``,
    ``gamma=0.5`` (mlyg ``sym_unified_focal_loss``). p clamped to [1e-7, 1-1e-7]. C channels:
    the mean over channels of each channel's loss.
    """

    kind = "symmetric_unified_focal"

    def _region(self, mti_fg: torch.Tensor, mti_bg: torch.Tensor) -> torch.Tensor:
        return focal_power(torch.cat([1 - mti_bg, 1 - mti_fg]), 1 - self.gamma).mean()

    def _fg_modulation(self, q: torch.Tensor) -> torch.Tensor | float:
        return q.pow(self.gamma)

    def _region_softmax(self, t: torch.Tensor) -> torch.Tensor:
        return focal_power(included(t, self.include_background), 1 - self.gamma).mean()


class AsymmetricUnifiedFocalLoss(_UnifiedFocal):
    """Asymmetric unified focal loss: ``L = weight*L_aFT + (1-weight)*L_aF``.

    ``L_aFT = mean_b [(1 - mTI_b,bg) + (1 - mTI_b,fg)^(1-gamma)] / 2`` (only the foreground is
    focal-enhanced); ``L_aF = mean_i [(1-delta)*(1-p_bg)^gamma*(-y_bg*log p_bg)
    + delta*(-y_fg*log p_fg)]`` (only the background is suppressed). Defaults: ``weight=0.5``,
    ``delta=0.6``, ``gamma=0.5`` (mlyg ``asym_unified_focal_loss``; MONAI uses delta=0.7 and
    a different class averaging). p clamped to [1e-7, 1-1e-7]. C channels: the mean over
    channels of each channel's loss.
    """

    kind = "asymmetric_unified_focal"

    def _region(self, mti_fg: torch.Tensor, mti_bg: torch.Tensor) -> torch.Tensor:
        return ((1 - mti_bg) + focal_power(1 - mti_fg, 1 - self.gamma)).mean() / 2

    def _fg_modulation(self, q: torch.Tensor) -> torch.Tensor | float:
        return 1.0

    def _region_softmax(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.cat([t[:, :1], focal_power(t[:, 1:], 1 - self.gamma)], 1)
        return included(t, self.include_background).mean()


class DicePPLoss(SegmentationLoss):
    """DSC++ loss: per sample b and class c in {bg, fg}, ``tp = sum y_c*p_c``,
    ``fn = sum (y_c*(1-p_c))^gamma``, ``fp = sum ((1-y_c)*p_c)^gamma`` (exponent per voxel,
    inside the sum), ``DSC++ = (2*tp + eps) / (2*tp + fn + fp + eps)``;
    ``L = mean_{b,c} (1 - DSC++)``.

    Defaults: ``gamma=2`` (all of mlyg/DicePlusPlus's notebooks), eps = 1e-7, p clamped to
    [eps, 1-eps] (the target is not clamped). Source: Yeung et al. 2023, "Calibrating the Dice
    loss to handle neural network overconfidence for biomedical image segmentation". C channels:
    the mean over channels of each channel's loss.
    """

    kind = "dice_pp"
    fused_param_names = ("gamma",)
    needs_hard_labels = True

    def __init__(self, gamma: float = 2.0, backend: str = "auto",
                 activation: str = "sigmoid", include_background: bool = True) -> None:
        super().__init__(backend, activation, include_background)
        self.gamma = check_range("gamma", gamma, 0.0, low_open=True)

    def _reference(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p, q = clamped_probabilities(x)
        fn = spatial_sum(_safe_pow(y * q, self.gamma))
        fp = spatial_sum(_safe_pow((1 - y) * p, self.gamma))
        tp_fg, tp_bg = spatial_sum(y * p), spatial_sum((1 - y) * q)

        def dscpp(tp, fn, fp):
            return (2 * tp + EPS) / (2 * tp + fn + fp + EPS)

        # Background: its FN term is the foreground's FP term and vice versa.
        return 1 - torch.cat([dscpp(tp_bg, fp, fn), dscpp(tp_fg, fn, fp)]).mean()

    def _reference_softmax(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(x, 1).clamp(EPS, 1 - EPS)
        tp = spatial_sum(y * p)
        fn = spatial_sum(_safe_pow(y * (1 - p), self.gamma))
        fp = spatial_sum(_safe_pow((1 - y) * p, self.gamma))
        dsc = (2 * tp + EPS) / (2 * tp + fn + fp + EPS)
        return (1 - included(dsc, self.include_background)).mean()
