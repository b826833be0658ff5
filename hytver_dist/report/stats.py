"""Small-sample statistics of the report: a two-level percentile bootstrap over seeds and cases,
and the distance penalty for empty predictions. Why a bootstrap, and how the report uses both:
docs/report.md (Statistics).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

#: Resamples per interval; the percentile bounds are stable to about 0.01 Dice at 2000.
N_BOOT = 2000
DISTANCES = ("hd", "hd95", "asd", "assd")
DISTANCES_VOX = ("hd95_vox", "asd_vox")
#: Column that names the penalty value of each distance (written by ``evaluate_model``).
PENALTY_COLUMN = {**{d: "diagonal_mm" for d in DISTANCES},
                  **{d: "diagonal_vox" for d in DISTANCES_VOX}}


def seed_case_matrix(frame: pd.DataFrame, metric: str) -> np.ndarray:
    """Values of ``metric`` as a (seeds x cases) matrix, NaN where a pair is missing."""
    wide = frame.pivot_table(index="seed", columns="case", values=metric, aggfunc="mean",
                             dropna=False)
    return wide.to_numpy(dtype=float)


def _seed_means_then_mean(m: np.ndarray) -> np.ndarray:
    """Mean over seeds of the per-seed mean over cases, along the last two axes."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: NaN is the answer
        return np.nanmean(np.nanmean(m, axis=-1), axis=-1)


def bootstrap_interval(values: np.ndarray, confidence: float = 0.95, n_boot: int = N_BOOT,
                       seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean over seeds of the per-seed mean over cases, and its
    percentile bootstrap interval, resampling seeds (rows) and cases (columns) independently
    with replacement. NaN cells are skipped; NaN bounds when fewer than two cases have values.
    One seed gives a bootstrap over cases only."""
    m = np.asarray(values, dtype=float)
    if m.ndim != 2:
        raise ValueError(f"expected a (seeds x cases) matrix; got shape {m.shape}")
    m = m[~np.isnan(m).all(axis=1)][:, ~np.isnan(m).all(axis=0)]
    if m.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(_seed_means_then_mean(m))
    if m.shape[1] < 2:
        return mean, math.nan, math.nan
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, m.shape[0], size=(n_boot, m.shape[0]))
    cols = rng.integers(0, m.shape[1], size=(n_boot, m.shape[1]))
    boot = _seed_means_then_mean(m[rows[:, :, None], cols[:, None, :]])
    boot = boot[~np.isnan(boot)]
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(boot, [alpha, 1.0 - alpha])
    return mean, float(lo), float(hi)


def penalize_empty_predictions(cases: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Distances of an empty prediction on a case with new lesions, which are undefined (NaN),
    set to the image diagonal (``diagonal_mm``, or ``diagonal_vox`` for the voxel columns):
    the largest distance two points of the image can have, so a missed case scores worse than
    any prediction. Returns (the filled copy, a boolean Series marking the penalized rows).
    Rows without a diagonal column stay NaN (and are not marked)."""
    out = cases.copy()
    empty = out["has_lesions"].astype(bool) & (pd.to_numeric(out["pred_volume_mm3"],
                                                              errors="coerce") == 0)
    marked = pd.Series(False, index=out.index)
    for metric, column in PENALTY_COLUMN.items():
        if metric not in out.columns or column not in out.columns:
            continue
        fill = empty & out[metric].isna() & out[column].notna()
        out.loc[fill, metric] = out.loc[fill, column]
        marked |= fill
    return out, marked


__all__ = ["DISTANCES", "N_BOOT", "PENALTY_COLUMN", "bootstrap_interval",
           "penalize_empty_predictions", "seed_case_matrix"]
