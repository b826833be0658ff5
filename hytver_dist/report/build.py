"""Sweep report: Table I with confidence intervals, Table II (CV), paired tests against HyTver,
box plots like the paper's Figures 3-5, patients without new lesions, and failed trials.

Usage: ``python -m hytver_dist.report RESULTS_DIR [--out DIR]`` or :func:`build_report`.
Input contract (``trials/<trial>/cases.csv``, ``status.json``), outputs and statistics:
docs/report.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from .stats import (
    N_BOOT,
    PENALTY_COLUMN,
    bootstrap_interval,
    penalize_empty_predictions,
    seed_case_matrix,
)

SWEEP_FACTS_FILE = "sweep.json"
"""In a sweep's results directory: wall times and trial slots, which the report turns into
the utilisation line (written by the sweep)."""
CURVES_FILE = "curves.csv"
"""Beside each trial's ``cases.csv``: its validation history (trial, loss, params, seed,
iteration, train_loss, val_dice), which the report draws as learning curves."""

ID_COLUMNS = ["trial", "loss", "seed", "params", "case", "has_lesions"]
METRICS = [
    "dice", "jaccard", "precision", "recall", "hd", "hd95", "asd", "assd", "hd95_vox",
    "asd_vox", "lesion_f1", "lesion_sensitivity", "lesion_ppv",
]
COUNTS = [
    "n_gt_lesions", "n_pred_lesions", "fp_lesions", "fp_volume_mm3", "gt_volume_mm3",
    "pred_volume_mm3",
]
CASE_COLUMNS = ID_COLUMNS + METRICS + COUNTS
# Reported when present (hytver_dist.evaluate writes it): CoactSeg's lesion F1 (26-connectivity,
# lesions >= 3.09 mm^3), the "F1" of the paper's Table I; lesion_f1 is the MSSEG-2/Anima one.
OPTIONAL_METRICS = ["lesion_f1_26conn"]
LOWER_IS_BETTER = {"hd", "hd95", "asd", "assd", "hd95_vox", "asd_vox"}
# Table I's Markdown columns: the paper's DC, JC, HD, ASD, PR, F1 plus recall and mm distances.
TABLE1_MD = [
    ("dice", "Dice"), ("jaccard", "Jaccard"), ("precision", "Precision"), ("recall", "Recall"),
    ("lesion_f1", "Lesion F1 (MSSEG-2)"), ("hd95", "HD95 mm"), ("asd", "ASD mm"),
    ("hd95_vox", "HD95 vox"), ("asd_vox", "ASD vox"),
]
OPTIONAL_MD = [("lesion_f1_26conn", "Lesion F1 (CoactSeg)")]
CV_METRICS = ["dice", "precision", "lesion_f1"]
BOX_METRICS = [
    ("dice", "Dice"), ("precision", "Precision"), ("lesion_f1", "Lesion F1"),
    ("hd95", "HD95 (mm)"),
]
_TRUE = {"true", "1", "yes", "t", "y", "1.0"}
_FALSE = {"false", "0", "no", "f", "n", "0.0"}


@dataclass
class Results:
    """All readable case rows plus the per-trial bookkeeping."""

    cases: pd.DataFrame  # CASE_COLUMNS + "method"
    failed: pd.DataFrame  # trial, loss, seed, status, error
    n_trials: int
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- loading


def _read_status(path: Path) -> dict:
    try:
        status = json.loads(path.read_text())
        if not isinstance(status, dict):
            raise ValueError("not a JSON object")
        return status
    except (OSError, ValueError) as e:
        return {"status": "failed", "error": f"unreadable status.json: {e}"}


def _parse_bool(series: pd.Series, path: Path) -> pd.Series:
    if series.dtype == bool:
        return series
    text = series.astype(str).str.strip().str.lower()
    bad = ~text.isin(_TRUE | _FALSE)
    if bad.any():
        raise ValueError(f"{path}: has_lesions must be a bool; got {series[bad].iloc[0]!r}")
    return text.isin(_TRUE)


CLASS_COLUMN = "class"
MEAN_CLASS = "mean over foreground classes"


def _with_class(df: pd.DataFrame, key: list[str]) -> list[str]:
    """``key``, and the class column where ``df`` has per-class rows."""
    return key + ([CLASS_COLUMN] if CLASS_COLUMN in df.columns else [])


def _keys(df: pd.DataFrame) -> list[str]:
    """Columns naming one row: (trial, seed, case), and the class when there is one."""
    return _with_class(df, ["trial", "seed", "case"])


def _read_cases(path: Path) -> pd.DataFrame:
    text_cols = {c: str for c in ("trial", "loss", "params", "case", CLASS_COLUMN)}
    df = pd.read_csv(path, dtype=text_cols, keep_default_na=True)
    missing = [c for c in CASE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {', '.join(missing)}")
    if df.empty:
        return df
    df["has_lesions"] = _parse_bool(df["has_lesions"], path)
    for c in METRICS + COUNTS + ["seed"]:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    if df["seed"].isna().any():
        raise ValueError(f"{path}: seed must be an integer in every row")
    df["seed"] = df["seed"].astype(int)
    df["params"] = [_canonical_params(p, path) for p in df["params"]]
    dup = df.duplicated(_keys(df))
    if dup.any():
        raise ValueError(f"{path}: duplicate rows for case {df.loc[dup, 'case'].iloc[0]!r}")
    return df


def unrepeated_rows(kept: list[pd.DataFrame], frame: pd.DataFrame,
                    where: object) -> tuple[pd.DataFrame | None, str | None]:
    """For a results collector: ``frame`` (one trial's rows) without the rows another trial in
    ``kept`` already holds with identical values, and the note saying so (also warned); or
    (None, the error naming both trials) when their values differ. See
    :func:`drop_repeated_rows`."""
    if not kept:
        return frame, None
    before = pd.concat(kept, ignore_index=True)
    try:
        _, notes = drop_repeated_rows(pd.concat([before, frame], ignore_index=True), where)
    except ValueError as exc:
        return None, str(exc)
    if not notes:
        return frame, None
    for note in notes:
        warnings.warn(note, stacklevel=3)
    key = _with_class(frame, ROW_KEY)
    seen = pd.MultiIndex.from_frame(before[key])
    new = ~pd.MultiIndex.from_frame(frame[key]).isin(seen)
    return frame[new].reset_index(drop=True), "; ".join(notes)


def _canonical_params(text: object, path: Path) -> str:
    if not isinstance(text, str) or not text.strip():
        return "{}"
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{path}: params is not JSON: {text!r} ({e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: params must be a JSON object; got {text!r}")
    return json.dumps(obj, sort_keys=True)


def load_results(results_dir: str | Path) -> Results:
    """Read every ``trials/*/cases.csv`` (and ``status.json``) under ``results_dir``.

    Raises FileNotFoundError naming the directory when no case rows are found, ValueError for a
    malformed ``cases.csv``.
    """
    root = Path(results_dir)
    trials_dir = root / "trials"
    if not trials_dir.is_dir():
        raise FileNotFoundError(
            f"no results found in {root}: {trials_dir} does not exist "
            "(expected trials/<trial_name>/cases.csv)"
        )
    frames, failed = [], []
    trial_dirs = sorted(p for p in trials_dir.iterdir() if p.is_dir())
    for tdir in trial_dirs:
        status = _read_status(tdir / "status.json") if (tdir / "status.json").exists() else {}
        row = {
            "trial": status.get("trial", tdir.name),
            "loss": status.get("loss"),
            # "0", or "0_1_2" for a trial that trains several seeds
            "seed": None if status.get("seed") is None else str(status["seed"]),
            "status": status.get("status", "ok"),
            "error": status.get("error", ""),
        }
        cases_path = tdir / "cases.csv"
        if row["status"] != "ok":
            failed.append(row)  # a failed trial's partial cases are not trusted
            continue
        if not cases_path.is_file():
            failed.append({**row, "status": "missing", "error": "no cases.csv"})
            continue
        df = _read_cases(cases_path)
        if df.empty:
            failed.append({**row, "status": "missing", "error": "cases.csv has no rows"})
            continue
        frames.append(df)
    if not frames:
        raise FileNotFoundError(
            f"no results found in {root}: no trials/<trial_name>/cases.csv with rows "
            f"({len(trial_dirs)} trial directories, {len(failed)} failed or empty)"
        )
    cases = pd.concat(frames, ignore_index=True)
    if cases.duplicated(_keys(cases)).any():
        raise ValueError(f"{trials_dir}: the same trial name appears in several cases.csv")
    cases, notes = drop_repeated_rows(cases, trials_dir)
    for note in notes:
        warnings.warn(note, stacklevel=2)
    cases["method"] = _method_labels(cases)
    failed_df = pd.DataFrame(failed, columns=["trial", "loss", "seed", "status", "error"])
    return Results(cases=cases, failed=failed_df, n_trials=len(trial_dirs), notes=notes)


# A method's (Table I's row) result for one seed on one case: counted once, whichever trial.
ROW_KEY = ["loss", "params", "seed", "case"]


def _same(a: object, b: object) -> bool:
    return bool(a == b) or (pd.isna(a) and pd.isna(b))  # type: ignore[call-overload]


def drop_repeated_rows(cases: pd.DataFrame, where: object) -> tuple[pd.DataFrame, list[str]]:
    """Keep one row per (loss, params, seed, case): a second trial with the same key (the same
    sweep run twice into one results folder) would count that seed's cases twice.

    Rows of two trials with equal values: the first trial's are kept and a note (one per pair
    of trials) says so. Different values: ValueError naming both trials and ``where``.
    """
    row_key = _with_class(cases, ROW_KEY)  # per-class rows: one per (..., case, class)
    repeated = cases.duplicated(row_key, keep=False)
    if not repeated.any():
        return cases, []
    compare = [c for c in cases.columns if c != "trial"]
    pairs: dict[tuple[str, str], int] = {}
    for key, group in cases[repeated].groupby(row_key, sort=False):
        first = group.iloc[0]
        for _, other in group.iloc[1:].iterrows():
            diff = [c for c in compare if not _same(first[c], other[c])]
            if diff:
                loss, params, seed, case = key[:4]
                raise ValueError(
                    f"{where}: trials {first['trial']!r} and {other['trial']!r} both hold "
                    f"{loss} {params} seed {seed} case {case!r}, with different values "
                    f"({diff[0]}: {first[diff[0]]} vs {other[diff[0]]}): the same "
                    "sweep ran twice into these results; keep one of the two trials")
            pair = (str(first["trial"]), str(other["trial"]))
            pairs[pair] = pairs.get(pair, 0) + 1
    notes = [f"trial {b!r} repeats {n} row(s) of trial {a!r} with identical values (the same "
             f"sweep ran twice?): counted once, as {a!r}'s" for (a, b), n in pairs.items()]
    return cases[~cases.duplicated(row_key)].reset_index(drop=True), notes


def _method_labels(cases: pd.DataFrame) -> pd.Series:
    """The loss name, or ``loss (k=v, ...)`` when the loss ran with several params sets."""
    n_sets = cases.groupby("loss")["params"].nunique()

    def label(loss: str, params: str) -> str:
        if n_sets[loss] == 1:
            return loss
        kv = ", ".join(f"{k}={_fmt_param(v)}" for k, v in json.loads(params).items())
        return f"{loss} ({kv})"

    return pd.Series([label(lo, p) for lo, p in zip(cases["loss"], cases["params"], strict=True)],
                     index=cases.index)


def _fmt_param(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _method_order(cases: pd.DataFrame) -> list[str]:
    from ..losses import LOSSES  # the registry's order (imports torch: only when needed)

    rank = {name: i for i, name in enumerate(LOSSES)}
    first = cases.drop_duplicates("method")[["method", "loss"]]
    key = [(rank.get(lo, len(rank)), lo, m) for m, lo in zip(first["method"], first["loss"],
                                                            strict=True)]
    return [m for _, _, m in sorted(key)]


# ----------------------------------------------------------------------------- statistics


def positives(cases: pd.DataFrame) -> pd.DataFrame:
    return cases[cases["has_lesions"]]


def table1(cases: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Long table: one row per (method, metric) over the cases with new lesions.
    ``n_penalized``: distance values set to the image diagonal (column
    ``distance_penalized``, see :func:`hytver_dist.report.stats.penalize_empty_predictions`)."""
    pos, rows = positives(cases), []
    for method in _method_order(cases):
        sub = pos[pos["method"] == method]
        loss = cases.loc[cases["method"] == method, "loss"].iloc[0]
        for metric in METRICS + [m for m in OPTIONAL_METRICS if m in cases.columns]:
            vals = sub[["seed", metric]]
            per_seed = vals.groupby("seed")[metric].mean().dropna()
            mean, lo, hi = bootstrap_interval(seed_case_matrix(sub, metric), confidence)
            penalized = (int(sub["distance_penalized"].sum())
                         if metric in PENALTY_COLUMN and "distance_penalized" in sub else 0)
            rows.append({
                "method": method, "loss": loss, "metric": metric,
                "n_seeds": len(per_seed), "n": int(vals[metric].notna().sum()),
                "n_nan": int(vals[metric].isna().sum()), "n_penalized": penalized,
                "mean": mean,
                "ci_low": lo, "ci_high": hi,
                "sd_seeds": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else math.nan,
                "median": float(vals[metric].median()) if vals[metric].notna().any() else math.nan,
            })
    return pd.DataFrame(rows)


def is_per_class(cases: pd.DataFrame) -> bool:
    """Whether the rows are per (case, class): a dataset of several classes or regions."""
    return CLASS_COLUMN in cases.columns and bool(cases[CLASS_COLUMN].notna().any())


def class_mean(cases: pd.DataFrame) -> pd.DataFrame:
    """One row per (trial, seed, case) from per-class rows: each metric's mean over the classes
    present in the case's ground truth (all classes when none is), counts and volumes summed,
    ``has_lesions`` when any class is present."""
    keys = ["trial", "loss", "seed", "params", "method", "case"]
    metric_cols = [c for c in METRICS + OPTIONAL_METRICS if c in cases.columns]
    sum_cols = [c for c in COUNTS if c in cases.columns]
    rows = []
    for key, g in cases.groupby(keys, sort=False):
        present = g[g["has_lesions"]]
        src = present if len(present) else g
        row = dict(zip(keys, key, strict=True))
        row["has_lesions"] = bool(len(present))
        row.update(src[metric_cols].mean(numeric_only=True).to_dict())
        row.update({c: g[c].sum(min_count=1) for c in sum_cols})
        for c in ("diagonal_mm", "diagonal_vox"):
            if c in g.columns:
                row[c] = g[c].max()
        if "distance_penalized" in g.columns:
            row["distance_penalized"] = bool(src["distance_penalized"].any())
        rows.append(row)
    return pd.DataFrame(rows)


def table1_per_class(cases: pd.DataFrame, mean: pd.DataFrame,
                     confidence: float = 0.95) -> pd.DataFrame:
    """:func:`table1` of each class and of the mean over foreground classes, with a ``class``
    column (classes in the order of the rows)."""
    parts = [table1(cases[cases[CLASS_COLUMN] == c], confidence).assign(**{CLASS_COLUMN: c})
             for c in cases[CLASS_COLUMN].dropna().unique()]
    parts.append(table1(mean, confidence).assign(**{CLASS_COLUMN: MEAN_CLASS}))
    out = pd.concat(parts, ignore_index=True)
    return out[[CLASS_COLUMN] + [c for c in out.columns if c != CLASS_COLUMN]]


def cv(values: np.ndarray) -> float:
    """Sample coefficient of variation sd/mean (ddof=1); NaN below two values or at mean 0."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) < 2 or values.mean() == 0:
        return math.nan
    return float(stats.variation(values, ddof=1))


def table2(cases: pd.DataFrame) -> pd.DataFrame:
    """CV across cases with new lesions, per seed, averaged over seeds (the paper's Table II)."""
    pos, rows = positives(cases), []
    for method in _method_order(cases):
        sub = pos[pos["method"] == method]
        row: dict[str, object] = {"method": method, "n_seeds": sub["seed"].nunique()}
        for metric in CV_METRICS:
            per_seed = [cv(g[metric].to_numpy()) for _, g in sub.groupby("seed")]
            per_seed = [v for v in per_seed if not math.isnan(v)]
            row[f"cv_{metric}"] = float(np.mean(per_seed)) if per_seed else math.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=["method", "n_seeds"] + [f"cv_{m}" for m in CV_METRICS])


def holm(pvalues: list[float]) -> list[float]:
    """Holm step-down adjusted p-values; NaN entries stay NaN and do not count."""
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    out = [math.nan] * len(pvalues)
    if idx:
        adjusted = multipletests([pvalues[i] for i in idx], method="holm")[1]
        for i, p in zip(idx, adjusted, strict=True):
            out[i] = float(p)
    return out


PAIRED_COLUMNS = [
    "method", "reference", "n_pairs", "n_unpaired", "median_diff", "mean_diff", "statistic",
    "p_value", "p_holm",
]


def paired_tests(
    cases: pd.DataFrame, reference_loss: str = "hytver", metric: str = "dice"
) -> tuple[pd.DataFrame, str | None]:
    """Wilcoxon signed-rank of each method vs the reference on per-case ``metric`` (each case's
    mean over seeds, paired by case). Returns (table, note); the note says why the section was
    skipped, if it was."""
    pos = positives(cases)
    ref_methods = sorted(cases.loc[cases["loss"] == reference_loss, "method"].unique())
    empty = pd.DataFrame(columns=PAIRED_COLUMNS)
    if not ref_methods:
        return empty, f"reference loss '{reference_loss}' is absent: paired tests skipped"
    if len(ref_methods) > 1:
        return empty, (f"reference loss '{reference_loss}' ran with {len(ref_methods)} "
                       "hyperparameter sets: paired tests skipped (ambiguous reference)")
    ref = ref_methods[0]
    # Cases are the independent units: average each method over its seeds per case first
    # (pairing (case, seed) rows would count every case once per seed and overstate p).
    wide = pos.pivot_table(index="case", columns="method", values=metric, aggfunc="mean",
                           dropna=False)
    rows = []
    for method in _method_order(cases):
        if method == ref:
            continue
        if method in wide.columns and ref in wide.columns:
            both = wide[[method, ref]]
        else:
            both = pd.DataFrame(columns=[method, ref], dtype=float)
        n_any = int(both.notna().any(axis=1).sum())
        both = both.dropna()
        x, y = both[method].to_numpy(float), both[ref].to_numpy(float)
        row = {"method": method, "reference": ref, "n_pairs": len(both),
               "n_unpaired": n_any - len(both), "median_diff": math.nan,
               "mean_diff": math.nan, "statistic": math.nan, "p_value": math.nan}
        if len(both):
            d = x - y
            row.update(median_diff=float(np.median(d)), mean_diff=float(d.mean()))
            with warnings.catch_warnings():  # all-zero differences warn and give p = 1
                warnings.simplefilter("ignore", RuntimeWarning)
                res = stats.wilcoxon(x, y)
            row.update(statistic=float(res.statistic), p_value=float(res.pvalue))
        rows.append(row)
    table = pd.DataFrame(rows, columns=PAIRED_COLUMNS)
    table["p_holm"] = holm(table["p_value"].astype(float).tolist())
    return table, None


NEG_COLUMNS = [
    "method", "n_cases", "n_seeds", "n_rows", "frac_with_fp", "fp_lesions_mean",
    "fp_lesions_median", "fp_lesions_max", "fp_volume_mm3_mean", "fp_volume_mm3_median",
    "fp_volume_mm3_max",
]


def negatives(cases: pd.DataFrame) -> pd.DataFrame:
    """False positives on cases without new lesions, per method over case x seed rows."""
    neg, rows = cases[~cases["has_lesions"]], []
    for method in _method_order(cases):
        sub = neg[neg["method"] == method]
        if sub.empty:
            continue
        fp, vol = sub["fp_lesions"].dropna(), sub["fp_volume_mm3"].dropna()
        rows.append({
            "method": method, "n_cases": sub["case"].nunique(), "n_seeds": sub["seed"].nunique(),
            "n_rows": len(sub), "frac_with_fp": float((fp > 0).mean()) if len(fp) else math.nan,
            "fp_lesions_mean": fp.mean(), "fp_lesions_median": fp.median(),
            "fp_lesions_max": fp.max(), "fp_volume_mm3_mean": vol.mean(),
            "fp_volume_mm3_median": vol.median(), "fp_volume_mm3_max": vol.max(),
        })
    return pd.DataFrame(rows, columns=NEG_COLUMNS)


# ----------------------------------------------------------------------------- figures


def box_plot(cases: pd.DataFrame, metric: str, label: str, path: Path) -> int:
    """Box plot of ``metric`` per method (cases with new lesions, case x seed values).

    Returns the number of methods drawn. Uses the Agg canvas directly, so importing this module
    never switches the process's pyplot backend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pos = positives(cases)
    methods = [m for m in _method_order(cases) if pos.loc[pos["method"] == m, metric].notna().any()]
    data = [pos.loc[pos["method"] == m, metric].dropna().to_numpy() for m in methods]
    fig = Figure(figsize=(max(6.0, 0.55 * len(methods) + 2), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if data:
        ax.boxplot(data, positions=range(1, len(data) + 1), widths=0.6)
        ax.set_xticks(range(1, len(data) + 1))
        ax.set_xticklabels(methods, rotation=45, ha="right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel(label)
    ax.set_title(f"{label} per loss (cases with new lesions)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return len(methods)


def load_curves(results_dir: Path, cases: pd.DataFrame) -> pd.DataFrame:
    """The ``curves.csv`` of the trials whose rows ``cases`` holds (failed, stopped and
    duplicate trials are left out, as in the tables), each with its ``method`` label from
    ``cases``; empty when there are none."""
    method = cases.drop_duplicates("trial").set_index("trial")["method"]
    frames = [pd.read_csv(p, dtype={"params": str})
              for p in sorted((results_dir / "trials").glob(f"*/{CURVES_FILE}"))
              if p.parent.name in method.index]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=["trial", "loss", "params", "seed", "iteration",
                                     "val_dice", "method"])
    curves = pd.concat(frames, ignore_index=True)
    curves["method"] = curves["trial"].map(method)
    return curves


def curve_bands(curves: pd.DataFrame) -> pd.DataFrame:
    """Per method and iteration: the mean validation Dice over seeds, the lowest and highest
    seed's (``low``, ``high``) and the number of seeds (``seeds``)."""
    grouped = curves.groupby(["method", "iteration"])
    return grouped["val_dice"].agg(mean="mean", low="min", high="max").join(
        grouped["seed"].nunique().rename("seeds")).reset_index()


def learning_curves_plot(curves: pd.DataFrame, path: Path) -> int:
    """Validation Dice against iteration per method: the mean over seeds, and the band between
    the lowest and the highest seed. Returns the number of methods drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    methods = _method_order(curves) if not curves.empty else []
    bands = curve_bands(curves) if methods else None
    for method in methods:
        band = bands[bands["method"] == method]
        (line,) = ax.plot(band["iteration"], band["mean"], label=method, linewidth=1.2)
        if band["seeds"].max() > 1:
            ax.fill_between(band["iteration"], band["low"], band["high"], alpha=0.15,
                            color=line.get_color(), linewidth=0)
    if not methods:
        ax.text(0.5, 0.5, "no validation history", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("iteration")
    ax.set_ylabel("validation Dice")
    ax.set_title("Learning curves: mean over seeds (band: lowest to highest seed)")
    ax.grid(alpha=0.3)
    if methods:
        ax.legend(fontsize=7, ncol=2 if len(methods) > 7 else 1, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return len(methods)


# ----------------------------------------------------------------------------- markdown


def _fmt(v: object) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, (float, np.floating)):
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2e}" if 0 < abs(v) < 1e-3 else f"{v:.3f}"  # small p-values stay visible
    return str(v)


def md_table(df: pd.DataFrame) -> str:
    """A GitHub Markdown table (pandas' to_markdown needs the optional tabulate)."""
    if df.empty:
        return "_(none)_\n"
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |"
            for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body]) + "\n"


def table1_markdown(t1: pd.DataFrame, confidence: float) -> str:
    rows = []
    for method, g in t1.groupby("method", sort=False):
        g = g.set_index("metric")
        row = {"Loss": method, "seeds": int(g["n_seeds"].max()),
               "empty preds": int(g.loc["hd95", "n_penalized"])}
        for metric, title in TABLE1_MD + [(m, t) for m, t in OPTIONAL_MD if m in g.index]:
            m, lo, hi = g.loc[metric, ["mean", "ci_low", "ci_high"]]
            row[title] = _fmt(m) if math.isnan(lo) else f"{_fmt(m)} [{_fmt(lo)}, {_fmt(hi)}]"
        rows.append(row)
    arrows = ", ".join(f"{t} {'↓' if m in LOWER_IS_BETTER else '↑'}" for m, t in TABLE1_MD)
    head = (f"Mean over seeds of the per-seed mean over cases with new lesions, "
            f"[{confidence:.0%} percentile bootstrap interval, seeds and cases resampled "
            f"({N_BOOT} draws)]. {arrows}. 'empty preds': case x seed rows with an empty "
            "prediction on a case with new lesions; their distances are set to the image "
            "diagonal.\n\n")
    return head + md_table(pd.DataFrame(rows))


# ----------------------------------------------------------------------------- report


def build_report(
    results_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    reference_loss: str = "hytver",
    confidence: float = 0.95,
) -> Path:
    """Write every report file into ``out_dir`` (default ``results_dir/report``) and return the
    path of ``summary.md``. Raises FileNotFoundError when ``results_dir`` holds no results."""
    res = load_results(results_dir)
    out = Path(out_dir) if out_dir is not None else Path(results_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    cases, penalized = penalize_empty_predictions(res.cases)
    cases["distance_penalized"] = penalized
    notes = list(res.notes)

    ordered = ["method"] + CASE_COLUMNS + [c for c in cases.columns
                                           if c not in CASE_COLUMNS and c != "method"]
    cases[ordered].to_csv(out / "cases.csv", index=False)

    per_class = is_per_class(cases)
    if per_class:
        # Everything but Table I's class blocks reads the per-case mean over the classes.
        class_rows, cases = cases, class_mean(cases)
        penalized = cases["distance_penalized"].astype(bool)
        t1 = table1_per_class(class_rows, cases, confidence)
        t1_md = "".join(f"### {c}\n\n{table1_markdown(g.drop(columns=CLASS_COLUMN), confidence)}\n"
                        for c, g in t1.groupby(CLASS_COLUMN, sort=False))
    else:
        t1 = table1(cases, confidence)
        t1_md = table1_markdown(t1, confidence)
    t1.to_csv(out / "table1.csv", index=False)
    (out / "table1.md").write_text(f"# Table I\n\n{t1_md}")
    t2 = table2(cases)
    t2.to_csv(out / "table2.csv", index=False)
    paired, paired_note = paired_tests(cases, reference_loss)
    paired_name = f"paired_vs_{reference_loss}.csv"
    paired.to_csv(out / paired_name, index=False)
    neg = negatives(cases)
    neg.to_csv(out / "negatives.csv", index=False)
    res.failed.to_csv(out / "failed_trials.csv", index=False)
    figures = []
    for metric, label in BOX_METRICS:
        name = f"box_{metric}.png"
        box_plot(cases, metric, label, out / name)
        figures.append((label, name))
    curves = load_curves(Path(results_dir), res.cases)
    if not curves.empty:
        learning_curves_plot(curves, out / "learning_curves.png")
        figures.append(("Validation Dice during training", "learning_curves.png"))

    # Notes for the edge cases.
    if per_class:
        notes.append(f"{class_rows[CLASS_COLUMN].nunique()} classes or regions: Table I gives "
                     "each and their mean; everything else (cases below, Table II, paired "
                     "tests, negatives, box plots) uses each case's mean over the foreground "
                     "classes in its ground truth")
    pos = positives(cases)
    seeds = sorted(cases["seed"].unique())
    if (t1["n_seeds"] == 1).any():
        one = list(t1.loc[t1["n_seeds"] == 1, "method"].unique())  # Table I's order
        notes.append(f"single seed for {', '.join(one)}: the intervals resample cases only "
                     "(no run-to-run variation)")
    if int(penalized.sum()):
        notes.append(f"{int(penalized.sum())} case x seed row(s) with new lesions got an empty "
                     "prediction: their distances are the image diagonal (Table I 'empty "
                     "preds')")
    for metric in METRICS:
        n_nan, n = int(pos[metric].isna().sum()), len(pos)
        if n_nan:
            notes.append(f"{metric}: {n_nan} of {n} values on cases with new lesions are NaN "
                         "and excluded (per-method counts: table1.csv n / n_nan)")
    if pos.empty:
        notes.append("no case with new lesions: Tables I-II, paired tests and box plots are empty")
    if paired_note:
        notes.append(paired_note)
    if neg.empty:
        notes.append("no case without new lesions: negatives.csv is empty")
    n_repeats = int((res.failed["status"] == "duplicate").sum())
    if n_repeats:
        notes.append(f"{n_repeats} trial(s) only repeat another trial's rows (status "
                     "'duplicate': the same sweep ran twice); each row is counted once")
    if len(res.failed) > n_repeats:
        n_stopped = int((res.failed["status"] == "stopped").sum())
        notes.append(f"{len(res.failed) - n_stopped - n_repeats} trial(s) failed or wrote no "
                     f"cases, {n_stopped} stopped early by the scheduler (listed below)")

    n_trials_ok = cases["trial"].nunique()
    lines = [
        f"# Sweep report: {Path(results_dir)}",
        "",
        f"- Trials: {n_trials_ok} with results, {len(res.failed)} failed, stopped or empty "
        f"(of {res.n_trials} trial directories)",
        f"- Methods: {cases['method'].nunique()}; seeds: {', '.join(map(str, seeds))}",
        f"- Cases: {pos['case'].nunique()} with new lesions, "
        f"{cases.loc[~cases['has_lesions'], 'case'].nunique()} without",
        *utilisation_lines(Path(results_dir)),
        f"- Files: [cases.csv](cases.csv), [table1.csv](table1.csv), [table2.csv](table2.csv), "
        f"[{paired_name}]({paired_name}), [negatives.csv](negatives.csv), "
        f"[failed_trials.csv](failed_trials.csv)",
        "",
        "## Notes",
        "",
        *([f"- {n}" for n in notes] or ["- none"]),
        "",
        "## Table I: metrics per loss",
        "",
        t1_md,
        "## Table II: coefficient of variation across cases",
        "",
        "Sample sd / mean over cases with new lesions, per seed, averaged over seeds.",
        "",
        md_table(t2.rename(columns={"method": "Loss"})),
        f"## Paired Wilcoxon signed-rank vs {reference_loss} (Dice)",
        "",
    ]
    if paired_note:
        lines += [f"_{paired_note}._", ""]
    else:
        lines += [
            "Per-case Dice (mean over seeds) paired by case, two-sided, Holm-corrected over "
            "losses; median_diff = median(loss - reference).",
            "",
            md_table(paired),
        ]
    lines += [
        "## Patients without new lesions",
        "",
        "False-positive lesions and volume per case x seed (challenge nFP / VFP).",
        "",
        md_table(neg),
        "## Figures",
        "",
        *[f"![{label}]({name})" for label, name in figures],
        "",
        "## Failed trials",
        "",
        md_table(res.failed),
    ]
    summary = out / "summary.md"
    summary.write_text("\n".join(lines))
    return summary


def utilisation_lines(results_dir: Path) -> list[str]:
    """Summary lines on how the sweep used its trial slots, from ``sweep.json`` (written by
    the sweep) and each trial's ``work_s`` in ``status.json``; none when either is missing."""
    facts_path = results_dir / SWEEP_FACTS_FILE
    if not facts_path.is_file():
        return []
    facts = json.loads(facts_path.read_text())
    if facts.get("resumed"):  # the wall time covers the resumed part only
        return ["- Utilisation: not computed (the sweep was resumed)"]
    work = [json.loads(p.read_text()).get("work_s")
            for p in (results_dir / "trials").glob("*/status.json")]
    work = [float(w) for w in work if isinstance(w, (int, float))]
    wall, slots = facts.get("trials_wall_s"), facts.get("slots")
    if not work or not wall or not slots:
        return []
    lines = [f"- Utilisation: {sum(work) / (wall * slots):.0%} = worker time in training and "
             f"evaluation ({sum(work):.0f} s over {len(work)} trials) / (trials' wall time "
             f"{wall:.0f} s x {slots} concurrent trial slots)"]
    total = facts.get("total_wall_s")
    if total:
        lines.append(f"- Sweep wall time {total:.0f} s: data {facts.get('data_s', 0):.0f} s, "
                     f"pretraining {facts.get('pretrain_s', 0):.0f} s, trials {wall:.0f} s, "
                     "the rest Ray start-up and shut-down")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hytver_dist.report", description=__doc__
                                 .split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("results_dir", help="directory holding trials/<trial>/cases.csv")
    ap.add_argument("--out", default=None, help="output directory (default RESULTS_DIR/report)")
    ap.add_argument("--reference", default="hytver", help="loss for the paired tests")
    ap.add_argument("--confidence", type=float, default=0.95, help="CI level (default 0.95)")
    args = ap.parse_args(argv)
    try:
        summary = build_report(args.results_dir, args.out, reference_loss=args.reference,
                               confidence=args.confidence)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
