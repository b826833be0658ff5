"""Voxel-wise overlap metrics on binary 3-D masks: Dice, Jaccard, precision, recall.

A ratio whose denominator is 0 is NaN (undefined), never a fake 0 or 1. Formulas and the
empty-mask table: docs/metrics.md.
"""

from __future__ import annotations

import numpy as np

from hytver_dist.metrics._checks import check_pair


def _counts(pred: object, gt: object) -> tuple[int, int, int]:
    p, g = check_pair(pred, gt)
    return int(np.count_nonzero(p & g)), int(np.count_nonzero(p)), int(np.count_nonzero(g))


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


def dice(pred: object, gt: object) -> float:
    """Dice = 2|P∩G| / (|P| + |G|); 0 if exactly one mask is empty, NaN if both are."""
    tp, n_p, n_g = _counts(pred, gt)
    return _ratio(2 * tp, n_p + n_g)


def jaccard(pred: object, gt: object) -> float:
    """Jaccard = |P∩G| / |P∪G|; 0 if exactly one mask is empty, NaN if both are."""
    tp, n_p, n_g = _counts(pred, gt)
    return _ratio(tp, n_p + n_g - tp)


def precision(pred: object, gt: object) -> float:
    """Precision = |P∩G| / |P|; NaN if the prediction is empty (0 if only G is empty)."""
    tp, n_p, _ = _counts(pred, gt)
    return _ratio(tp, n_p)


def recall(pred: object, gt: object) -> float:
    """Recall (sensitivity) = |P∩G| / |G|; NaN if the ground truth is empty (0 if only P is)."""
    tp, _, n_g = _counts(pred, gt)
    return _ratio(tp, n_g)
