"""Input validation shared by the metrics: binary 3-D masks of one shape, a positive spacing."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Spacing = tuple[float, float, float]


def as_mask(a: object, name: str) -> np.ndarray:
    """Return ``a`` as a boolean 3-D array; ValueError (naming ``name``) unless it is binary 3-D.

    Accepted: bool arrays, or numeric arrays holding only 0 and 1. Anything else (probabilities,
    label maps) must be thresholded by the caller: silently using ``!= 0`` would turn a soft
    prediction into a full mask.
    """
    arr = np.asarray(a)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be a 3-D mask, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.number)):
        raise ValueError(f"{name} must be boolean or numeric, got dtype {arr.dtype}")
    mask = arr != 0
    if np.any(arr[mask] != 1):
        raise ValueError(f"{name} must be binary (only 0 and 1); threshold it first")
    return mask


def check_pair(pred: object, gt: object) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return ``(pred, gt)`` as boolean 3-D arrays of equal shape."""
    p, g = as_mask(pred, "pred"), as_mask(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt shapes differ: pred {p.shape} vs gt {g.shape}")
    return p, g


def check_spacing(spacing: Sequence[float] | np.ndarray) -> Spacing:
    """Validate a per-axis voxel size in mm, in the arrays' axis order (nibabel ``get_zooms()``)."""
    try:
        values = tuple(float(s) for s in spacing)
    except TypeError as exc:
        raise ValueError(f"spacing must be a sequence of 3 numbers, got {spacing!r}") from exc
    if len(values) != 3:
        raise ValueError(f"spacing must have 3 values (one per axis), got {len(values)}: {values}")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing values must be finite and > 0, got {values}")
    return values  # type: ignore[return-value]
