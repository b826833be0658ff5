"""The losses of the HyTver study (binary, sigmoid logits), exactly as ../shared/spec/losses.md.

``get_loss(name, **hyperparameters)`` or the classes directly; ``LOSSES`` maps names to classes.
Every loss takes ``backend="auto" | "fused" | "reference"``.
"""

from ._base import ExponentLoss, SigmoidLoss, SumLoss
from .compound import ComboLoss, DiceCELoss, FocalDiceLoss, HyTverLoss
from .cross_entropy import CELoss, FocalLoss, WeightedCELoss
from .region import DiceLoss, FocalTverskyLoss, LogCoshDiceLoss, TverskyLoss
from .registry import LOSSES, get_loss
from .unified_focal import AsymmetricUnifiedFocalLoss, DicePPLoss, SymmetricUnifiedFocalLoss

__all__ = [
    "LOSSES", "get_loss", "SigmoidLoss", "SumLoss", "ExponentLoss",
    "DiceLoss", "TverskyLoss", "FocalTverskyLoss", "LogCoshDiceLoss",
    "CELoss", "WeightedCELoss", "FocalLoss",
    "DiceCELoss", "FocalDiceLoss", "ComboLoss", "HyTverLoss",
    "SymmetricUnifiedFocalLoss", "AsymmetricUnifiedFocalLoss", "DicePPLoss",
]
