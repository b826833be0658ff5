"""collect_results: Tune results -> per-trial cases.csv / status.json (no Ray needed)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from hytver_dist.report import build_report
from hytver_dist.sweep import collect_results


@dataclass
class FakeResult:
    path: str
    config: dict
    metrics: dict = field(default_factory=dict)
    error: Exception | None = None


def config(loss, seed, **params):
    seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed]
    return {"seeds": seeds, "arm": {"id": loss, "loss": loss, "loss_params": params}}


def rows(dice):
    return pd.DataFrame([
        {"case": "013", "has_lesions": True, "dice": dice, "jaccard": dice / 2,
         "precision": 0.5, "recall": 0.5, "hd": 9.0, "hd95": 5.0, "asd": 1.0, "assd": 1.0,
         "hd95_vox": 7.0, "asd_vox": 1.5, "lesion_f1": 0.5, "lesion_sensitivity": 0.5,
         "lesion_ppv": 0.5, "n_gt_lesions": 2, "n_pred_lesions": 2, "fp_lesions": float("nan"),
         "fp_volume_mm3": float("nan"), "gt_volume_mm3": 100.0, "pred_volume_mm3": 90.0},
        {"case": "015", "has_lesions": False, "dice": 0.0, "jaccard": 0.0, "precision": 0.0,
         "recall": float("nan"), "hd": float("nan"), "hd95": float("nan"),
         "asd": float("nan"), "assd": float("nan"), "hd95_vox": float("nan"),
         "asd_vox": float("nan"), "lesion_f1": float("nan"),
         "lesion_sensitivity": float("nan"), "lesion_ppv": 0.0, "n_gt_lesions": 0,
         "n_pred_lesions": 1, "fp_lesions": 1, "fp_volume_mm3": 12.0, "gt_volume_mm3": 0.0,
         "pred_volume_mm3": 12.0}])


def finished(storage: Path, trial_id: str, dice: float, seeds=(0,)) -> dict:
    """What a finished trial leaves: cases.csv (rows of each seed it trained) in its run
    directory, a final Tune result."""
    (storage / f"train-{trial_id}").mkdir(parents=True)
    frame = pd.concat([rows(dice).assign(seed=s) for s in seeds], ignore_index=True)
    frame.to_csv(storage / f"train-{trial_id}" / "cases.csv", index=False)
    return {"trial_id": trial_id, "done_training": 1, "best_val_dice": dice - 0.1,
            "best_iteration": 20}


def trial_status(results: Path, trial: str) -> dict:
    """The ``status.json`` that collect_results wrote for ``trial``."""
    return json.loads((results / "trials" / trial / "status.json").read_text())


def test_ok_failed_and_stopped_trials(tmp_path: Path):
    storage = tmp_path / "storage"
    grid = [
        FakeResult("/x/hytver-seed0-a_00000", config("hytver", 0, alpha=0.7),
                   finished(storage, "a_00000", 0.8)),
        FakeResult("/x/dice-seed0-a_00001", config("dice", 0),
                   finished(storage, "a_00001", 0.6)),
        FakeResult("/x/ce-seed0-a_00002", config("ce", 0),
                   error=RuntimeError("Training failed:\nDataError: /d/syn005/flair.nii.gz: "
                                      "truncated gzip")),
        FakeResult("/x/focal-seed0-a_00003", config("focal", 0),
                   {"iteration": 6, "val_dice": 0.1}),
    ]
    ok, not_ok = collect_results(grid, tmp_path, str(storage))
    assert (ok, not_ok) == (2, 2)
    trials = tmp_path / "trials"
    cases = pd.read_csv(trials / "hytver-seed0-a_00000" / "cases.csv", dtype={"case": str})
    assert list(cases.columns[:5]) == ["trial", "loss", "seed", "params", "case"]
    assert json.loads(cases["params"][0]) == {"alpha": 0.7}
    assert list(cases["case"]) == ["013", "015"] and cases["dice"][0] == 0.8
    failed = trial_status(tmp_path, "ce-seed0-a_00002")
    assert failed["status"] == "failed" and "syn005/flair.nii.gz" in failed["error"]
    stopped = trial_status(tmp_path, "focal-seed0-a_00003")
    assert stopped["status"] == "stopped" and "iteration 6" in stopped["error"]
    assert not (trials / "focal-seed0-a_00003" / "cases.csv").exists()

    summary = build_report(tmp_path).read_text()
    assert "1 trial(s) failed or wrote no cases, 1 stopped early" in summary
    listed = pd.read_csv(tmp_path / "report" / "failed_trials.csv")
    assert sorted(listed["status"]) == ["failed", "stopped"]


def test_interrupted_skips_unfinished_trials(tmp_path: Path):
    grid = [FakeResult("/x/dice-seed1-b_00000", config("dice", 1), {"iteration": 3})]
    assert collect_results(grid, tmp_path, str(tmp_path / "storage"), interrupted=True) == (0, 0)
    assert not (tmp_path / "trials" / "dice-seed1-b_00000" / "status.json").exists()


def test_finished_trial_without_cases_file_is_failed(tmp_path: Path):
    grid = [FakeResult("/x/dice-seed0-c_00000", config("dice", 0),
                       {"trial_id": "c_00000", "done_training": 1, "val_dice": 0.5})]
    assert collect_results(grid, tmp_path, str(tmp_path / "storage")) == (0, 1)
    status = trial_status(tmp_path, "dice-seed0-c_00000")
    assert status["status"] == "failed" and "train-c_00000/cases.csv" in status["error"]


def test_trial_of_several_seeds_keeps_each_seeds_rows(tmp_path: Path):
    storage = tmp_path / "storage"
    grid = [FakeResult("/x/dice-seed0_1-d_00000", config("dice", [0, 1]),
                       finished(storage, "d_00000", 0.7, seeds=(0, 1))),
            FakeResult("/x/ce-seed0_1-d_00001", config("ce", [0, 1]),
                       finished(storage, "d_00001", 0.7, seeds=(0,)))]
    assert collect_results(grid, tmp_path, str(storage)) == (1, 1)
    cases = pd.read_csv(tmp_path / "trials" / "dice-seed0_1-d_00000" / "cases.csv",
                        dtype={"case": str})
    assert list(cases.columns[:5]) == ["trial", "loss", "seed", "params", "case"]
    assert sorted(zip(cases["seed"], cases["case"], strict=True)) == [(0, "013"), (0, "015"),
                                                                      (1, "013"), (1, "015")]
    short = trial_status(tmp_path, "ce-seed0_1-d_00001")
    assert short["status"] == "failed" and "no rows for seed(s) 1" in short["error"]
    assert short["seed"] == "0_1"
    summary = build_report(tmp_path).read_text()  # the report takes both seeds of one trial
    assert "1 trial(s) failed" in summary


def dice_seed0_twice(storage: Path, first: float, second: float) -> list[FakeResult]:
    """Two finished trials of (dice, seed 0), as two runs of one sweep leave them."""
    return [FakeResult(f"/x/dice-seed0-{run}_00000", config("dice", 0),
                       finished(storage, f"{run}_00000", dice))
            for run, dice in (("e", first), ("f", second))]


def test_a_seed_run_twice_is_counted_once(tmp_path: Path):
    """The same sweep run twice into one results folder: two trials of (dice, seed 0)."""
    storage = tmp_path / "storage"
    grid = [*dice_seed0_twice(storage, 0.7, 0.7),
            FakeResult("/x/hytver-seed0-e_00001", config("hytver", 0),
                       finished(storage, "e_00001", 0.8))]
    with pytest.warns(UserWarning, match="'dice-seed0-f_00000' repeats 2 row"):
        assert collect_results(grid, tmp_path, str(storage)) == (3, 0)
    trials = tmp_path / "trials"
    repeat = trial_status(tmp_path, "dice-seed0-f_00000")
    assert repeat["status"] == "duplicate" and "dice-seed0-e_00000" in repeat["note"]
    assert not (trials / "dice-seed0-f_00000" / "cases.csv").exists()
    summary = build_report(tmp_path).read_text()
    assert "1 trial(s) only repeat another trial's rows" in summary
    cases = pd.read_csv(tmp_path / "report" / "cases.csv")
    assert len(cases[cases["loss"] == "dice"]) == 2  # 2 cases x 1 seed, not 4
    t1 = pd.read_csv(tmp_path / "report" / "table1.csv")
    assert set(t1.loc[t1["method"] == "dice", "n"]) == {1}  # the 1 case with new lesions


def test_a_seed_run_twice_with_other_values_is_an_error_naming_both(tmp_path: Path):
    storage = tmp_path / "storage"
    grid = dice_seed0_twice(storage, 0.7, 0.6)
    assert collect_results(grid, tmp_path, str(storage)) == (1, 1)
    status = trial_status(tmp_path, "dice-seed0-f_00000")
    assert status["status"] == "failed"
    assert ("trials 'dice-seed0-e_00000' and 'dice-seed0-f_00000' both hold dice {} seed 0 "
            "case '013', with different values (dice: 0.7 vs 0.6)") in status["error"]


def test_report_of_a_results_folder_with_duplicate_trials(tmp_path: Path):
    """Trial folders written by two runs (collected apart): identical rows are counted once
    with a note; rows that differ stop the report, naming both trials."""
    def trial(name: str, dice: float) -> None:
        d = tmp_path / "trials" / name
        d.mkdir(parents=True)
        frame = rows(dice).assign(trial=name, loss="dice", seed=0, params="{}")
        frame.to_csv(d / "cases.csv", index=False)

    trial("dice-seed0-a_00000", 0.7)
    trial("dice-seed0-b_00000", 0.7)
    with pytest.warns(UserWarning, match="counted once, as 'dice-seed0-a_00000'"):
        summary = build_report(tmp_path).read_text()
    assert "trial 'dice-seed0-b_00000' repeats 2 row(s) of trial 'dice-seed0-a_00000'" in summary
    assert len(pd.read_csv(tmp_path / "report" / "cases.csv")) == 2
    trial("dice-seed0-c_00000", 0.5)
    with pytest.raises(ValueError, match=r"trials 'dice-seed0-a_00000' and 'dice-seed0-c_00000' "
                                         r"both hold dice \{\} seed 0 case '013'"):
        build_report(tmp_path)
