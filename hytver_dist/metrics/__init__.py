"""Segmentation metrics with explicit empty-mask policies (distances in mm from ``spacing``).

Overlap (:mod:`.overlap`), surface distances (:mod:`.surface`), lesion-wise detection per the
MSSEG-2 challenge (:mod:`.detection`) and :func:`evaluate_case` (:mod:`.case`). Inputs are
boolean (or 0/1) 3-D arrays of one shape; ``spacing`` is the voxel size in mm per array axis.
medpy and MONAI are test oracles only, not dependencies.
"""

from .._extras import require_extra

require_extra("train", "scipy")


from hytver_dist.metrics.case import CASE_METRICS, COACTSEG_MIN_SIZE_VOXELS, evaluate_case
from hytver_dist.metrics.detection import (
    LesionF1,
    false_positive_lesions,
    label_lesions,
    lesion_f1,
    min_lesion_size_voxels,
)
from hytver_dist.metrics.overlap import dice, jaccard, precision, recall
from hytver_dist.metrics.surface import SurfaceDistances, asd, assd, hd, hd95, surface_distances

__all__ = [
    "CASE_METRICS",
    "COACTSEG_MIN_SIZE_VOXELS",
    "LesionF1",
    "SurfaceDistances",
    "asd",
    "assd",
    "dice",
    "evaluate_case",
    "false_positive_lesions",
    "hd",
    "hd95",
    "jaccard",
    "label_lesions",
    "lesion_f1",
    "min_lesion_size_voxels",
    "precision",
    "recall",
    "surface_distances",
]
