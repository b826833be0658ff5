"""Registry of the study's losses by name, and ``get_loss``."""

from __future__ import annotations

from ._base import SegmentationLoss
from .compound import ComboLoss, DiceCELoss, FocalDiceLoss, HyTverLoss
from .cross_entropy import CELoss, FocalLoss, WeightedCELoss
from .region import DiceLoss, FocalTverskyLoss, LogCoshDiceLoss, TverskyLoss
from .unified_focal import AsymmetricUnifiedFocalLoss, DicePPLoss, SymmetricUnifiedFocalLoss

LOSSES: dict[str, type[SegmentationLoss]] = {
    "dice": DiceLoss,
    "tversky": TverskyLoss,
    "focal_tversky": FocalTverskyLoss,
    "logcosh_dice": LogCoshDiceLoss,
    "ce": CELoss,
    "weighted_ce": WeightedCELoss,
    "focal": FocalLoss,
    "dice_ce": DiceCELoss,
    "focal_dice": FocalDiceLoss,
    "combo": ComboLoss,
    "hytver": HyTverLoss,
    "symmetric_unified_focal": SymmetricUnifiedFocalLoss,
    "asymmetric_unified_focal": AsymmetricUnifiedFocalLoss,
    "dice_pp": DicePPLoss,
}


def get_loss(name: str, **kwargs) -> SegmentationLoss:
    """Build the loss registered as ``name`` with keyword hyperparameters.

    ``get_loss("hytver", alpha=0.7, beta=0.7, gamma=0.5, backend="auto")``; every loss also
    takes ``activation="sigmoid" | "softmax"`` and ``include_background`` (softmax only).
    Unknown names or keywords raise ValueError listing the valid ones; out-of-range values
    raise ValueError.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(sorted(LOSSES))}")
    cls = LOSSES[name]
    valid = (*cls.hyperparameters(), *cls.INPUT_OPTIONS)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {unknown} for loss {name!r}; "
                         f"valid: {', '.join(valid)}")
    return cls(**kwargs)
