"""Synthetic data: determinism, lesion statistics, MSSEG-2 layout, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from hytver_dist.data import (
    BASELINE_NAME,
    FOLLOWUP_NAME,
    MASK_NAME,
    discover_cases,
    load_case,
    synth,
)

CONN26 = np.ones((3, 3, 3), bool)


def test_plan_statistics_over_many_seeds() -> None:
    plans = [synth.plan_case(synth.case_rng(seed, 0)) for seed in range(3000)]
    negative = np.mean([p.negative for p in plans])
    assert abs(negative - 11 / 40) < 0.03
    assert all(len(p.new_volumes) == 0 for p in plans if p.negative)
    counts = np.array([len(p.new_volumes) for p in plans if not p.negative])
    assert counts.min() == 1 and counts.max() <= 30
    assert 4.3 < counts.mean() < 6.0 and np.median(counts) == 3  # MSSEG-2: 5.2 / 3
    assert 0.25 < np.mean(counts == 1) < 0.42  # MSSEG-2: 10 of 29
    vols = np.concatenate([p.new_volumes for p in plans])
    assert vols.min() >= 2 and 20 <= np.median(vols) <= 40
    assert np.mean(vols <= 6) > 0.03  # lesions of a few voxels exist
    old = np.array([len(p.old_volumes) for p in plans])
    assert old.min() == 3 and old.max() == 12


def _arrays(case_dir: Path) -> list[np.ndarray]:
    return [np.asarray(nib.load(case_dir / n).dataobj)
            for n in (BASELINE_NAME, FOLLOWUP_NAME, MASK_NAME)]  # fmt: skip


def test_deterministic_per_seed(tmp_path: Path) -> None:
    infos = [synth.generate_case(tmp_path / d, "x", synth.case_rng(s, 0), size="tiny")
             for d, s in (("a", 5), ("b", 5), ("c", 6))]  # fmt: skip
    a, b, c = (_arrays(tmp_path / d / "x") for d in "abc")
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert infos[0] == infos[1]
    assert not np.array_equal(a[1], c[1])


def test_dataset_layout_and_lesions(synth_dataset: Path) -> None:
    manifest = json.loads((synth_dataset / "manifest.json").read_text())
    infos = {c["id"]: c for c in manifest["cases"]}
    assert len(infos) == 4 and sum(c["negative"] for c in infos.values()) == 1
    for files in discover_cases(synth_dataset):
        case = load_case(files, require_mask=True)  # passes the validating loader
        info = infos[case.id]
        assert nib.aff2axcodes(case.affine) == tuple(info["axcodes"])
        np.testing.assert_allclose(case.spacing, [4.0] * 3)
        labels, n = ndimage.label(case.mask, CONN26)
        assert n == info["n_new"]
        assert sorted(np.bincount(labels.ravel())[1:]) == sorted(info["new_volumes"])
        assert info["n_old"] >= 1
        if info["negative"]:
            assert n == 0
            continue
        assert n >= 1
        # New lesions are bright at follow-up only (images normalised by their head median).
        lesion = case.mask.astype(bool)
        t1, t2 = (v / np.median(v[v > 0.3 * np.percentile(v, 99)])
                  for v in (case.baseline, case.followup))  # fmt: skip
        assert t2[lesion].mean() - t1[lesion].mean() > 0.25
        assert t1[lesion].mean() < 1.2


def test_cli_writes_msseg2_layout(tmp_path: Path, capsys) -> None:
    synth.main(["--out", str(tmp_path), "--cases", "1", "--seed", "3", "--size", "tiny",
                "--negatives", "1"])  # fmt: skip
    assert "wrote 1 cases" in capsys.readouterr().out
    names = sorted(p.name for p in (tmp_path / "syn000").iterdir())
    assert names == sorted([BASELINE_NAME, FOLLOWUP_NAME, MASK_NAME])
    assert load_case(tmp_path / "syn000").mask.sum() == 0


def test_procedural_anatomy(tmp_path: Path) -> None:
    info = synth.generate_case(tmp_path, "p", synth.case_rng(0, 0), size="tiny",
                               anatomy="procedural", negative=False)  # fmt: skip
    case = load_case(tmp_path / "p")
    assert info.n_new >= 1 and case.mask.sum() == sum(info.new_volumes)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        synth.generate_dataset(tmp_path, 1, 0, size="huge")
    with pytest.raises(ValueError):
        synth.generate_dataset(tmp_path, 2, 0, size="tiny", n_negative=3)


def test_mni_templates_ship_offline() -> None:
    assert synth._nilearn_data_dir() is not None, "nilearn (a dependency) ships the templates"
    a = synth.template_anatomy("tiny", "mni")
    assert a.gm.shape == (43, 52, 42)
    brain = (a.gm + a.wm + a.csf) > 0.5
    assert 0.15 < brain.mean() < 0.5
    assert {1, 2, 3} <= set(np.unique(a.region))
