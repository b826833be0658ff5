"""The losses of the HyTver study on sigmoid or softmax logits.

``get_loss(name, **hyperparameters)`` or the classes directly; ``LOSSES`` maps names to classes.
Every loss takes ``backend="auto" | "fused" | "reference"`` and has a ``reference(logits,
target)`` method (plain PyTorch). Inputs, channels, classes and formulas: docs/losses.md.
"""

from ._base import SegmentationLoss, SigmoidLoss
from .compound import ComboLoss, DiceCELoss, FocalDiceLoss, HyTverLoss
from .cross_entropy import CELoss, FocalLoss, WeightedCELoss
from .region import DiceLoss, FocalTverskyLoss, LogCoshDiceLoss, TverskyLoss
from .registry import LOSSES, get_loss
from .unified_focal import AsymmetricUnifiedFocalLoss, DicePPLoss, SymmetricUnifiedFocalLoss

__all__ = [
    "LOSSES", "get_loss", "SegmentationLoss", "SigmoidLoss",
    "DiceLoss", "TverskyLoss", "FocalTverskyLoss", "LogCoshDiceLoss",
    "CELoss", "WeightedCELoss", "FocalLoss",
    "DiceCELoss", "FocalDiceLoss", "ComboLoss", "HyTverLoss",
    "SymmetricUnifiedFocalLoss", "AsymmetricUnifiedFocalLoss", "DicePPLoss",
]
