"""Training and evaluation on one machine: end to end on tiny synthetic data, resume,
determinism and errors."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from config_helpers import tiny_run

from hytver_dist.run import evaluate, train, train_cli
from hytver_dist.run.config import RunConfig
from hytver_dist.run.prepare import prepare_data

CONFIG = tiny_run()


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def data(cache):
    return prepare_data(RunConfig.load(CONFIG).data, cache_dir=cache)


def spec(loss="hytver", seed=0, **params):
    return train.RunSpec.from_config(RunConfig.load(CONFIG), loss, seed, params)


def test_prepare_data_splits_and_caches(data, cache):
    s = data.split
    assert (len(s.train), len(s.val), len(s.test)) == (3, 1, 1)
    assert not set(s.train) & (set(s.val) | set(s.test))
    again = prepare_data(RunConfig.load(CONFIG).data, cache_dir=cache)
    assert again.split == data.split and again.root == data.root
    assert len(list(cache.glob("synth-*"))) == 1  # generated once, reused


def test_train_loop_reports_and_checkpoints(data):
    reports = []
    result = train.train_loop(spec(), data, "cpu", report=lambda r, p: reports.append((r, p)))
    assert [r["iteration"] for r, _ in reports] == [2, 4]
    assert all(p is not None for _, p in reports)
    assert 0.0 <= result.best_metric <= 1.0 and result.best_iteration in (2, 4)
    assert set(reports[0][0]) >= {"train_loss", "val_dice", "val_lesion_f1", "best_val_dice"}
    assert np.isfinite(reports[-1][0]["train_loss"])


def test_same_seed_same_run_other_seed_other_run(data):
    a = train.train_loop(spec(seed=3), data, "cpu")
    b = train.train_loop(spec(seed=3), data, "cpu")
    c = train.train_loop(spec(seed=4), data, "cpu")
    assert a.history == b.history
    for k in a.best_state:
        torch.testing.assert_close(a.best_state[k], b.best_state[k], rtol=0, atol=0)
    assert a.history[0]["train_loss"] != c.history[0]["train_loss"]


def test_resume_continues_exactly(data):
    payloads = []
    full = train.train_loop(spec(seed=1), data, "cpu", report=lambda r, p: payloads.append(p))
    resumed = train.train_loop(spec(seed=1), data, "cpu", resume=payloads[0])
    assert resumed.history == full.history
    for k, v in full.best_state.items():
        torch.testing.assert_close(resumed.best_state[k], v, rtol=1e-6, atol=1e-7)


def test_non_finite_loss_stops_with_a_clear_error(data, monkeypatch):
    monkeypatch.setattr(train, "get_loss",
                        lambda *a, **k: (lambda logits, target: logits.sum() * float("nan")))
    with pytest.raises(FloatingPointError, match="'hytver' is nan at iteration 1"):
        train.train_loop(spec(), data, "cpu")


def test_bad_loss_hyperparameter_fails_before_training(data):
    with pytest.raises(ValueError, match="alpha"):
        train.train_loop(spec(alpha=2.0), data, "cpu")


def test_cli_train_then_evaluate(tmp_path, cache, data, capsys):
    cfg_path = tmp_path / "unit.yaml"
    cfg_path.write_text(yaml.safe_dump(CONFIG))
    run = tmp_path / "run"
    argv = ["--config", str(cfg_path), "--loss", "tversky", "--param", "alpha=0.6",
            "--seed", "2", "--out", str(run), "--cache", str(cache), "--no-progress"]
    assert train_cli.main(argv) == 0
    assert {"checkpoint.pt", "best_model.pt", "metrics.csv", "run.json"} <= {
        p.name for p in run.iterdir()}
    rows = pd.read_csv(run / "metrics.csv")
    assert list(rows["iteration"]) == [2, 4]
    with pytest.raises(SystemExit, match="--resume"):  # never overwrite a run silently
        train_cli.main(argv)
    assert train_cli.main([*argv, "--resume"]) == 0  # finished run: nothing left to do
    missing = tmp_path / "no-such-folder"
    with pytest.raises(SystemExit, match=rf"^error: --data: {missing}: data root not found"):
        evaluate.main(["--run", str(run), "--data", str(missing)])

    assert evaluate.main(["--run", str(run), "--cache", str(cache), "--part", "all"]) == 0
    out = run / "eval-all"
    cases = pd.read_csv(out / "cases.csv", dtype={"case": str})
    assert sorted(cases["case"]) == sorted(data.split.train + data.split.val + data.split.test)
    assert {"dice", "hd95", "asd", "lesion_f1", "hd95_vox", "asd_vox", "fp_lesions",
            "has_lesions"} <= set(cases.columns)
    assert (cases["loss"] == "tversky").all() and json.loads(cases["params"][0]) == {
        "alpha": 0.6}
    neg = cases[~cases["has_lesions"]]
    assert len(neg) == 1 and neg["dice"].isna().all() | (neg["dice"] == 0).all()
    # Predictions are saved on the input's grid, with its affine.
    case_id = cases["case"][0]
    pred = nib.load(out / "predictions" / f"{case_id}.nii.gz")
    src = nib.load(data.files[case_id].baseline)
    assert pred.shape == src.shape
    np.testing.assert_allclose(pred.affine, src.affine, atol=1e-5)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1}
    assert "negatives: fp_lesions" in capsys.readouterr().out


def test_resume_without_checkpoint_is_an_error(tmp_path, cache):
    cfg_path = tmp_path / "unit.yaml"
    cfg_path.write_text(yaml.safe_dump(CONFIG))
    with pytest.raises(SystemExit, match="no checkpoint"):
        train_cli.main(["--config", str(cfg_path), "--out", str(tmp_path / "r"), "--resume",
                    "--cache", str(cache)])


def test_missing_data_folder_is_a_clean_error(tmp_path, cache):
    cfg_path = tmp_path / "unit.yaml"
    cfg_path.write_text(yaml.safe_dump(CONFIG))
    missing, out = tmp_path / "no-such-folder", tmp_path / "r"
    with pytest.raises(SystemExit, match=rf"^error: --data: {missing}: data root not found"):
        train_cli.main(["--config", str(cfg_path), "--out", str(out), "--data", str(missing),
                        "--cache", str(cache)])
    assert not out.exists()  # no empty run directory left behind


def test_cli_set_overrides_reach_the_run(tmp_path, cache):
    cfg_path = tmp_path / "unit.yaml"
    cfg_path.write_text(yaml.safe_dump(CONFIG))
    run = tmp_path / "run"
    assert train_cli.main(["--config", str(cfg_path), "--out", str(run), "--cache", str(cache),
                       "--no-progress", "--set", "training.iterations=2",
                       "--set", "training.lr=5e-4", "--set", "model.n_filters=2"]) == 0
    assert list(pd.read_csv(run / "metrics.csv")["iteration"]) == [2]
    saved = json.loads((run / "run.json").read_text())
    assert saved["config"]["training"]["lr"] == 5e-4
    assert saved["spec"]["model"]["n_filters"] == 2
    # evaluate takes --set too, validated against the run's stored config.
    with pytest.raises(SystemExit, match=r"run\.json with --set trainig\.x=1: trainig: unknown "
                       r"key 'trainig' \(did you mean 'training'\?\)"):
        evaluate.main(["--run", str(run), "--set", "trainig.x=1"])


def test_cli_bad_set_fails_before_training(tmp_path, cache):
    cfg_path = tmp_path / "unit.yaml"
    cfg_path.write_text(yaml.safe_dump(CONFIG))
    with pytest.raises(SystemExit, match=rf"{tmp_path}/unit\.yaml with --set training\.itrations"
                       r"=3: training\.itrations: unknown key 'itrations' \(did you mean "
                       r"'iterations'\?\)"):
        train_cli.main(["--config", str(cfg_path), "--out", str(tmp_path / "r"), "--cache",
                    str(cache), "--set", "training.itrations=3"])
    assert not (tmp_path / "r").exists()
