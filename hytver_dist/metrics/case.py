"""All per-case metrics in one flat dict (one row of a per-patient table)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from hytver_dist.metrics import detection, overlap, surface
from hytver_dist.metrics._checks import check_pair, check_spacing

#: Keys of :func:`evaluate_case`, in order (every case has all of them; undefined ones are NaN).
CASE_METRICS: tuple[str, ...] = (
    "dice", "jaccard", "precision", "recall",
    "hd", "hd95", "asd", "assd",
    "hd_vox", "hd95_vox", "asd_vox", "assd_vox",
    "lesion_f1", "lesion_sensitivity", "lesion_ppv",
    "n_gt_lesions", "n_pred_lesions", "tp_gt_lesions", "tp_pred_lesions",
    "lesion_f1_26conn", "lesion_sensitivity_26conn", "lesion_ppv_26conn",
    "gt_volume_mm3", "pred_volume_mm3", "gt_empty",
    "fp_lesions", "fp_volume_mm3",
)

#: CoactSeg's lesion F1: ``skimage.measure.label`` (26-connectivity), components < 11 voxels out,
#: on its 0.5 x 0.75 x 0.75 mm grid, i.e. lesions of at least 11 * 0.28125 = 3.09375 mm^3.
COACTSEG_MIN_SIZE_VOXELS = 11
COACTSEG_MIN_VOLUME_MM3 = COACTSEG_MIN_SIZE_VOXELS * 0.5 * 0.75 * 0.75


def coactseg_min_size_voxels(spacing: Sequence[float]) -> int:
    """CoactSeg's minimum lesion size in voxels of a grid with ``spacing`` (11 on its own grid)."""
    return max(1, math.ceil(COACTSEG_MIN_VOLUME_MM3 / (spacing[0] * spacing[1] * spacing[2])
                            - 1e-9))


def evaluate_case(
    pred: object,
    gt: object,
    spacing: Sequence[float],
    *,
    empty: surface.EmptyPolicy = "nan",
    voxel_units: bool = True,
) -> dict[str, float]:
    """Every metric of one case, as floats (keys: :data:`CASE_METRICS`).

    * ``dice``, ``jaccard``, ``precision``, ``recall``: voxel-wise (:mod:`.overlap`).
    * ``hd``, ``hd95`` (pooled), ``asd`` (directed pred→gt), ``assd`` (pooled): mm, with
      ``spacing`` (:mod:`.surface`); ``*_vox``: the same with unit spacing, i.e. in voxels of
      the grid given: the paper's Table I units (its "HD" = ``hd95_vox``, "ASD" = ``asd_vox``)
      only when that grid is 0.5 x 0.75 x 0.75 mm (``voxel_units=False``: NaN, skipped).
      Empty masks follow ``empty`` (default NaN).
    * ``lesion_f1``, ``lesion_sensitivity``, ``lesion_ppv``, lesion counts: MSSEG-2/Anima detection
      (6-connectivity, > 3 mm³); ``*_26conn``: CoactSeg-compatible (26-connectivity, lesions of
      >= 3.09 mm³ = 11 voxels of its grid), the paper's "F1" (:mod:`.detection`).
    * ``gt_volume_mm3``, ``pred_volume_mm3``: all foreground voxels; ``gt_empty``: 1.0 or 0.0.
    * ``fp_lesions``, ``fp_volume_mm3``: predicted lesions (> 3 mm³, 6-connectivity) and their
      volume, ONLY for empty-GT cases (MSSEG-2's nFP/VFP); NaN when the case has new lesions.
    """
    p, g = check_pair(pred, gt)
    sp = check_spacing(spacing)
    voxel_mm3 = sp[0] * sp[1] * sp[2]
    gt_empty = not g.any()
    out: dict[str, float] = {
        "dice": overlap.dice(p, g),
        "jaccard": overlap.jaccard(p, g),
        "precision": overlap.precision(p, g),
        "recall": overlap.recall(p, g),
    }
    out.update(surface.summarize(p, g, sp, empty=empty))
    if voxel_units:
        vox = surface.summarize(p, g, (1.0, 1.0, 1.0), empty=empty)
    else:  # the caller computes them on another grid (hytver_dist.evaluate)
        vox = dict.fromkeys(("hd", "hd95", "asd", "assd"), float("nan"))
    out.update({f"{k}_vox": v for k, v in vox.items()})

    les = detection.lesion_f1(p, g, sp)
    out.update(
        lesion_f1=les.f1, lesion_sensitivity=les.sensitivity, lesion_ppv=les.ppv,
        n_gt_lesions=float(les.n_gt), n_pred_lesions=float(les.n_pred),
        tp_gt_lesions=float(les.tp_gt), tp_pred_lesions=float(les.tp_pred),
    )
    les26 = detection.lesion_f1(p, g, sp, connectivity=26,
                                min_size_voxels=coactseg_min_size_voxels(sp))
    out.update(
        lesion_f1_26conn=les26.f1, lesion_sensitivity_26conn=les26.sensitivity,
        lesion_ppv_26conn=les26.ppv,
    )

    out["gt_volume_mm3"] = float(np.count_nonzero(g)) * voxel_mm3
    out["pred_volume_mm3"] = float(np.count_nonzero(p)) * voxel_mm3
    out["gt_empty"] = float(gt_empty)
    if gt_empty:
        # Same components as the detection above: n_pred_lesions are all false positives.
        n_fp, vol_fp = detection.false_positive_lesions(p, sp)
        out["fp_lesions"], out["fp_volume_mm3"] = float(n_fp), vol_fp
    else:
        out["fp_lesions"] = out["fp_volume_mm3"] = float("nan")
    return {k: out[k] for k in CASE_METRICS}
