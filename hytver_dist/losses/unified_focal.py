"""Unified focal losses (Yeung et al. 2022) and DSC++ (Yeung et al. 2023), two-class form.

As in the mlyg reference code: p_fg = p, p_bg = 1 - p, y_fg = y, y_bg = 1 - y, with p clamped
to [eps, 1 - eps] (eps = 1e-7) before every use, and the Tversky-like indices computed per
sample and per class, background included.
"""

from __future__ import annotations

import torch

from . import _scalar as sc
from ._base import ExponentLoss
from ._inputs import check_range
from ._sums import C1, EP, EQ, F0, F1, FN, FP, TP

EPS = 1e-7


def _spatial_sum(t: torch.Tensor) -> torch.Tensor:
    return t.sum(tuple(range(1, t.dim())))


def _safe_pow(base: torch.Tensor, exponent: float) -> torch.Tensor:
    """base**exponent with a zero gradient (not NaN) at base == 0 for exponents below 1."""
    positive = base > 0
    return torch.where(positive, torch.where(positive, base, 1).pow(exponent), 0)


def clamped_probabilities(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """p~ = clamp(p, eps, 1-eps) and q~ = 1 - p~, the latter as clamp(sigmoid(-x), eps, 1-eps):
    equal in exact arithmetic, but 1 - p~ in float32 rounds q~ = 1e-7 up to 1.19e-7."""
    return torch.sigmoid(x).clamp(EPS, 1 - EPS), torch.sigmoid(-x).clamp(EPS, 1 - EPS)


def _focal_power(base: torch.Tensor, exponent: float) -> torch.Tensor:
    """base**exponent with base kept off 0: at delta = 0 or 1 a class absent from a sample gives
    mTI = 1 exactly, where the power's infinite derivative would turn the gradient into NaN."""
    return base.clamp_min(torch.finfo(base.dtype).tiny).pow(exponent)


def modified_tversky(tp: torch.Tensor, fn: torch.Tensor, fp: torch.Tensor,
                     delta: float) -> torch.Tensor:
    """mTI = (TP + eps) / (TP + delta*FN + (1-delta)*FP + eps)."""
    return (tp + EPS) / (tp + delta * fn + (1 - delta) * fp + EPS)


def _class_sums(x: torch.Tensor, y: torch.Tensor):
    """Clamped p, q = 1 - p and the per-sample (TP, FN, FP) of the foreground and background."""
    p, q = clamped_probabilities(x)
    tp_fg, fn_fg, fp_fg = _spatial_sum(y * p), _spatial_sum(y * q), _spatial_sum((1 - y) * p)
    tp_bg = _spatial_sum((1 - y) * q)
    # The background's FN is the foreground's FP and vice versa.
    return p, q, (tp_fg, fn_fg, fp_fg), (tp_bg, fp_fg, fn_fg)


def _class_sums_from_stats(stats: torch.Tensor, voxels_per_sample: int):
    tp, fn, fp = stats[:, TP], stats[:, FN], stats[:, FP]
    tp_bg = voxels_per_sample - tp - fn - fp  # sum (1-y)(1-p) = sum (1-y) - sum (1-y) p
    return (tp, fn, fp), (tp_bg, fp, fn)


class _UnifiedFocal(ExponentLoss):
    clamp_eps = EPS

    def __init__(self, weight: float = 0.5, delta: float = 0.6, gamma: float = 0.5,
                 backend: str = "auto") -> None:
        super().__init__(backend)
        self.weight = check_range("weight", weight, 0.0, 1.0)
        self.delta = check_range("delta", delta, 0.0, 1.0)
        self.gamma = check_range("gamma", gamma, 0.0, 1.0)

    def voxel_gamma(self) -> float:
        return self.gamma

    def _region(self, mti_fg: torch.Tensor, mti_bg: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _focal_sums(self, f1: torch.Tensor, f0: torch.Tensor, c1: torch.Tensor) -> torch.Tensor:
        """Sum over voxels of the focal term, given its pieces' sums."""
        raise NotImplementedError

    def reference(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p, q, fg, bg = _class_sums(x, y)
        mti_fg = modified_tversky(*fg, self.delta)
        mti_bg = modified_tversky(*bg, self.delta)
        # -y*log(p_fg) and -(1-y)*log(p_bg) with the modulating factors (1-p_c)^gamma.
        ce_fg, ce_bg = -y * torch.log(p), -(1 - y) * torch.log(q)
        f1 = (q.pow(self.gamma) * ce_fg).sum()
        f0 = (p.pow(self.gamma) * ce_bg).sum()
        focal = self._focal_sums(f1, f0, ce_fg.sum()) / x.numel()
        return self.weight * self._region(mti_fg, mti_bg) + (1 - self.weight) * focal

    def from_exp_stats(self, stats: torch.Tensor, n_voxels: int) -> torch.Tensor:
        fg, bg = _class_sums_from_stats(stats, n_voxels // stats.shape[0])
        mti_fg = modified_tversky(*fg, self.delta)
        mti_bg = modified_tversky(*bg, self.delta)
        focal = self._focal_sums(stats[:, F1].sum(), stats[:, F0].sum(),
                                 stats[:, C1].sum()) / n_voxels
        return self.weight * self._region(mti_fg, mti_bg) + (1 - self.weight) * focal

    def _mti(self, t: float, fn: float, fp: float) -> tuple[float, float, float, float]:
        return sc.ratio(t, fn, fp, self.delta, 1 - self.delta, EPS)

    def scalar(self, rows, grad, n_voxels, tiny) -> float:
        focal = {k: (1 - self.weight) * w / n_voxels for k, w in self._focal_weights().items()}
        region = sc.class_indices(rows, grad, n_voxels // len(rows), self._mti,
                                  self._shapes(tiny), self.weight)
        return region + sc.linear(rows, grad, focal)

    def _shapes(self, tiny: float) -> tuple[sc.Shape, sc.Shape]:
        """(bg, fg) shapes of 1 - mTI in the region term (matching ``_region``)."""
        raise NotImplementedError

    def _focal_weights(self) -> dict[int, float]:
        """Column weights of ``_focal_sums`` (matching it)."""
        raise NotImplementedError


class SymmetricUnifiedFocalLoss(_UnifiedFocal):
    """Symmetric unified focal loss: ``L = weight*L_sFT + (1-weight)*L_sF``.

    ``L_sFT = mean_{b,c} (1 - mTI_bc)^(1-gamma)`` over samples b and classes c in {bg, fg};
    ``L_sF = mean_i [(1-delta)*(1-p_bg)^gamma*(-y_bg*log p_bg)
    + delta*(1-p_fg)^gamma*(-y_fg*log p_fg)]``. Defaults: ``weight=0.5``, ``delta=0.6``,
    ``gamma=0.5`` (mlyg ``sym_unified_focal_loss``). p clamped to [1e-7, 1-1e-7].
    """

    def _region(self, mti_fg: torch.Tensor, mti_bg: torch.Tensor) -> torch.Tensor:
        return _focal_power(torch.cat([1 - mti_bg, 1 - mti_fg]), 1 - self.gamma).mean()

    def _focal_sums(self, f1: torch.Tensor, f0: torch.Tensor, c1: torch.Tensor) -> torch.Tensor:
        return (1 - self.delta) * f0 + self.delta * f1

    def _shapes(self, tiny: float) -> tuple[sc.Shape, sc.Shape]:
        return sc.power(1 - self.gamma, tiny), sc.power(1 - self.gamma, tiny)

    def _focal_weights(self) -> dict[int, float]:
        return {F0: 1 - self.delta, F1: self.delta}


class AsymmetricUnifiedFocalLoss(_UnifiedFocal):
    """Asymmetric unified focal loss: ``L = weight*L_aFT + (1-weight)*L_aF``.

    ``L_aFT = mean_b [(1 - mTI_b,bg) + (1 - mTI_b,fg)^(1-gamma)] / 2`` (only the foreground is
    focal-enhanced); ``L_aF = mean_i [(1-delta)*(1-p_bg)^gamma*(-y_bg*log p_bg)
    + delta*(-y_fg*log p_fg)]`` (only the background is suppressed). Defaults: ``weight=0.5``,
    ``delta=0.6``, ``gamma=0.5`` (mlyg ``asym_unified_focal_loss``; MONAI uses delta=0.7 and
    a different class averaging). p clamped to [1e-7, 1-1e-7].
    """

    def _region(self, mti_fg: torch.Tensor, mti_bg: torch.Tensor) -> torch.Tensor:
        return ((1 - mti_bg) + _focal_power(1 - mti_fg, 1 - self.gamma)).mean() / 2

    def _focal_sums(self, f1: torch.Tensor, f0: torch.Tensor, c1: torch.Tensor) -> torch.Tensor:
        return (1 - self.delta) * f0 + self.delta * c1

    def _shapes(self, tiny: float) -> tuple[sc.Shape, sc.Shape]:
        return sc.identity, sc.power(1 - self.gamma, tiny)

    def _focal_weights(self) -> dict[int, float]:
        return {F0: 1 - self.delta, C1: self.delta}


class DicePPLoss(ExponentLoss):
    """DSC++ loss: per sample b and class c in {bg, fg}, ``tp = sum y_c*p_c``,
    ``fn = sum (y_c*(1-p_c))^gamma``, ``fp = sum ((1-y_c)*p_c)^gamma`` (exponent per voxel,
    inside the sum), ``DSC++ = (2*tp + eps) / (2*tp + fn + fp + eps)``;
    ``L = mean_{b,c} (1 - DSC++)``.

    Defaults: ``gamma=2`` (all of mlyg/DicePlusPlus's notebooks), eps = 1e-7, p clamped to
    [eps, 1-eps] (the target is not clamped). Source: Yeung et al. 2023, "Calibrating the Dice
    loss to handle neural network overconfidence for biomedical image segmentation".
    """

    clamp_eps = EPS
    uses_logs = False

    def __init__(self, gamma: float = 2.0, backend: str = "auto") -> None:
        super().__init__(backend)
        self.gamma = check_range("gamma", gamma, 0.0, low_open=True)

    def voxel_gamma(self) -> float:
        return self.gamma

    @staticmethod
    def _loss_from(tp_fg, fn_fg, fp_fg, tp_bg) -> torch.Tensor:
        def dscpp(tp, fn, fp):
            return (2 * tp + EPS) / (2 * tp + fn + fp + EPS)

        # Background: its FN term is the foreground's FP term and vice versa.
        return 1 - torch.cat([dscpp(tp_bg, fp_fg, fn_fg), dscpp(tp_fg, fn_fg, fp_fg)]).mean()

    def reference(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p, q = clamped_probabilities(x)
        fn = _spatial_sum(_safe_pow(y * q, self.gamma))
        fp = _spatial_sum(_safe_pow((1 - y) * p, self.gamma))
        return self._loss_from(_spatial_sum(y * p), fn, fp, _spatial_sum((1 - y) * q))

    def from_exp_stats(self, stats: torch.Tensor, n_voxels: int) -> torch.Tensor:
        (tp, _, _), (tp_bg, _, _) = _class_sums_from_stats(stats, n_voxels // stats.shape[0])
        # Hard labels: (y*q)^gamma = y*q^gamma (EQ), ((1-y)*p)^gamma = (1-y)*p^gamma (EP).
        return self._loss_from(tp, stats[:, EQ], stats[:, EP], tp_bg)

    @staticmethod
    def _dscpp(t: float, fn: float, fp: float) -> tuple[float, float, float, float]:
        return sc.ratio(t, fn, fp, 1.0, 1.0, EPS, k=2.0)

    def scalar(self, rows, grad, n_voxels, tiny) -> float:
        # Hard labels: per-voxel powers are the EQ / EP sums (see from_exp_stats).
        return sc.class_indices(rows, grad, n_voxels // len(rows), self._dscpp,
                                (sc.identity, sc.identity), 1.0, fn_col=EQ, fp_col=EP)
