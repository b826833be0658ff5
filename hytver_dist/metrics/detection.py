"""Lesion-wise detection (MSSEG-2 / Anima ``animaSegPerfAnalyzer`` rules), false-positive lesions.

Lesions are connected components of more than 3 mm³; F1, sensitivity and PPV follow Anima's
overlap-table test with the challenge's thresholds. The algorithm and the empty-case policy:
docs/metrics.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from hytver_dist.metrics._checks import as_mask, check_pair, check_spacing

#: Anima defaults used by the MSSEG-2 challenge.
MIN_VOLUME_MM3 = 3.0
ALPHA, BETA, GAMMA = 0.10, 0.70, 0.65
_CONNECTIVITY_RANK = {6: 1, 18: 2, 26: 3}


class LesionF1(NamedTuple):
    """Lesion-wise detection scores and the counts behind them."""

    f1: float
    sensitivity: float  # SensL = tp_gt / n_gt
    ppv: float  # PPVL = tp_pred / n_pred
    n_gt: int  # reference lesions kept (> min volume)
    n_pred: int  # predicted lesions kept
    tp_gt: int  # reference lesions detected
    tp_pred: int  # predicted lesions that are true positives


def min_lesion_size_voxels(spacing: Sequence[float], min_volume_mm3: float = MIN_VOLUME_MM3) -> int:
    """Anima's minimum size: ``floor(v / (s0·s1·s2)) + 1`` voxels, i.e. strictly above ``v`` mm³.

    11 voxels on CoactSeg's 0.5 x 0.75 x 0.75 mm grid (= CoactSeg's hard-coded 11), 4 at 1 mm.
    """
    s0, s1, s2 = check_spacing(spacing)
    if not (math.isfinite(min_volume_mm3) and min_volume_mm3 >= 0):
        raise ValueError(f"min_volume_mm3 must be finite and >= 0, got {min_volume_mm3!r}")
    return math.floor(min_volume_mm3 / (s0 * s1 * s2)) + 1


def label_lesions(
    mask: object, connectivity: int = 6, min_size_voxels: int = 1
) -> tuple[np.ndarray, int]:
    """Connected components with ``connectivity`` in {6, 18, 26}, those < ``min_size_voxels``
    dropped, relabelled 1..n (scan order). Returns ``(labels, n)``."""
    m = as_mask(mask, "mask")
    if connectivity not in _CONNECTIVITY_RANK:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity!r}")
    structure = ndimage.generate_binary_structure(3, _CONNECTIVITY_RANK[connectivity])
    labels, n = ndimage.label(m, structure=structure)
    if n == 0 or min_size_voxels <= 1:
        return labels, int(n)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_size_voxels
    keep[0] = False
    lut = np.zeros(n + 1, dtype=labels.dtype)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=labels.dtype)
    return lut[labels], int(keep.sum())


def _count_detected(table: np.ndarray, alpha: float, beta: float, gamma: float) -> int:
    """Rows (reference lesions, row 0 = background) detected per Anima's test (docs/metrics.md)."""
    n_rows = table.shape[0]
    col_size = table.sum(axis=0)  # size of each tested lesion
    detected = 0
    for i in range(1, n_rows):
        row = table[i, 1:]
        tp = int(row.sum())
        if tp / (tp + int(table[i, 0])) <= alpha:
            continue
        order = np.argsort(-row, kind="stable")
        order = order[row[order] > 0] + 1  # zero-overlap lesions never count towards γ
        share, ok, k = 0.0, True, 0
        while share < gamma and k < min(n_rows, order.size):
            j = order[k]
            if table[0, j] / col_size[j] > beta:
                ok = False
                break
            share += table[i, j] / tp
            k += 1
        detected += ok
    return detected


def lesion_f1(
    pred: object,
    gt: object,
    spacing: Sequence[float],
    *,
    connectivity: int = 6,
    min_volume_mm3: float = MIN_VOLUME_MM3,
    min_size_voxels: int | None = None,
    alpha: float = ALPHA,
    beta: float = BETA,
    gamma: float = GAMMA,
) -> LesionF1:
    """Lesion-wise detection F1 with MSSEG-2/Anima rules (algorithm, NaN policy: docs/metrics.md).

    ``min_size_voxels`` overrides the size rule derived from ``min_volume_mm3`` and ``spacing``
    (CoactSeg-compatible: ``connectivity=26, min_size_voxels=11``).
    """
    p, g = check_pair(pred, gt)
    sp = check_spacing(spacing)
    min_size = min_size_voxels if min_size_voxels is not None else min_lesion_size_voxels(
        sp, min_volume_mm3
    )
    gl, n_gt = label_lesions(g, connectivity, min_size)
    pl, n_pred = label_lesions(p, connectivity, min_size)
    tp_gt = tp_pred = 0
    if n_gt and n_pred:
        flat = gl.ravel().astype(np.int64) * (n_pred + 1) + pl.ravel()
        table = np.bincount(flat, minlength=(n_gt + 1) * (n_pred + 1)).reshape(n_gt + 1, -1)
        tp_gt = _count_detected(table, alpha, beta, gamma)
        tp_pred = _count_detected(table.T, alpha, beta, gamma)
    nan = float("nan")
    sens = tp_gt / n_gt if n_gt else nan
    ppv = tp_pred / n_pred if n_pred else nan
    if not n_gt:
        f1 = nan
    elif not n_pred or sens + ppv == 0:
        f1 = 0.0
    else:
        f1 = 2 * sens * ppv / (sens + ppv)
    return LesionF1(f1, sens, ppv, n_gt, n_pred, tp_gt, tp_pred)


def false_positive_lesions(
    pred: object,
    spacing: Sequence[float],
    *,
    connectivity: int = 6,
    min_volume_mm3: float = MIN_VOLUME_MM3,
    min_size_voxels: int | None = None,
) -> tuple[int, float]:
    """``(count, volume_mm3)`` of predicted lesions, for cases WITHOUT new lesions (MSSEG-2 nFP,
    VFP). Counts and volume use the same components as :func:`lesion_f1` (> 3 mm³ by default),
    so a few stray voxels are neither counted nor added; all predicted voxels are in
    ``pred_volume_mm3`` of :func:`~hytver_dist.metrics.evaluate_case`."""
    sp = check_spacing(spacing)
    min_size = min_size_voxels if min_size_voxels is not None else min_lesion_size_voxels(
        sp, min_volume_mm3
    )
    labels, n = label_lesions(pred, connectivity, min_size)
    return n, float(np.count_nonzero(labels)) * (sp[0] * sp[1] * sp[2])
