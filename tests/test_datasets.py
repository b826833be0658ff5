"""nnU-Net v2 raw datasets in training: label-map resampling and its inverse, preprocessing and
the cache, CT statistics from the training cases only, splits from a file, patches of any
channel count, inference output values and geometry, and sweeps end to end on embedded Ray
(3 classes, 3 regions, and a dataset written by another tool)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from hytver_dist.data import PatchConfig, PatchSampler
from hytver_dist.data.nnunet_prep import labels_to_original_grid, resample_labels
from hytver_dist.data.preprocess import _target_grid
from hytver_dist.run.config import ConfigError, RunConfig
from hytver_dist.run.evaluate import predict_labels, save_label_map
from hytver_dist.run.prepare import data_format, prepare_data
from hytver_dist.run.train import RunSpec, build_loss, loss_target, model_kwargs

ROOT = Path(__file__).resolve().parent.parent
SHAPE = (40, 44, 36)


def write_dataset(root: Path, n: int = 6, *, ending: str = ".nii", ct: bool = True,
                  regions: bool = False) -> Path:
    """An nnU-Net v2 raw dataset written with nibabel alone (as another tool would): LPS
    orientation, 3 x 3 x 4 mm voxels, two channels (the second CT-like in Hounsfield units),
    two labels in separate blobs per case (the last case has none)."""
    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.diag([-3.0, -3.0, 4.0, 1.0])
    affine[:3, 3] = [60.0, 66.0, -72.0]
    grid = np.indices(SHAPE)
    for i in range(n):
        label = np.zeros(SHAPE, np.uint8)
        if i < n - 1:
            for value, centre in ((1, (12 + i, 14, 18)), (2, (28, 30 - i, 16))):
                r = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)))
                label[r <= 3.5] = value
        body = np.sqrt(((grid[0] - 20) / 18) ** 2 + ((grid[1] - 22) / 20) ** 2
                       + ((grid[2] - 18) / 16) ** 2) < 1
        mr = body * 100.0 + label * 60.0 + rng.normal(0, 5, SHAPE)
        hu = np.where(body, 40.0, -1000.0) + label * 30.0 + rng.normal(0, 10, SHAPE)
        for c, vol in enumerate((mr, hu)):
            nib.save(nib.Nifti1Image(vol.astype(np.float32), affine),
                     root / "imagesTr" / f"pt{i:02d}_{c:04d}{ending}")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"pt{i:02d}{ending}")
    labels: dict = ({"background": 0, "any": [1, 2], "second": 2} if regions
                    else {"background": 0, "first": 1, "second": 2})
    meta = {"channel_names": {"0": "T2", "1": "CT" if ct else "T1"}, "labels": labels,
            "numTraining": n, "file_ending": ending, "name": "written by another tool"}
    if regions:
        meta["regions_class_order"] = [1, 2]
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def config(path: Path | None = None, name: str = "nn", **sections) -> dict:
    cfg = {"name": name, "data": {"path": str(path) if path else None,
                                  "split": {"n_test": 2, "n_val": 1}},
           "model": {"n_filters": 4},
           "training": {"iterations": 2, "eval_every": 1, "checkpoint_every": 1,
                        "batch_size": 1, "val_patch_overlap": 0.0},
           "search": {"losses": ["dice"], "seeds": [0]}}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg


# ----------------------------------------------------------------------- label resampling


def test_resample_labels_keeps_every_labels_lesions_and_maps_back_to_values():
    label = np.zeros((20, 20, 20), np.uint8)
    label[2:12, 2:12, 2:12] = 1
    label[6, 6, 6] = 2  # one voxel of label 2 inside label 1: lost by a majority vote
    label[15, 15, 15] = 3  # a lone voxel of label 3
    scale, offset, shape = _target_grid(label.shape, (1, 1, 1), (2.5, 2.5, 2.5))
    down = resample_labels(label, scale, offset, shape)
    assert set(np.unique(down)) == {0, 1, 2, 3}
    assert abs(int((down == 1).sum()) * 2.5**3 - 999) < 250  # the big label keeps its volume
    # Identity grid: exact.
    assert np.array_equal(resample_labels(label, (1, 1, 1), (0, 0, 0), label.shape), label)


def test_prepared_nnunet_cases_and_inverse_map(tmp_path):
    data_dir = write_dataset(tmp_path / "ds")
    cfg = RunConfig.load(config(data_dir, data={"preprocessing": {"target_spacing": [4, 4, 4]}}))
    data = prepare_data(cfg.data, cache_dir=tmp_path / "cache")
    assert data.dataset.kind == "labels" and data.dataset.outputs == ("background", "first",
                                                                      "second")
    assert data.dataset.in_channels == 2 and data.dataset.out_channels == 3
    case = data.cases["pt00"]
    assert case.image.shape[0] == 2 and case.meta.spacing == (4.0, 4.0, 4.0)
    assert set(np.unique(case.mask)) == {0, 1, 2}
    # Back on the file's grid: the file's shape and label values, lesions where they were.
    back = labels_to_original_grid(np.asarray(case.mask), case.meta)
    gt = np.asarray(nib.load(data_dir / "labelsTr" / "pt00.nii").dataobj)
    assert back.shape == gt.shape and set(np.unique(back)) == {0, 1, 2}
    for v in (1, 2):
        overlap = ((back == v) & (gt == v)).sum() / (gt == v).sum()
        assert overlap > 0.6, (v, overlap)
    # A second preparation reads the cache (memory-mapped arrays).
    again = prepare_data(cfg.data, cache_dir=tmp_path / "cache")
    assert isinstance(again.cases["pt01"].mask, np.memmap)


def test_ct_channel_uses_training_statistics_only(tmp_path):
    data_dir = write_dataset(tmp_path / "ds")
    cfg = RunConfig.load(config(data_dir))
    data = prepare_data(cfg.data, cache_dir=tmp_path / "cache")
    stats = data.dataset.ct[1]
    # Foreground (label > 0) HU of the training cases: 40 + 30 * label, noise sd 10.
    assert 60 < stats.mean < 110 and stats.lower < stats.mean < stats.upper
    train = [data.cases[i] for i in data.split.train]
    fg = np.concatenate([np.asarray(c.image[1])[np.asarray(c.mask) > 0] for c in train])
    assert abs(fg.mean()) < 0.2  # z-scored with those statistics
    # The MR channel is z-scored per case.
    mr = np.asarray(data.cases["pt03"].image[0])
    assert abs(mr.mean()) < 1e-3 and abs(mr.std() - 1) < 1e-3


def test_split_from_file_and_fold(tmp_path):
    data_dir = write_dataset(tmp_path / "ds")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["pt00", "pt01", "pt02"], "val": ["pt03"],
                                 "test": ["pt04", "pt05"]}))
    cfg = RunConfig.load(config(data_dir, data={"split": {"preset": "file", "file": str(split)}}))
    data = prepare_data(cfg.data, cache_dir=tmp_path / "cache")
    assert data.split.test == ("pt04", "pt05") and data.split.val == ("pt03",)
    folds = tmp_path / "splits_final.json"
    folds.write_text(json.dumps([{"train": ["pt00", "pt01", "pt02", "pt03"],
                                  "val": ["pt04", "pt05"]},
                                 {"train": ["pt02", "pt03", "pt04", "pt05"],
                                  "val": ["pt00", "pt01"]}]))
    cfg = RunConfig.load(config(data_dir, data={"split": {"preset": "file", "file": str(folds),
                                                       "fold": 1, "n_val": 1}}))
    data = prepare_data(cfg.data, cache_dir=tmp_path / "cache")
    assert data.split.test == ("pt00", "pt01") and len(data.split.val) == 1
    with pytest.raises(ConfigError, match="split.file"):
        RunConfig.load(config(data_dir, data={"split": {"preset": "file"}}))
    with pytest.raises(ConfigError, match="n_test"):
        RunConfig.load(config(data_dir, data={"split": {"preset": "file", "file": "x",
                                                     "n_test": 2}}))


def test_format_is_detected_and_can_be_forced(tmp_path):
    data_dir = write_dataset(tmp_path / "ds")
    assert data_format(RunConfig.load(config(data_dir)).data, data_dir) == "nnunet"
    assert data_format(RunConfig.load(config(tmp_path)).data, tmp_path) == "msseg2"
    forced = RunConfig.load(config(tmp_path, data={"format": "nnunet"}))
    with pytest.raises(Exception, match="dataset.json"):
        prepare_data(forced.data, cache_dir=tmp_path / "cache")


# ------------------------------------------------------------------------ training pieces


def test_patches_have_the_datasets_channels_and_label_values(tmp_path):
    data = prepare_data(RunConfig.load(config(write_dataset(tmp_path / "ds"))).data,
                        cache_dir=tmp_path / "cache")
    train = data.part("train")
    sampler = PatchSampler(train, PatchConfig(patch_size=16))
    rng = np.random.default_rng(0)
    labels_seen = set()
    for _ in range(10):
        for index, case in enumerate(train):
            image, mask = sampler.sample(rng, index)
            assert image.shape == (2, 16, 16, 16) and mask.shape == (1, 16, 16, 16)
            labels_seen |= {int(v) for v in np.unique(mask)}
            assert mask.any() == case.has_lesions  # lesion-centred where there are lesions
    assert labels_seen == {0, 1, 2}


def test_targets_and_model_follow_the_dataset(tmp_path):
    for regions, kind, out in ((False, "labels", 3), (True, "regions", 2)):
        root = write_dataset(tmp_path / kind, regions=regions)
        cfg = RunConfig.load(config(root))
        data = prepare_data(cfg.data, cache_dir=tmp_path / "cache")
        assert data.dataset.kind == kind
        kwargs = model_kwargs(cfg.model, data.dataset)
        assert (kwargs["in_channels"], kwargs["out_channels"]) == (2, out)
        mask = torch.tensor([0, 1, 2, 2]).reshape(1, 1, 4, 1, 1)
        loss = build_loss(RunSpec.from_config(cfg, "dice", 0), data.dataset)
        target = loss_target(mask, data.dataset, getattr(loss, "activation", "sigmoid"))
        if regions:  # any = {1, 2}, second = {2}
            assert target[0, :, :, 0, 0].tolist() == [[0, 1, 1, 1], [0, 0, 1, 1]]
        else:  # classes: softmax by default, the label map itself as the target
            assert loss.activation == "softmax"
            assert target.dtype == torch.long and target.flatten().tolist() == [0, 1, 2, 2]
            sig = build_loss(RunSpec.from_config(RunConfig.load(config(
                root, training={"loss_activation": "sigmoid"})), "dice", 0), data.dataset)
            onehot = loss_target(mask, data.dataset, sig.activation)
            assert onehot[0, :, :, 0, 0].tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]]
    with pytest.raises(ValueError, match="softmax needs mutually exclusive classes"):
        build_loss(RunSpec.from_config(RunConfig.load(config(
            root, training={"loss_activation": "softmax"})), "dice", 0), data.dataset)


class _Constant(nn.Module):
    """Logits favouring one output channel everywhere (a stand-in trained model)."""

    def __init__(self, in_channels: int, out_channels: int, winner: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.fill_(-5.0)
            self.conv.bias[winner] = 5.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.mark.parametrize("regions", [False, True])
def test_inference_writes_label_values_on_the_input_grid(tmp_path, regions):
    root = write_dataset(tmp_path / "ds", regions=regions)
    cfg = RunConfig.load(config(root, data={"preprocessing": {"target_spacing": [4, 4, 4]}}))
    data = prepare_data(cfg.data, cache_dir=tmp_path / "cache")
    case = data.cases["pt00"]
    ds = data.dataset
    if regions:  # only the first region on: painted with regions_class_order[0] = 1
        model, activation, expected = _Constant(2, 2, 0), "sigmoid", 1
    else:
        model, activation, expected = _Constant(2, 3, 2), "softmax", 2
    pred, native = predict_labels(model, case, cfg.training, ds, activation)
    src = nib.load(root / "imagesTr" / "pt00_0000.nii")
    assert native.shape == src.shape and native.dtype == np.uint8
    assert set(np.unique(native)) <= {0, expected} and (native == expected).mean() > 0.5
    path = save_label_map(native, case, tmp_path / "pred")
    img = nib.load(path)
    assert np.allclose(img.affine, src.affine) and img.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(img.dataobj), native)


# --------------------------------------------------------------------- sweeps end to end


def _sweep(tmp_path: Path, cfg: dict, *extra: str) -> Path:
    """``python -m hytver_dist.sweep`` on its own embedded Ray; returns the results dir."""
    path = tmp_path / "sweep.yaml"
    cfg = {**cfg, "storage": {"path": str(tmp_path / "storage")},
           "resources": {"max_failures": 0, "controller_failure_limit": 0}}
    path.write_text(yaml.safe_dump(cfg))
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "hytver_dist.sweep", "--config", str(path),
                          "--cache", str(tmp_path / "cache"), "--num-cpus", "2", *extra],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return tmp_path / "storage" / cfg["name"] / "results"


def _check_per_class(results: Path, classes: list[str]) -> pd.DataFrame:
    for trial in (results / "trials").iterdir():
        cases = pd.read_csv(trial / "cases.csv", dtype={"case": str})
        assert list(cases["class"].unique()) == classes
        assert len(cases) == 2 * len(classes)  # 2 test cases x classes
    t1 = pd.read_csv(results / "report" / "table1.csv")
    assert list(t1["class"].unique()) == [*classes, "mean over foreground classes"]
    dice = t1[t1["metric"] == "dice"]
    assert dice["mean"].between(0, 1).all()
    summary = (results / "report" / "summary.md").read_text()
    for name in classes:
        assert f"### {name}" in summary
    return t1


@pytest.mark.slow
@pytest.mark.timeout(1000)
def test_three_class_sweep_end_to_end_on_embedded_ray(tmp_path):
    results = _sweep(tmp_path, config(
        None, name="classes", data={"format": "nnunet", "synthetic": {
            "n_cases": 6, "size": "tiny", "classes": 3, "n_negative": 0}},
        search={"losses": ["dice", "hytver"], "seeds": [0]}))
    _check_per_class(results, ["class1", "class2"])
    paired = pd.read_csv(results / "report" / "paired_vs_hytver.csv")
    assert paired["method"].tolist() == ["dice"] and paired["n_pairs"].iloc[0] == 2


@pytest.mark.slow
@pytest.mark.timeout(1000)
def test_three_region_sweep_end_to_end_on_embedded_ray(tmp_path):
    results = _sweep(tmp_path, config(
        None, name="regions", data={"format": "nnunet", "synthetic": {
            "n_cases": 6, "size": "tiny", "regions": True, "n_negative": 0}},
        search={"losses": ["dice", "hytver"], "seeds": [0]}))
    _check_per_class(results, ["whole", "core", "centre"])


@pytest.mark.slow
@pytest.mark.timeout(1000)
def test_dataset_written_by_another_tool_runs_through_the_cli(tmp_path):
    root = write_dataset(tmp_path / "Dataset042_Other")
    cfg = config(None, name="other", search={"losses": ["dice"], "seeds": [0]})
    results = _sweep(tmp_path, cfg, "--data", str(root))
    _check_per_class(results, ["first", "second"])


def _train_cli(tmp_path: Path) -> tuple[Path, Path]:
    """(dataset folder, run directory) of a 2-iteration ``train`` run on it."""
    from hytver_dist.run import train_cli

    root = write_dataset(tmp_path / "ds")
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(config(root)))
    run = tmp_path / "run"
    assert train_cli.main(["--config", str(cfg_path), "--loss", "dice", "--out", str(run),
                           "--cache", str(tmp_path / "cache"), "--no-progress"]) == 0
    return root, run


def test_train_then_evaluate_cli_writes_label_maps(tmp_path):
    from hytver_dist.run import evaluate

    root, run = _train_cli(tmp_path)
    assert evaluate.main(["--run", str(run), "--cache", str(tmp_path / "cache")]) == 0
    cases = pd.read_csv(run / "eval-test" / "cases.csv", dtype={"case": str})
    assert cases.groupby("case")["class"].apply(list).tolist() == [["first", "second"]] * 2
    for case in cases["case"].unique():
        img = nib.load(run / "eval-test" / "predictions" / f"{case}.nii.gz")
        src = nib.load(root / "imagesTr" / f"{case}_0000.nii")
        assert img.shape == src.shape and np.allclose(img.affine, src.affine)
        assert set(np.unique(np.asarray(img.dataobj))) <= {0, 1, 2}


def test_report_gives_each_class_and_the_mean_over_foreground_classes(tmp_path):
    from hytver_dist.report.build import build_report

    rng = np.random.default_rng(0)
    for loss, offset in (("hytver", 0.0), ("dice", 0.1)):
        rows = []
        for seed in (0, 1):
            for case in range(6):
                for cls, present in (("a", True), ("b", case % 2 == 0)):
                    dice = 0.5 + offset + 0.01 * rng.random() if present else np.nan
                    rows.append({"trial": f"{loss}-t", "loss": loss, "seed": seed, "params": "{}",
                                 "case": f"c{case}", "class": cls, "has_lesions": present,
                                 "dice": dice, "pred_volume_mm3": 10.0,
                                 **{m: 0.5 for m in ("jaccard", "precision", "recall", "hd",
                                                     "hd95", "asd", "assd", "hd95_vox",
                                                     "asd_vox", "lesion_f1",
                                                     "lesion_sensitivity", "lesion_ppv",
                                                     "n_gt_lesions", "n_pred_lesions",
                                                     "gt_volume_mm3")},
                                 "fp_lesions": np.nan if present else 0.0,
                                 "fp_volume_mm3": np.nan if present else 0.0})
        d = tmp_path / "results" / "trials" / f"{loss}-t"
        d.mkdir(parents=True)
        pd.DataFrame(rows).to_csv(d / "cases.csv", index=False)
    build_report(tmp_path / "results")
    report = tmp_path / "results" / "report"
    t1 = pd.read_csv(report / "table1.csv")
    assert list(t1["class"].unique()) == ["a", "b", "mean over foreground classes"]
    dice = t1[t1["metric"] == "dice"].set_index(["class", "method"])["mean"]
    cases = pd.read_csv(report / "cases.csv")
    for method in ("hytver", "dice"):
        sub = cases[(cases["method"] == method) & cases["has_lesions"]]
        per_case = sub.groupby(["seed", "case"])["dice"].mean()  # over the classes present
        assert dice["mean over foreground classes", method] == pytest.approx(per_case.mean())
        assert dice["b", method] == pytest.approx(sub.loc[sub["class"] == "b", "dice"].mean())
    paired = pd.read_csv(report / "paired_vs_hytver.csv")
    assert paired["n_pairs"].tolist() == [6]  # cases, not (case, class) pairs
    assert paired["median_diff"].iloc[0] == pytest.approx(0.1, abs=0.02)


def test_sweep_preflight_reads_nnunet_folders(tmp_path):
    from hytver_dist.data import DataError
    from hytver_dist.sweep.preflight import check_data_dir

    root = write_dataset(tmp_path / "ds")
    check_data_dir(root, "--data", "nnunet")  # a valid dataset passes
    (root / "imagesTr" / "pt02_0001.nii").unlink()
    with pytest.raises(DataError, match=r"pt02.*channel 1 \(CT\) missing"):
        check_data_dir(root, "--data", "nnunet")


def test_per_class_rows_are_not_taken_for_repeated_rows():
    from hytver_dist.report.build import drop_repeated_rows

    rows = pd.DataFrame({"trial": ["t", "t", "u", "u"], "loss": "dice", "params": "{}",
                         "seed": 0, "case": "c1", "class": ["a", "b", "a", "b"],
                         "dice": [0.1, 0.2, 0.1, 0.2]})
    kept, notes = drop_repeated_rows(rows, "here")
    assert kept["trial"].tolist() == ["t", "t"] and len(notes) == 1


def test_predict_cli_on_an_imagesTs_folder_writes_label_maps(tmp_path):
    from hytver_dist.run import predict

    root, run = _train_cli(tmp_path)
    scans = tmp_path / "imagesTs"
    scans.mkdir()
    for c in (0, 1):  # a new case: one of the training images under another name
        (scans / f"new_{c:04d}.nii").write_bytes(
            (root / "imagesTr" / f"pt03_{c:04d}.nii").read_bytes())
    out = tmp_path / "pred"
    assert predict.main(["--model", str(run), "--scans", str(scans), "--out", str(out)]) == 0
    table = pd.read_csv(out / "predictions.csv")
    assert table["class"].tolist() == ["first", "second"]
    img = nib.load(out / "new.nii.gz")
    assert img.shape == SHAPE and set(np.unique(np.asarray(img.dataobj))) <= {0, 1, 2}
    (scans / "new_0001.nii").unlink()
    with pytest.raises(SystemExit, match=r"case new: channels \[0\]; the model takes 2"):
        predict.main(["--model", str(run), "--scans", str(scans), "--out", str(out)])


def test_pretrain_key_of_msseg2_sweeps_ignores_the_new_data_keys_at_their_defaults():
    from hytver_dist.run.pretrain import _data_key

    plain = _data_key(RunConfig.load({"name": "x"}))
    assert "format" not in plain and "classes" not in plain["synthetic"]
    assert "file" not in plain["split"]
    nn = _data_key(RunConfig.load({"name": "x", "data": {"format": "nnunet",
                                                      "synthetic": {"regions": True}}}))
    assert nn["format"] == "nnunet" and nn["synthetic"]["regions"] is True
