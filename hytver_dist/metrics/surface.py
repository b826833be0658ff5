"""Surface distances in mm between binary 3-D masks: HD, HD95, ASD, ASSD (medpy's conventions,
which CoactSeg and so the paper's Table I used).

``spacing`` (mm per array axis) is required; ``empty=`` chooses NaN, the grid diagonal or an
error for empty masks. Definitions and the empty-mask policy: docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np
from scipy import ndimage

from hytver_dist.metrics._checks import check_pair, check_spacing

EmptyPolicy = Literal["nan", "diagonal", "raise"]
_POLICIES = ("nan", "diagonal", "raise")


class SurfaceDistances(NamedTuple):
    """Directed surface distances in mm: ``pred_to_gt`` = D(P→G), ``gt_to_pred`` = D(G→P)."""

    pred_to_gt: np.ndarray
    gt_to_pred: np.ndarray


def _surface(mask: np.ndarray, connectivity: int) -> np.ndarray:
    structure = ndimage.generate_binary_structure(3, connectivity)
    return mask & ~ndimage.binary_erosion(mask, structure=structure)


def surface_distances(
    pred: object,
    gt: object,
    spacing: Sequence[float],
    connectivity: int = 1,
) -> SurfaceDistances:
    """Both directed surface-distance sets in mm; empty arrays when either mask is empty."""
    p, g = check_pair(pred, gt)
    sp = check_spacing(spacing)
    if connectivity not in (1, 2, 3):
        raise ValueError(f"connectivity must be 1, 2 or 3, got {connectivity!r}")
    if not p.any() or not g.any():
        return SurfaceDistances(np.empty(0), np.empty(0))
    # Crop to the union's bounding box plus one background voxel (clipped at the array edge):
    # erosion and the EDT give the same values there, for a fraction of the cost on lesions.
    coords = np.argwhere(p | g)
    lo = np.maximum(coords.min(axis=0) - 1, 0)
    hi = np.minimum(coords.max(axis=0) + 2, p.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    ps, gs = _surface(p[box], connectivity), _surface(g[box], connectivity)
    to_g = ndimage.distance_transform_edt(~gs, sampling=sp)
    to_p = ndimage.distance_transform_edt(~ps, sampling=sp)
    return SurfaceDistances(np.asarray(to_g[ps]), np.asarray(to_p[gs]))


def _empty_value(
    pred: object, gt: object, spacing: Sequence[float], empty: EmptyPolicy, d: SurfaceDistances
) -> float | None:
    """The policy value when a mask is empty, else None (distances are defined)."""
    if empty not in _POLICIES:
        raise ValueError(f"empty must be one of {_POLICIES}, got {empty!r}")
    if d.pred_to_gt.size and d.gt_to_pred.size:
        return None
    p_any, g_any = bool(np.any(pred)), bool(np.any(gt))
    if empty == "raise":
        raise ValueError(
            f"surface distance undefined: pred empty={not p_any}, gt empty={not g_any}"
        )
    if empty == "nan":
        return float("nan")
    if not p_any and not g_any:
        return 0.0
    shape = np.asarray(np.shape(pred), dtype=float)
    return float(np.linalg.norm(shape * np.asarray(check_spacing(spacing))))


def hd(
    pred: object, gt: object, spacing: Sequence[float], *, connectivity: int = 1,
    empty: EmptyPolicy = "nan",
) -> float:
    """Hausdorff distance (mm) = max(max D(P→G), max D(G→P)); empty policy: docs/metrics.md."""
    d = surface_distances(pred, gt, spacing, connectivity)
    v = _empty_value(pred, gt, spacing, empty, d)
    return v if v is not None else float(max(d.pred_to_gt.max(), d.gt_to_pred.max()))


def hd95(
    pred: object, gt: object, spacing: Sequence[float], *, pooled: bool = True,
    connectivity: int = 1, empty: EmptyPolicy = "nan",
) -> float:
    """95th-percentile Hausdorff distance (mm).

    ``pooled=True``: percentile of D(P→G) ∪ D(G→P) (medpy, the paper's "HD");
    ``pooled=False``: max of the two directed percentiles (MONAI). Empty policy: docs/metrics.md.
    """
    d = surface_distances(pred, gt, spacing, connectivity)
    v = _empty_value(pred, gt, spacing, empty, d)
    if v is not None:
        return v
    if pooled:
        return float(np.percentile(np.concatenate(d), 95))
    return float(max(np.percentile(d.pred_to_gt, 95), np.percentile(d.gt_to_pred, 95)))


def asd(
    pred: object, gt: object, spacing: Sequence[float], *, connectivity: int = 1,
    empty: EmptyPolicy = "nan",
) -> float:
    """Average surface distance (mm), directed P→G: mean D(P→G). Swap arguments for G→P."""
    d = surface_distances(pred, gt, spacing, connectivity)
    v = _empty_value(pred, gt, spacing, empty, d)
    return v if v is not None else float(d.pred_to_gt.mean())


def assd(
    pred: object, gt: object, spacing: Sequence[float], *, connectivity: int = 1,
    empty: EmptyPolicy = "nan",
) -> float:
    """Average symmetric surface distance (mm): mean of the pooled D(P→G) ∪ D(G→P)."""
    d = surface_distances(pred, gt, spacing, connectivity)
    v = _empty_value(pred, gt, spacing, empty, d)
    return v if v is not None else float(np.concatenate(d).mean())


def summarize(
    pred: object, gt: object, spacing: Sequence[float], *, connectivity: int = 1,
    empty: EmptyPolicy = "nan",
) -> dict[str, float]:
    """``{"hd", "hd95", "asd", "assd"}`` from one pass (one pair of distance transforms)."""
    d = surface_distances(pred, gt, spacing, connectivity)
    v = _empty_value(pred, gt, spacing, empty, d)
    if v is not None:
        return dict.fromkeys(("hd", "hd95", "asd", "assd"), v)
    both = np.concatenate(d)
    return {
        "hd": float(both.max()),
        "hd95": float(np.percentile(both, 95)),
        "asd": float(d.pred_to_gt.mean()),
        "assd": float(both.mean()),
    }
