"""The losses of the HyTver study on sigmoid or softmax logits, as specified in docs/losses.md.

``get_loss(name, **hyperparameters)`` or the classes directly; ``LOSSES`` maps names to classes.
Every loss takes ``backend="auto" | "fused" | "reference"`` and has a ``reference(logits,
target)`` method (plain PyTorch, voxel by voxel).

Inputs: logits ``(B, C, *spatial)`` with C >= 1, each channel an independent binary problem,
and a target of the same shape (for C == 1 also ``(B, *spatial)``). The loss of C channels is
the mean over channels of the single-channel loss of that channel, with the same
hyperparameters: region terms are computed per channel (over the batch, or per sample with
``per_sample=True``), voxel-mean terms are means over all B*C*voxels. C == 1 is the binary
case.

``activation="softmax"`` (every loss) treats the C >= 2 channels as mutually exclusive classes:
the target is a label map (integer, ``(B, 1, *spatial)``) or one-hot / soft ``(B, C,
*spatial)``, region terms are per class and averaged over the included classes
(``include_background``), voxel terms are categorical (class 0 the background).
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
