"""Case discovery, the CoactSeg preset, validation subsets and k-fold."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hytver_dist.data import (
    ALL_CASES,
    COACTSEG_TEST,
    COACTSEG_TRAIN,
    FOLLOWUP_NAME,
    NEGATIVE_CASES,
    DataError,
    coactseg_split,
    discover_cases,
    kfold_splits,
    split_cases,
    split_from_file,
)
from hytver_dist.data.msseg2 import ZIP_SUBDIR


def test_preset_lists() -> None:
    assert len(COACTSEG_TRAIN) == len(set(COACTSEG_TRAIN)) == 32
    assert len(COACTSEG_TEST) == 8
    assert len(ALL_CASES) == 40 and not set(COACTSEG_TRAIN) & set(COACTSEG_TEST)
    assert len(NEGATIVE_CASES) == 11 and NEGATIVE_CASES <= set(COACTSEG_TRAIN)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coactseg_split_carves_validation_from_training(seed: int) -> None:
    s = coactseg_split(n_val=4, seed=seed)
    assert s.test == COACTSEG_TEST
    assert len(s.train) + len(s.val) == 32 and len(s.val) == 4
    assert set(s.train) | set(s.val) == set(COACTSEG_TRAIN)
    assert not set(s.val) & set(s.test) and not set(s.train) & set(s.test)
    assert len(set(s.val) & NEGATIVE_CASES) == 1  # 4 * 11/32 rounds to 1
    assert coactseg_split(n_val=4, seed=seed) == s


def test_coactseg_split_checks_available_cases() -> None:
    with pytest.raises(DataError, match="013"):
        coactseg_split(available=[c for c in ALL_CASES if c != "013"])
    assert coactseg_split(available=ALL_CASES).test == COACTSEG_TEST


def test_split_arbitrary_ids() -> None:
    ids = [f"syn{i:03d}" for i in range(20)]
    s = split_cases(ids, test=5, n_val=0.2, seed=3)
    assert (len(s.train), len(s.val), len(s.test)) == (12, 3, 5)
    assert sorted(s.train + s.val + s.test) == ids
    assert split_cases(ids, test=5, n_val=0.2, seed=4) != s
    fixed = split_cases(ids, test=["syn000", "syn001"], n_val=2, seed=0)
    assert fixed.test == ("syn000", "syn001") and not {"syn000", "syn001"} & set(fixed.val)
    with pytest.raises(ValueError):
        split_cases(ids, test=["nope"])


def test_stratified_split_keeps_proportions() -> None:
    ids = [f"c{i:02d}" for i in range(40)]
    label = {c: i % 4 == 0 for i, c in enumerate(ids)}  # 10 of 40 "negative"
    s = split_cases(ids, test=8, n_val=8, seed=0, stratify=label)
    assert sum(label[c] for c in s.test) == 2 and sum(label[c] for c in s.val) == 2


@pytest.mark.parametrize("k", [2, 5, 7])
def test_kfold_partitions(k: int) -> None:
    ids = [f"c{i:02d}" for i in range(23)]
    label = {c: i < 6 for i, c in enumerate(ids)}
    folds = kfold_splits(ids, k, seed=1, test=["c22"], stratify=label)
    assert len(folds) == k
    vals = [set(f.val) for f in folds]
    assert set().union(*vals) == set(ids) - {"c22"}
    assert sum(map(len, vals)) == 22  # disjoint
    assert max(map(len, vals)) - min(map(len, vals)) <= 1
    negs = [sum(label[c] for c in v) for v in vals]
    assert max(negs) - min(negs) <= 1
    for f in folds:
        assert not set(f.train) & set(f.val) and f.test == ("c22",)
        assert set(f.train) | set(f.val) == set(ids) - {"c22"}


def test_discover_synthetic(synth_dataset: Path) -> None:
    cases = discover_cases(synth_dataset)
    assert [c.id for c in cases] == ["syn000", "syn001", "syn002", "syn003"]
    assert all(c.mask is not None and c.baseline.is_file() for c in cases)


def test_discover_zip_root_and_incomplete(tmp_path: Path, synth_dataset: Path) -> None:
    root = tmp_path / ZIP_SUBDIR
    shutil.copytree(synth_dataset / "syn000", root / "013")
    (root / "notes").mkdir()
    assert [c.id for c in discover_cases(tmp_path)] == ["013"]
    (root / "013" / FOLLOWUP_NAME).unlink()
    with pytest.raises(DataError, match="incomplete"):
        discover_cases(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no MSSEG-2"):
        discover_cases(empty)


# ------------------------------------------------------------------------- split files

IDS = [f"c{i:02d}" for i in range(10)]


def _write(tmp_path, content, name="split.json"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_split_file_with_three_parts(tmp_path):
    path = _write(tmp_path, {"train": IDS[:6], "val": IDS[6:8], "test": IDS[8:]})
    split = split_from_file(path, IDS)
    assert split.as_dict() == {"train": IDS[:6], "val": IDS[6:8], "test": IDS[8:]}
    assert split.meta == {"file": str(path)}


def test_split_file_without_val_draws_it_from_train(tmp_path):
    path = _write(tmp_path, {"train": IDS[:8], "test": IDS[8:]})
    a = split_from_file(path, IDS, n_val=2, seed=3)
    assert len(a.val) == 2 and set(a.val) | set(a.train) == set(IDS[:8])
    assert a.as_dict() == split_from_file(path, IDS, n_val=2, seed=3).as_dict()
    assert a.test == tuple(IDS[8:])


def test_nnunet_folds_test_on_the_fold_and_validate_inside_its_training_cases(tmp_path):
    folds = [{"train": IDS[2:], "val": IDS[:2]}, {"train": IDS[:8], "val": IDS[8:]}]
    path = _write(tmp_path, folds, "splits_final.json")
    split = split_from_file(path, IDS, fold=1, n_val=2, seed=0)
    assert split.test == tuple(IDS[8:]) and len(split.val) == 2
    assert set(split.train) | set(split.val) == set(IDS[:8]) and split.meta["fold"] == 1


@pytest.mark.parametrize("content, kwargs, message", [
    ([{"train": IDS[1:], "val": IDS[:1]}], {}, r"holds 1 folds .*choose one with split\.fold"),
    ([{"train": IDS[1:], "val": IDS[:1]}], {"fold": 1},
     r"split\.fold 1 is out of range: the file holds folds 0\.\.0"),
    ({"train": IDS[:8], "test": IDS[8:]}, {"fold": 0}, r"holds one split, not folds"),
    ({"train": IDS[:8]}, {}, r"missing key\(s\) \['test'\]"),
    ([{"train": IDS}], {"fold": 0}, r"fold 0: missing key\(s\) \['val'\]"),
    ({"train": IDS[:8], "test": [1, 2]}, {}, r"test must be a list of case id strings"),
    ({"train": IDS[:8] + ["x99"], "test": IDS[8:]}, {}, r"case ids not in the dataset: \['x99'\]"),
    ({"train": IDS[:9], "test": IDS[8:]}, {}, r"split parts overlap"),
    ("[not json", {}, r"unreadable split file"),
    ('"just a string"', {}, r"expected a JSON object"),
])
def test_split_file_errors_name_the_file(tmp_path, content, kwargs, message):
    path = _write(tmp_path, content)
    with pytest.raises(DataError, match=message) as err:
        split_from_file(path, IDS, **kwargs)
    assert str(path) in str(err.value)
