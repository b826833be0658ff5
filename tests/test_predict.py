"""``python -m hytver_dist.predict`` on new scans: the same masks as ``evaluate``, the input's
grid, cases without lesions, and scans that do not match the model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from config_helpers import tiny_run
from torch import nn

from hytver_dist.data import BASELINE_NAME, FOLLOWUP_NAME, MASK_NAME
from hytver_dist.model import VNet, save_atomic
from hytver_dist.run import evaluate, predict, train_cli
from hytver_dist.run.config import RunConfig

CONFIG = tiny_run(iterations=2, val_patch_overlap=0.25)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A run of ``train`` and ``evaluate --part all``, and its cases copied without their
    ground truth."""
    tmp = tmp_path_factory.mktemp("predict")
    cfg_path = tmp / "unit.yaml"
    cfg_path.write_text(yaml.safe_dump(CONFIG))
    run, cache = tmp / "run", tmp / "cache"
    assert train_cli.main(["--config", str(cfg_path), "--out", str(run), "--cache", str(cache),
                           "--no-progress"]) == 0
    assert evaluate.main(["--run", str(run), "--cache", str(cache), "--part", "all"]) == 0
    root = json.loads((run / "run.json").read_text())["config"]["data"]
    data = next(cache.glob("synth-*"))
    scans = tmp / "scans"
    for case in sorted(p for p in data.iterdir() if p.is_dir()):
        shutil.copytree(case, scans / case.name)
        (scans / case.name / MASK_NAME).unlink()
    assert root["path"] is None  # the cases above are the run's synthetic data
    return {"run": run, "scans": scans, "eval": run / "eval-all", "tmp": tmp}


def test_predict_writes_the_masks_evaluate_writes(trained, capsys):
    out = trained["tmp"] / "pred"
    assert predict.main(["--model", str(trained["run"]), "--scans", str(trained["scans"]),
                         "--out", str(out)]) == 0
    cases = sorted(p.name for p in trained["scans"].iterdir())
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in cases]
    voxels = []
    for case in cases:
        ours = nib.load(out / f"{case}.nii.gz")
        theirs = nib.load(trained["eval"] / "predictions" / f"{case}.nii.gz")
        np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))
        np.testing.assert_array_equal(ours.affine, theirs.affine)
        voxels.append(int(np.asarray(ours.dataobj).sum()))
    # The comparison means something: the model predicts some voxels, not all of them.
    size = np.prod(nib.load(out / f"{cases[0]}.nii.gz").shape)
    assert 0 < max(voxels) and min(voxels) < size
    # Lesion counts and volumes as evaluate counts them on the same masks.
    table = pd.read_csv(out / "predictions.csv", dtype={"case": str}).set_index("case")
    scores = pd.read_csv(trained["eval"] / "cases.csv", dtype={"case": str}).set_index("case")
    assert list(table.index) == cases
    np.testing.assert_array_equal(table["lesions"], scores.loc[cases, "n_pred_lesions"])
    np.testing.assert_allclose(table["predicted_volume_mm3"],
                               scores.loc[cases, "pred_volume_mm3"])
    assert list(table["predicted_voxels"]) == voxels
    assert f"{len(cases)} cases" in capsys.readouterr().out


def test_predict_keeps_the_scans_grid(trained):
    """A case stored with its axes permuted and flipped gets its mask on that stored grid
    (shape and affine), and the mask covers the same voxels in the world."""
    case = sorted(trained["scans"].iterdir())[0]
    turned = trained["tmp"] / "turned" / case.name
    turned.mkdir(parents=True)
    ornt = np.array([[1, -1], [2, 1], [0, -1]])  # axes (y, z, x), y and x flipped
    for name in (BASELINE_NAME, FOLLOWUP_NAME):
        img = nib.load(case / name)
        nib.save(img.as_reoriented(ornt), turned / name)
    out = trained["tmp"] / "pred-turned"
    assert predict.main(["--model", str(trained["run"]), "--scans", str(turned.parent),
                         "--out", str(out)]) == 0
    scan = nib.load(turned / BASELINE_NAME)
    mask = nib.load(out / f"{case.name}.nii.gz")
    assert mask.shape == scan.shape != nib.load(case / BASELINE_NAME).shape
    np.testing.assert_allclose(mask.affine, scan.affine, atol=1e-5)
    straight = nib.load(trained["eval"] / "predictions" / f"{case.name}.nii.gz")
    back = np.asarray(mask.as_reoriented(nib.orientations.ornt_transform(
        nib.io_orientation(mask.affine), nib.io_orientation(straight.affine))).dataobj)
    np.testing.assert_array_equal(back, np.asarray(straight.dataobj))


class Nothing(nn.Module):
    """A model that predicts no lesion anywhere."""

    in_channels = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 1, *x.shape[2:]), -10.0)


def test_a_case_without_lesions(trained):
    manifest = next((trained["tmp"] / "cache").glob("synth-*")) / "manifest.json"
    negative = next(c["id"] for c in json.loads(manifest.read_text())["cases"] if c["negative"])
    case = trained["scans"] / negative
    cfg = RunConfig.load(CONFIG)
    out = trained["tmp"] / "pred-empty"
    table = predict.predict_cases(Nothing(), predict.scan_cases(case.parent), cfg, out)
    row = table.set_index("case").loc[case.name]
    assert (row["lesions"], row["lesion_volume_mm3"], row["predicted_voxels"]) == (0, 0.0, 0)
    mask = nib.load(out / f"{case.name}.nii.gz")
    assert mask.shape == nib.load(case / BASELINE_NAME).shape
    assert not np.asarray(mask.dataobj).any()
    assert pd.read_csv(out / "predictions.csv")["lesions"].tolist() == [0] * len(table)


def test_a_scan_with_two_channels_is_refused_naming_case_and_file(trained):
    scans = trained["tmp"] / "two-channels"
    case = sorted(trained["scans"].iterdir())[1]
    shutil.copytree(case, scans / case.name)
    img = nib.load(case / FOLLOWUP_NAME)
    data = np.asarray(img.dataobj)
    nib.save(nib.Nifti1Image(np.stack([data, data], -1), img.affine),
             scans / case.name / FOLLOWUP_NAME)
    out = trained["tmp"] / "pred-two"
    with pytest.raises(SystemExit) as err:
        predict.main(["--model", str(trained["run"]), "--scans", str(scans), "--out", str(out)])
    message = str(err.value)
    assert str(scans / case.name / FOLLOWUP_NAME) in message
    assert f"case {case.name}: the scan holds 2 channels" in message
    assert not list(out.glob("*.nii.gz"))  # refused before any case was computed


def test_a_model_with_other_input_channels_is_refused(trained):
    run = trained["tmp"] / "two-channel-model"
    run.mkdir()
    shutil.copy(trained["run"] / "run.json", run / "run.json")
    payload = torch.load(trained["run"] / "best_model.pt", weights_only=True)
    payload["model"] = VNet(in_channels=2, n_filters=4).state_dict()
    save_atomic(payload, run / "best_model.pt")
    with pytest.raises(SystemExit) as err:
        predict.main(["--model", str(run / "best_model.pt"), "--scans", str(trained["scans"]),
                      "--out", str(trained["tmp"] / "pred-model")])
    message = str(err.value)
    case = sorted(trained["scans"].iterdir())[0]
    assert f"case {case.name}: the model {run / 'best_model.pt'} takes 2 input channels" in message
    assert str(case / BASELINE_NAME) in message and str(case / FOLLOWUP_NAME) in message


def test_a_checkpoint_without_run_json_takes_its_config_from_config(trained, tmp_path):
    shutil.copy(trained["run"] / "checkpoint.pt", tmp_path / "checkpoint.pt")
    with pytest.raises(SystemExit, match="no run.json beside checkpoint.pt; pass --config"):
        predict.main(["--model", str(tmp_path / "checkpoint.pt"), "--scans",
                      str(trained["scans"]), "--out", str(tmp_path / "out")])
    # A checkpoint.pt (as a sweep trial leaves) predicts with its best weights.
    case = sorted(trained["scans"].iterdir())[0]
    (tmp_path / "one").mkdir()
    shutil.copytree(case, tmp_path / "one" / case.name)
    assert predict.main(["--model", str(tmp_path / "checkpoint.pt"), "--scans",
                         str(tmp_path / "one"), "--out", str(tmp_path / "out"),
                         "--config", str(trained["tmp"] / "unit.yaml")]) == 0
    ours = nib.load(tmp_path / "out" / f"{case.name}.nii.gz")
    theirs = nib.load(trained["eval"] / "predictions" / f"{case.name}.nii.gz")
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))
    with pytest.raises(SystemExit, match="not found"):
        predict.main(["--model", str(tmp_path / "nothing"), "--scans", str(trained["scans"]),
                      "--out", str(tmp_path / "out")])


def test_nnunet_imagests_layout(trained):
    """``<case>_0000.nii.gz`` (baseline) and ``<case>_0001.nii.gz`` (follow-up) in one folder
    give the masks of the MSSEG-2 layout; a third channel is refused, naming its file."""
    images = trained["tmp"] / "imagesTs"
    images.mkdir()
    cases = sorted(trained["scans"].iterdir())[:2]
    for case in cases:
        shutil.copy(case / BASELINE_NAME, images / f"{case.name}_0000.nii.gz")
        shutil.copy(case / FOLLOWUP_NAME, images / f"{case.name}_0001.nii.gz")
    out = trained["tmp"] / "pred-nnunet"
    assert predict.main(["--model", str(trained["run"]), "--scans", str(images),
                         "--out", str(out)]) == 0
    for case in cases:
        ours = nib.load(out / f"{case.name}.nii.gz")
        theirs = nib.load(trained["eval"] / "predictions" / f"{case.name}.nii.gz")
        np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))
    third = images / f"{cases[1].name}_0002.nii.gz"
    shutil.copy(cases[1] / FOLLOWUP_NAME, third)
    with pytest.raises(SystemExit) as err:
        predict.main(["--model", str(trained["run"]), "--scans", str(images),
                      "--out", str(trained["tmp"] / "pred-nnunet-3")])
    assert str(err.value).startswith(f"error: {third}: case {cases[1].name}: 3 channel files")
