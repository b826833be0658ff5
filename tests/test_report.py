"""Sweep report on a synthetic results directory with known numbers, checked independently."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from hytver_dist.report.build import CASE_COLUMNS, build_report, cv, holm, main, utilisation_lines
from hytver_dist.report.stats import bootstrap_interval

LOSSES = ["dice", "ce", "hytver"]
SEEDS = [0, 1, 2]
POS = ["001", "002", "003", "004", "005", "006"]
NEG = ["015", "019"]


def dice_value(loss: str, seed: int, case: str) -> float:
    """Deterministic, distinct per (loss, seed, case); hytver best on average."""
    shift = {"dice": 0.0, "ce": -0.08, "hytver": 0.05}[loss]
    return round(0.45 + 0.04 * int(case) + 0.013 * seed + shift + 0.007 * ((int(case) * 7 + seed
                 * 3 + len(loss)) % 5), 6)


def make_rows(loss: str, seed: int, trial: str, params: dict | None = None) -> list[dict]:
    rows = []
    for case in POS + NEG:
        pos = case in POS
        d = dice_value(loss, seed, case) if pos else math.nan
        fp = (int(case) + seed + len(loss)) % 3 if not pos else 1
        rows.append({
            "trial": trial, "loss": loss, "seed": seed, "params": json.dumps(params or {}),
            "case": case, "has_lesions": pos, "dice": d,
            "jaccard": d / (2 - d) if pos else math.nan,
            "precision": d + 0.02 if pos else (0.0 if fp else math.nan),
            "recall": d - 0.01 if pos else math.nan,
            "hd": 20.0 + int(case) + seed if pos else math.nan,
            # one NaN HD95 per trial: case 003 (e.g. an empty prediction)
            "hd95": (10.0 + int(case) * 0.5 + seed if case != "003" else math.nan)
            if pos else math.nan,
            "asd": 2.0 + seed * 0.1 if pos else math.nan,
            "assd": 1.5 if pos else math.nan, "hd95_vox": 15.0 if pos else math.nan,
            "asd_vox": 3.0 if pos else math.nan,
            "lesion_f1": d + 0.05 if pos else math.nan,
            "lesion_sensitivity": d if pos else math.nan,
            "lesion_ppv": d + 0.1 if pos else math.nan,
            "n_gt_lesions": 3 if pos else 0, "n_pred_lesions": 3 if pos else fp,
            "fp_lesions": fp, "fp_volume_mm3": 12.5 * fp,
            "gt_volume_mm3": 300.0 if pos else 0.0, "pred_volume_mm3": 290.0 + 12.5 * fp,
        })
    return rows


def write_trial(root: Path, trial: str, rows: list[dict] | None, status: dict | None = None,
                extra: tuple[str, ...] = ()):
    tdir = root / "trials" / trial
    tdir.mkdir(parents=True)
    if rows is not None:
        frame = pd.DataFrame(rows, columns=CASE_COLUMNS + list(extra))
        frame.to_csv(tdir / "cases.csv", index=False)
    if status is not None:
        (tdir / "status.json").write_text(json.dumps(status))


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results")
    for loss in LOSSES:
        for seed in SEEDS:
            name = f"{loss}_s{seed}"
            write_trial(root, name, make_rows(loss, seed, name),
                        {"trial": name, "loss": loss, "seed": seed, "status": "ok"})
    write_trial(root, "focal_s0", None, {"trial": "focal_s0", "loss": "focal", "seed": 0,
                                         "status": "failed", "error": "CUDA out of memory"})
    write_trial(root, "tversky_s0", None)  # crashed before writing anything
    return root


@pytest.fixture(scope="module")
def report(results) -> Path:
    return build_report(results)


def expected_rows(metric: str, loss: str) -> pd.DataFrame:
    rows = [r for s in SEEDS for r in make_rows(loss, s, "x") if r["has_lesions"]]
    return pd.DataFrame(rows)[["seed", "case", metric]]


def test_outputs_written(report, results):
    out = results / "report"
    assert report == out / "summary.md"
    for name in ["cases.csv", "table1.csv", "table1.md", "table2.csv", "paired_vs_hytver.csv",
                 "negatives.csv", "failed_trials.csv", "summary.md"]:
        assert (out / name).is_file(), name
    for metric in ["dice", "precision", "lesion_f1", "hd95"]:
        png = out / f"box_{metric}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    cases = pd.read_csv(out / "cases.csv", dtype={"case": str})
    assert len(cases) == len(LOSSES) * len(SEEDS) * (len(POS) + len(NEG))
    assert set(cases["case"]) == set(POS + NEG)  # zero-padded IDs survive


def brute_force_bootstrap(df: pd.DataFrame, metric: str, n: int, seed: int) -> np.ndarray:
    """Resampled means, written as loops: draw seeds, draw cases, per-seed means, mean."""
    rng = np.random.default_rng(seed)
    seeds, cases = sorted(df["seed"].unique()), sorted(df["case"].unique())
    value = {(r.seed, r.case): getattr(r, metric) for r in df.itertuples()}
    out = []
    for _ in range(n):
        s_draw = [seeds[i] for i in rng.integers(0, len(seeds), len(seeds))]
        c_draw = [cases[i] for i in rng.integers(0, len(cases), len(cases))]
        per_seed = [np.nanmean([value[(s, c)] for c in c_draw]) for s in s_draw]
        out.append(np.nanmean(per_seed))
    return np.array(out)


@pytest.mark.parametrize("metric", ["dice", "hd95", "precision"])
@pytest.mark.parametrize("loss", LOSSES)
def test_table1_mean_and_bootstrap_interval(report, loss, metric):
    t1 = pd.read_csv(report.parent / "table1.csv")
    row = t1[(t1["method"] == loss) & (t1["metric"] == metric)].iloc[0]
    df = expected_rows(metric, loss)
    per_seed = np.array([np.nanmean(df.loc[df["seed"] == s, metric]) for s in SEEDS])
    assert row["mean"] == pytest.approx(per_seed.mean(), rel=1e-12)
    # An independent, loop-based two-level bootstrap agrees within Monte-Carlo error.
    boot = brute_force_bootstrap(df, metric, 3000, seed=123)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    width = hi - lo
    assert row["ci_low"] == pytest.approx(lo, abs=0.08 * width)
    assert row["ci_high"] == pytest.approx(hi, abs=0.08 * width)
    assert df[metric].min() <= row["ci_low"] < row["mean"] < row["ci_high"] <= df[metric].max()
    assert row["n_seeds"] == 3 and row["n_penalized"] == 0
    n_nan = 3 if metric == "hd95" else 0  # case 003 of each seed
    assert (row["n"], row["n_nan"]) == (len(df) - n_nan, n_nan)
    assert row["median"] == pytest.approx(np.nanmedian(df[metric]))


def test_table2_cv(report):
    t2 = pd.read_csv(report.parent / "table2.csv").set_index("method")
    for loss in LOSSES:
        for metric in ["dice", "precision", "lesion_f1"]:
            df = expected_rows(metric, loss)
            cvs = [np.std(g, ddof=1) / np.mean(g) for g in
                   (df.loc[df["seed"] == s, metric].to_numpy() for s in SEEDS)]
            assert t2.loc[loss, f"cv_{metric}"] == pytest.approx(np.mean(cvs), rel=1e-10)


def test_paired_wilcoxon_vs_hytver(report):
    paired = pd.read_csv(report.parent / "paired_vs_hytver.csv").set_index("method")
    assert set(paired.index) == {"dice", "ce"}
    ps = {}
    for loss in ["dice", "ce"]:
        # Cases are the units: each case's mean over seeds, paired by case.
        x = np.array([np.mean([dice_value(loss, s, c) for s in SEEDS]) for c in POS])
        y = np.array([np.mean([dice_value("hytver", s, c) for s in SEEDS]) for c in POS])
        res = stats.wilcoxon(x, y)
        row = paired.loc[loss]
        assert row["n_pairs"] == len(POS) and row["reference"] == "hytver"
        assert row["p_value"] == pytest.approx(res.pvalue, rel=1e-12)
        assert row["statistic"] == pytest.approx(res.statistic)
        assert row["median_diff"] == pytest.approx(np.median(x - y))
        ps[loss] = res.pvalue
    lo, hi = sorted(ps, key=ps.get)
    assert paired.loc[lo, "p_holm"] == pytest.approx(min(1, 2 * ps[lo]))
    assert paired.loc[hi, "p_holm"] == pytest.approx(max(min(1, 2 * ps[lo]), ps[hi]))


def test_holm():
    assert holm([0.01, 0.04, 0.03, math.nan]) == pytest.approx([0.03, 0.06, 0.06, math.nan],
                                                               nan_ok=True)
    assert holm([math.nan]) == [pytest.approx(math.nan, nan_ok=True)]
    assert holm([0.2, 0.9]) == pytest.approx([0.4, 0.9])  # monotone, capped at 1


def test_cv_by_hand():
    assert cv(np.array([1.0, 2.0, 3.0, math.nan])) == pytest.approx(1.0 / 2.0)  # sd 1, mean 2
    assert math.isnan(cv(np.array([1.0]))) and math.isnan(cv(np.array([-1.0, 1.0])))


def test_empty_prediction_distances_get_the_diagonal_penalty(tmp_path):
    for loss in ["dice", "hytver"]:
        for seed in (0, 1):
            rows = make_rows(loss, seed, f"{loss}_s{seed}")
            for r in rows:
                r["diagonal_mm"], r["diagonal_vox"] = 250.0, 80.0
                if loss == "dice" and r["case"] in ("002", "005") and seed == 1:
                    r.update(dice=0.0, pred_volume_mm3=0.0, hd=math.nan, hd95=math.nan,
                             asd=math.nan, assd=math.nan, hd95_vox=math.nan, asd_vox=math.nan)
            write_trial(tmp_path, f"{loss}_s{seed}", rows,
                        extra=("diagonal_mm", "diagonal_vox"))
    summary = build_report(tmp_path, tmp_path / "out")
    t1 = pd.read_csv(tmp_path / "out" / "table1.csv").set_index(["method", "metric"])
    assert t1.loc[("dice", "hd95"), "n_penalized"] == 2
    assert t1.loc[("dice", "asd_vox"), "n_penalized"] == 2
    assert t1.loc[("dice", "dice"), "n_penalized"] == 0  # overlap metrics need no penalty
    assert t1.loc[("hytver", "hd95"), "n_penalized"] == 0
    cases = pd.read_csv(tmp_path / "out" / "cases.csv", dtype={"case": str})
    hit = cases[(cases["method"] == "dice") & (cases["seed"] == 1)
                & cases["case"].isin(["002", "005"])]
    assert (hit["hd95"] == 250.0).all() and (hit["hd95_vox"] == 80.0).all()
    # The NaN HD95 of case 003 (non-empty prediction) is not penalized: still excluded.
    assert t1.loc[("dice", "hd95"), "n_nan"] == 2
    text = summary.read_text()
    assert "| Loss | seeds | empty preds |" in text
    assert "| dice | 2 | 2 |" in text and "| hytver | 2 | 0 |" in text
    assert "2 case x seed row(s) with new lesions got an empty prediction" in text


def test_intervals_stay_in_range_with_extreme_values(tmp_path):
    # Three seeds, mostly perfect or failed cases: a t-interval would leave [0, 1].
    for seed, values in enumerate([[1.0, 1.0, 0.0, 1.0], [1.0, 0.9, 1.0, 1.0],
                                   [0.0, 1.0, 1.0, 1.0]]):
        rows = make_rows("dice", seed, f"dice_s{seed}")[:4]
        for r, v in zip(rows, values, strict=True):
            r["dice"] = v
        write_trial(tmp_path, f"dice_s{seed}", rows)
    build_report(tmp_path, tmp_path / "out")
    t1 = pd.read_csv(tmp_path / "out" / "table1.csv").set_index("metric")
    lo, hi = t1.loc["dice", ["ci_low", "ci_high"]]
    assert 0.0 <= lo < t1.loc["dice", "mean"] < hi <= 1.0


def test_bootstrap_interval_edge_cases():
    mean, lo, hi = bootstrap_interval(np.array([[0.2, 0.4, np.nan, 0.9]]))
    assert mean == pytest.approx(0.5) and 0.2 <= lo < hi <= 0.9
    assert all(math.isnan(v) for v in bootstrap_interval(np.full((2, 3), np.nan)))
    mean, lo, hi = bootstrap_interval(np.array([[0.7], [0.3]]))  # one case: no interval
    assert mean == pytest.approx(0.5) and math.isnan(lo) and math.isnan(hi)
    same = bootstrap_interval(np.array([[0.5, 0.5], [0.5, 0.5]]))
    assert same == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="seeds x cases"):
        bootstrap_interval(np.array([0.1, 0.2]))


def test_utilisation_line(results, tmp_path):
    import shutil

    root = tmp_path / "r"
    shutil.copytree(results, root)
    for i, p in enumerate(sorted((root / "trials").glob("*_s*/status.json"))):
        status = json.loads(p.read_text())
        if status["status"] == "ok":
            p.write_text(json.dumps({**status, "work_s": 10.0 + i}))
    work = sum(json.loads(p.read_text()).get("work_s", 0)
               for p in (root / "trials").glob("*/status.json"))
    (root / "sweep.json").write_text(json.dumps({"slots": 2, "trials_wall_s": 100.0,
                                                 "total_wall_s": 160.0, "pretrain_s": 30.0,
                                                 "data_s": 5.0}))
    text = build_report(root).read_text()
    assert f"- Utilisation: {work / 200:.0%} = worker time in training and evaluation " \
           f"({work:.0f} s over 9 trials) / (trials' wall time 100 s x 2" in text
    assert "- Sweep wall time 160 s: data 5 s, pretraining 30 s, trials 100 s" in text
    assert "Utilisation" not in build_report(results, tmp_path / "plain").read_text()
    # A resumed sweep's wall time covers only its resumed part: no ratio is given.
    (root / "sweep.json").write_text(json.dumps({"slots": 2, "trials_wall_s": 100.0,
                                                 "resumed": True}))
    assert utilisation_lines(root) == ["- Utilisation: not computed (the sweep was resumed)"]


def test_negatives_reported_apart(report):
    neg = pd.read_csv(report.parent / "negatives.csv").set_index("method")
    for loss in LOSSES:
        fps = np.array([(int(c) + s + len(loss)) % 3 for s in SEEDS for c in NEG])
        row = neg.loc[loss]
        assert (row["n_cases"], row["n_seeds"], row["n_rows"]) == (2, 3, 6)
        assert row["fp_lesions_mean"] == pytest.approx(fps.mean())
        assert row["fp_volume_mm3_mean"] == pytest.approx(12.5 * fps.mean())
        assert row["frac_with_fp"] == pytest.approx((fps > 0).mean())
    # Negative cases never enter Table I: precision of 0.0 on them would drag the mean down.
    t1 = pd.read_csv(report.parent / "table1.csv")
    prec = t1[(t1["method"] == "dice") & (t1["metric"] == "precision")].iloc[0]
    assert prec["n"] == len(POS) * len(SEEDS)


def test_summary_and_failed_trials(report):
    text = report.read_text()
    for heading in ["## Table I", "## Table II", "## Paired Wilcoxon", "## Patients without new",
                    "## Figures", "## Failed trials", "## Notes"]:
        assert heading in text
    table1_md = (report.parent / "table1.md").read_text().split("\n\n", 2)[-1]
    assert table1_md.strip() in text  # Table I's Markdown is embedded as is
    t1 = pd.read_csv(report.parent / "table1.csv")
    row = t1[(t1["method"] == "hytver") & (t1["metric"] == "dice")].iloc[0]
    assert f"{row['mean']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]" in text
    assert "| Loss | n_seeds | cv_dice |" in text
    assert "![Dice](box_dice.png)" in text and "![HD95 (mm)](box_hd95.png)" in text
    assert "| focal_s0 | focal | 0 | failed | CUDA out of memory |" in text
    assert "| tversky_s0 |" in text and "no cases.csv" in text
    assert "hd95: 9 of 54 values on cases with new lesions are NaN" in text
    failed = pd.read_csv(report.parent / "failed_trials.csv")
    assert sorted(failed["trial"]) == ["focal_s0", "tversky_s0"]


def test_single_seed_and_no_reference(tmp_path):
    for loss in ["dice", "ce"]:
        write_trial(tmp_path, f"{loss}_s0", make_rows(loss, 0, f"{loss}_s0"))
    summary = build_report(tmp_path, tmp_path / "out")
    t1 = pd.read_csv(tmp_path / "out" / "table1.csv")
    dice = t1[t1["metric"] == "dice"]
    assert (dice["ci_low"] < dice["mean"]).all() and (dice["mean"] < dice["ci_high"]).all()
    assert (t1["n_seeds"] == 1).all() and t1["mean"].notna().any()
    text = summary.read_text()
    assert "single seed for dice, ce: the intervals resample cases only" in text
    assert "reference loss 'hytver' is absent: paired tests skipped" in text
    assert pd.read_csv(tmp_path / "out" / "paired_vs_hytver.csv").empty


def test_search_sweep_methods_and_ambiguous_reference(tmp_path):
    for i, alpha in enumerate([0.3, 0.7]):
        name = f"hytver_{i}"
        write_trial(tmp_path, name, make_rows("hytver", 0, name, {"alpha": alpha}))
    write_trial(tmp_path, "dice_0", make_rows("dice", 0, "dice_0"))
    summary = build_report(tmp_path)
    methods = pd.read_csv(tmp_path / "report" / "table2.csv")["method"].tolist()
    assert methods == ["dice", "hytver (alpha=0.3)", "hytver (alpha=0.7)"]
    assert "ran with 2 hyperparameter sets: paired tests skipped" in summary.read_text()


def test_errors(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match=f"no results found in {tmp_path}"):
        build_report(tmp_path)
    (tmp_path / "trials" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no results found .*1 trial directories"):
        build_report(tmp_path)
    assert main([str(tmp_path)]) == 2
    assert "error: no results found" in capsys.readouterr().err
    rows = make_rows("dice", 0, "b")
    write_trial(tmp_path, "b", None)
    pd.DataFrame(rows).drop(columns="hd95").to_csv(tmp_path / "trials/b/cases.csv", index=False)
    with pytest.raises(ValueError, match=r"b/cases\.csv: missing columns hd95"):
        build_report(tmp_path)


def test_cli(results, tmp_path, capsys):
    assert main([str(results), "--out", str(tmp_path / "r")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "r" / "summary.md")


def test_only_negative_cases(tmp_path):
    for loss in ["dice", "hytver"]:
        write_trial(tmp_path, loss, [r for r in make_rows(loss, 0, loss) if not r["has_lesions"]])
    text = build_report(tmp_path).read_text()
    assert "no case with new lesions" in text
    assert len(pd.read_csv(tmp_path / "report" / "negatives.csv")) == 2


# ------------------------------------------------------------------------- learning curves


def test_learning_curves_mean_over_seeds_with_the_spread(tmp_path, monkeypatch):
    from hytver_dist.report import build as report_build

    root = tmp_path / "res"
    for loss in ("dice", "hytver"):
        for seed in (0, 1):
            name = f"{loss}_s{seed}"
            write_trial(root, name, make_rows(loss, seed, name),
                        {"trial": name, "loss": loss, "seed": seed, "status": "ok"})
            pd.DataFrame({"trial": name, "loss": loss, "params": "{}", "seed": seed,
                          "iteration": [10, 20, 30], "train_loss": [0.9, 0.7, 0.5],
                          "val_dice": [0.1 + seed * 0.1, 0.3 + seed * 0.1, 0.5 + seed * 0.1]}
                         ).to_csv(root / "trials" / name / "curves.csv", index=False)
    # A failed trial's history is left out, as its rows are.
    failed = root / "trials" / "ce_s0"
    write_trial(root, "ce_s0", make_rows("ce", 0, "ce_s0"),
                {"trial": "ce_s0", "loss": "ce", "seed": 0, "status": "failed"})
    pd.read_csv(root / "trials" / "dice_s0" / "curves.csv").assign(
        trial="ce_s0", loss="ce").to_csv(failed / "curves.csv", index=False)
    curves = report_build.load_curves(root, report_build.load_results(root).cases)
    assert sorted(curves["method"].unique()) == ["dice", "hytver"] and len(curves) == 12
    bands = report_build.curve_bands(curves).set_index(["method", "iteration"])
    assert bands.loc[("dice", 20)].tolist() == pytest.approx([0.35, 0.3, 0.4, 2])
    drawn = []

    def spy(frame, path):
        drawn.append(len(frame))
        return real(frame, path)

    real = report_build.learning_curves_plot
    monkeypatch.setattr(report_build, "learning_curves_plot", spy)
    summary = build_report(root)
    assert drawn == [12] and real(curves, tmp_path / "again.png") == 2  # both methods drawn
    png = root / "report" / "learning_curves.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    assert "![Validation Dice during training](learning_curves.png)" in summary.read_text()
    assert real(curves.iloc[0:0], tmp_path / "empty.png") == 0


def test_report_without_curves_has_no_learning_curve_figure(results):
    summary = build_report(results, results / "report-nocurves")
    assert "learning_curves.png" not in summary.read_text()
    assert not (results / "report-nocurves" / "learning_curves.png").exists()


class _FakeResult:
    def __init__(self, frame):
        self.metrics_dataframe = frame


def test_write_curves_keeps_one_row_per_seed_and_iteration(tmp_path):
    from hytver_dist.sweep.driver import write_curves
    from hytver_dist.sweep.search import TrialSpec

    frame = pd.DataFrame({"iteration": [5, 10, 5, 10, 15], "seed": [0, 0, 0, 0, 0],
                          "train_loss": [1.0, 0.9, 1.0, 0.8, 0.7],
                          "val_dice": [0.1, 0.2, 0.1, 0.25, 0.3], "trial_id": "x"})
    spec = TrialSpec(loss="dice", params={"smooth": 1.0}, seeds=(0,), arm_id="dice")
    write_curves(_FakeResult(frame), spec, "dice-seed0-x", tmp_path / "curves.csv")
    out = pd.read_csv(tmp_path / "curves.csv")
    assert list(out.columns) == ["trial", "loss", "params", "seed", "iteration", "train_loss",
                                 "val_dice"]
    # A restart repeated iterations 5 and 10: the later report of each is kept.
    assert out["iteration"].tolist() == [5, 10, 15] and out["val_dice"].tolist() == [0.1, 0.25,
                                                                                     0.3]
    assert out["params"].iloc[0] == '{"smooth": 1.0}'
    write_curves(_FakeResult(pd.DataFrame()), spec, "t", tmp_path / "none.csv")
    assert not (tmp_path / "none.csv").exists()
