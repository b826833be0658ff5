"""The nnU-Net v2 raw reader: layout, every error it names, regions, CT normalisation, and the
synthetic writer."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from hytver_dist.data import DataError
from hytver_dist.data.nnunet import (
    CtStatistics,
    NnunetCase,
    ct_statistics,
    discover_nnunet,
    is_nnunet,
    load_nnunet_case,
    read_dataset_json,
    regions_to_label_map,
)
from hytver_dist.data.nnunet_prep import apply_ct_statistics, preprocess_nnunet
from hytver_dist.data.preprocess import PreprocessConfig
from hytver_dist.data.synth import generate_nnunet_dataset, lesion_depth_labels, main

AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])


def write(path, data, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), path)


def make_dataset(root, n=2, channels=("T2", "ADC"), labels=None, ending=".nii.gz", **extra):
    labels = labels or {"background": 0, "a": 1, "b": 2}
    rng = np.random.default_rng(0)
    for i in range(n):
        for c in range(len(channels)):
            write(root / "imagesTr" / f"c{i}_{c:04d}{ending}",
                  rng.normal(100, 10, (8, 9, 10)).astype(np.float32))
        lab = np.zeros((8, 9, 10), np.uint8)
        lab[2:4, 2:4, 2:4] = 1
        lab[5:7, 5:7, 5:7] = 2
        write(root / "labelsTr" / f"c{i}{ending}", lab)
    meta = {"channel_names": {str(c): n for c, n in enumerate(channels)}, "labels": labels,
            "numTraining": n, "file_ending": ending, **extra}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_reads_a_dataset(tmp_path):
    root = make_dataset(tmp_path)
    assert is_nnunet(root) and not is_nnunet(tmp_path / "imagesTr")
    ds = discover_nnunet(root)
    assert [c.id for c in ds.cases] == ["c0", "c1"]
    assert ds.channel_names == ["T2", "ADC"] and not ds.is_regions
    assert ds.output_names == ["background", "a", "b"] and ds.label_values == {0, 1, 2}
    case = load_nnunet_case(ds, ds.cases[1])
    assert case.image.shape == (2, 8, 9, 10) and case.image.dtype == np.float32
    assert case.label.dtype == np.uint8 and set(np.unique(case.label)) == {0, 1, 2}
    assert case.spacing == (1.5, 1.5, 2.0) and np.allclose(case.affine, AFFINE)


def test_plain_nii_ending(tmp_path):
    ds = discover_nnunet(make_dataset(tmp_path, ending=".nii"))
    assert load_nnunet_case(ds, ds.cases[0]).image.shape[0] == 2


def edit_json(root, **changes):
    meta = json.loads((root / "dataset.json").read_text())
    for k, v in changes.items():
        if v is None:
            meta.pop(k)
        else:
            meta[k] = v
    (root / "dataset.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("changes, message", [
    ({"labels": None}, r"dataset.json: labels: Field required"),
    ({"numTraining": "many"}, r"dataset.json: numTraining: Input should be a valid integer"),
    ({"labels": {"bg": 0, "a": 1}}, r"labels: needs 'background': 0"),
    ({"labels": {"background": 0, "a": 2}}, r"labels: class values must be 0\.\.1 without "
                                            r"gaps or repeats, got \[0, 2\]"),
    ({"labels": {"background": 0, "a": [1, 2]}}, r"regions_class_order is required"),
    ({"labels": {"background": 0, "a": [1, 2], "b": 2}, "regions_class_order": [1]},
     r"regions_class_order: 1 entries for 2 regions"),
    ({"channel_names": {"1": "T2"}}, r"channel_names: .*channel numbers must be 0\.\.0"),
    ({"file_ending": ".mha"}, r"file_ending: '\.mha' is not supported: use one of "
                              r"\['\.nii\.gz', '\.nii'\]"),
    ({"numTraining": 3}, r"numTraining is 3 but labelsTr holds 2 label files"),
])
def test_dataset_json_errors_name_the_key(tmp_path, changes, message):
    root = make_dataset(tmp_path)
    edit_json(root, **changes)
    with pytest.raises(DataError, match=message) as err:
        discover_nnunet(root)
    assert "dataset.json" in str(err.value)


def test_malformed_json(tmp_path):
    root = make_dataset(tmp_path)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match=r"dataset\.json: unreadable JSON"):
        read_dataset_json(root / "dataset.json")


def test_missing_channel_names_case_and_file(tmp_path):
    root = make_dataset(tmp_path)
    (root / "imagesTr" / "c1_0001.nii.gz").unlink()
    with pytest.raises(DataError, match=r"c1_0001\.nii\.gz: case c1: channel 1 \(ADC\) missing"):
        discover_nnunet(root)


def test_other_file_endings_are_refused_by_name(tmp_path):
    root = make_dataset(tmp_path)
    (root / "imagesTr" / "c2_0000.mha").write_bytes(b"x")
    with pytest.raises(DataError, match=r"files not ending in '\.nii\.gz'.*c2_0000\.mha.*only "
                                        r"NIfTI"):
        discover_nnunet(root)


def test_shape_and_affine_mismatches_name_the_file(tmp_path):
    root = make_dataset(tmp_path)
    write(root / "imagesTr" / "c0_0001.nii.gz", np.zeros((8, 9, 11), np.float32))
    ds = discover_nnunet(root)
    with pytest.raises(DataError, match=r"c0_0001\.nii\.gz: shape \(8, 9, 11\) differs from "
                                        r"c0_0000\.nii\.gz"):
        load_nnunet_case(ds, ds.cases[0])
    write(root / "labelsTr" / "c1.nii.gz", np.zeros((8, 9, 10), np.uint8),
          np.diag([1.5, 1.5, 3.0, 1.0]))
    with pytest.raises(DataError, match=r"labelsTr/c1\.nii\.gz: affine differs from c1_0000"):
        load_nnunet_case(ds, ds.cases[1])


def test_undeclared_label_values_name_case_and_values(tmp_path):
    root = make_dataset(tmp_path)
    lab = np.zeros((8, 9, 10), np.uint8)
    lab[1, 1, 1], lab[2, 2, 2] = 2, 7
    write(root / "labelsTr" / "c1.nii.gz", lab)
    ds = discover_nnunet(root)
    with pytest.raises(DataError, match=r"c1\.nii\.gz: case c1: label values \[7\] are not "
                                        r"declared in dataset\.json labels \[0, 1, 2\]"):
        load_nnunet_case(ds, ds.cases[1])


def test_unreadable_image_names_the_file(tmp_path):
    root = make_dataset(tmp_path)
    (root / "imagesTr" / "c0_0000.nii.gz").write_bytes(b"\x1f\x8b broken")
    ds = discover_nnunet(root)
    with pytest.raises(DataError, match=r"c0_0000\.nii\.gz: unreadable or corrupt"):
        load_nnunet_case(ds, ds.cases[0])


def test_test_images_without_labels(tmp_path):
    root = make_dataset(tmp_path)
    shutil.rmtree(root / "labelsTr")
    ds = discover_nnunet(root, require_labels=False)
    assert [c.label for c in ds.cases] == [None, None]
    assert load_nnunet_case(ds, ds.cases[0]).label is None


def test_regions_round_trip(tmp_path):
    labels = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "centre": 3}
    root = make_dataset(tmp_path, labels=labels, regions_class_order=[1, 2, 3])
    ds = discover_nnunet(root)
    assert ds.is_regions and ds.output_names == ["whole", "core", "centre"]
    lab = np.array([0, 1, 2, 3, 3, 1], np.uint8).reshape(1, 1, 6)
    masks = np.stack([np.isin(lab, values) for _, values in ds.regions()])
    assert masks.astype(int).tolist() == [[[[0, 1, 1, 1, 1, 1]]], [[[0, 0, 1, 1, 1, 0]]],
                                          [[[0, 0, 0, 1, 1, 0]]]]
    assert np.array_equal(regions_to_label_map(masks, ds.meta.regions_class_order), lab)


def test_ct_normalisation_uses_training_foreground_statistics():
    rng = np.random.default_rng(1)
    label = np.zeros((20, 20, 20), np.uint8)
    label[5:15, 5:15, 5:15] = 1
    a = rng.normal(40, 10, label.shape)
    a[label == 0] = -1000  # air outside the organ must not enter the statistics
    a[7, 7, 7] = 5000  # an outlier inside is clipped away
    b = rng.normal(60, 5, label.shape)
    stats = ct_statistics([(a, label), (b, label)], channel=0)
    fg = np.concatenate([a[label > 0], b[label > 0]])
    lo, hi = np.percentile(fg, [0.5, 99.5])
    assert stats.lower == pytest.approx(lo) and stats.upper == pytest.approx(hi)
    clipped = np.clip(fg, lo, hi)
    assert stats.mean == pytest.approx(clipped.mean()) and stats.std == pytest.approx(clipped.std())
    # The pipeline: preprocessing z-scores the non-CT channel per case and leaves CT as it is;
    # the training set's statistics clip and z-score CT afterwards.
    case = NnunetCase("x", np.stack([a, b]).astype(np.float32), label, np.eye(4),
                      (1.0, 1.0, 1.0))
    vol = preprocess_nnunet(case, ["CT", "T1"], PreprocessConfig(target_spacing=None))
    assert vol.image[0].max() == pytest.approx(5000) and vol.image[0].min() == -1000
    assert vol.image[1].mean() == pytest.approx(0, abs=1e-5)
    assert vol.image[1].std() == pytest.approx(1, 1e-4)
    out = apply_ct_statistics(vol, {0: stats}).image
    assert out[0].max() == pytest.approx((hi - stats.mean) / stats.std, rel=1e-5)
    assert out[0].min() == pytest.approx((lo - stats.mean) / stats.std, rel=1e-5)
    assert np.array_equal(out[1], vol.image[1])
    with pytest.raises(DataError, match="no foreground voxel"):
        ct_statistics([(a, np.zeros_like(label))], channel=0)


def test_ct_statistics_sample_large_foregrounds_reproducibly():
    label = np.ones((30, 30, 30), np.uint8)  # 27,000 voxels > 10,000 sampled per case
    img = np.random.default_rng(2).normal(0, 1, label.shape)
    s1 = ct_statistics([(img, label)], 0)
    assert s1 == ct_statistics([(img, label)], 0) and isinstance(s1, CtStatistics)


def test_lesion_depth_labels_nest():
    mask = np.zeros((9, 9, 9), bool)
    mask[1:8, 1:8, 1:8] = True
    lab = lesion_depth_labels(mask, 3)
    assert lab[0, 0, 0] == 0 and lab[1, 1, 1] == 1 and lab[2, 2, 2] == 2 and lab[4, 4, 4] == 3
    assert lesion_depth_labels(mask, 1).max() == 1


@pytest.mark.parametrize("regions", [False, True])
def test_synthetic_nnunet_dataset_reads_back(tmp_path, regions):
    out = generate_nnunet_dataset(tmp_path / "ds", 3, seed=0, size="tiny", classes=3,
                                  regions=regions, n_negative=1)
    ds = discover_nnunet(out)
    assert len(ds.cases) == 3 and ds.channel_names == ["FLAIR_t1", "FLAIR_t2"]
    assert ds.is_regions == regions
    values = set()
    for files in ds.cases:
        case = load_nnunet_case(ds, files)
        assert case.image.shape[0] == 2 and case.label.shape == case.image.shape[1:]
        values |= {int(v) for v in np.unique(case.label)}
    assert values <= ds.label_values and 1 in values
    assert not any(p.name.startswith("tmp") for p in out.iterdir())


def test_synth_cli_writes_the_nnunet_layout(tmp_path):
    main(["--out", str(tmp_path / "d"), "--cases", "2", "--size", "tiny", "--format", "nnunet",
          "--classes", "4"])
    ds = discover_nnunet(tmp_path / "d")
    assert ds.output_names == ["background", "class1", "class2", "class3"]
    with pytest.raises(ValueError, match="classes must be >= 2"):
        generate_nnunet_dataset(tmp_path / "e", 1, 0, "tiny", classes=1)
