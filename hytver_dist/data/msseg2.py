"""MSSEG-2 layout: case discovery, the CoactSeg 32/8 split, validation subsets and k-fold.

Layout (challenge ``DATASET.md``): ``<root>/<id>/flair_time01_on_middle_space.nii.gz``
(baseline), ``flair_time02_on_middle_space.nii.gz`` (follow-up), ``ground_truth.nii.gz``
(consensus of new lesions; the label we use) and optionally ``ground_truth_expert{1..4}.nii.gz``.
All files of a case share one voxel grid (the "halfway space").

Splits take plain case-id lists, so they work for synthetic data too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError

BASELINE_NAME = "flair_time01_on_middle_space.nii.gz"
FOLLOWUP_NAME = "flair_time02_on_middle_space.nii.gz"
MASK_NAME = "ground_truth.nii.gz"
EXPERT_MASK_NAMES = tuple(f"ground_truth_expert{i}.nii.gz" for i in range(1, 5))
# Folder the official zip unpacks to; discovery descends into it when given the zip root.
ZIP_SUBDIR = Path("LongitudinalMultipleSclerosisLesionSegmentationChallengeMiccai21/training")

# CoactSeg data/train.list and data/val.list (MSSEG-2 part) = the HyTver paper's 32/8 split.
# CoactSeg's "val" list is also its test list (checkpoint chosen on it): we call it test and
# carve validation cases out of the 32 training cases instead.
COACTSEG_TRAIN: tuple[str, ...] = (
    "015", "016", "018", "019", "020", "021", "024", "029", "030", "032", "035",
    "037", "039", "043", "047", "048", "049", "051", "052", "057", "061", "068",
    "069", "070", "074", "077", "083", "084", "088", "089", "090", "096",
)  # fmt: skip
COACTSEG_TEST: tuple[str, ...] = ("013", "026", "027", "091", "094", "095", "099", "100")
# The 11 public cases with an empty consensus mask (all in COACTSEG_TRAIN).
NEGATIVE_CASES: frozenset[str] = frozenset(
    {"015", "019", "049", "051", "052", "068", "070", "084", "089", "090", "096"}
)
ALL_CASES: tuple[str, ...] = tuple(sorted(COACTSEG_TRAIN + COACTSEG_TEST))


@dataclass(frozen=True)
class CaseFiles:
    """Paths of one case; ``mask`` is None where the consensus mask is absent (test data)."""

    id: str
    dir: Path
    baseline: Path
    followup: Path
    mask: Path | None = None
    experts: tuple[Path, ...] = ()

    @classmethod
    def from_dir(cls, case_dir: str | Path) -> CaseFiles:
        """Paths of the case in ``case_dir``; raises DataError if a FLAIR is missing."""
        d = Path(case_dir)
        if not d.is_dir():
            raise DataError("case folder not found", d)
        for name in (BASELINE_NAME, FOLLOWUP_NAME):
            if not (d / name).is_file():
                raise DataError(f"incomplete case: {name} missing", d)
        mask = d / MASK_NAME
        experts = tuple(d / n for n in EXPERT_MASK_NAMES if (d / n).is_file())
        return cls(
            id=d.name,
            dir=d,
            baseline=d / BASELINE_NAME,
            followup=d / FOLLOWUP_NAME,
            mask=mask if mask.is_file() else None,
            experts=experts,
        )

    @property
    def sources(self) -> tuple[Path, ...]:
        """The files a preprocessed volume depends on (cache key input)."""
        return (self.baseline, self.followup) + ((self.mask,) if self.mask else ())


def discover_cases(root: str | Path, *, require_mask: bool = False) -> list[CaseFiles]:
    """All cases under ``root`` (or under its official zip sub-folder), sorted by id.

    A folder counts as a case if it holds either FLAIR; one holding only one of them is an
    error (a half-copied case must not silently shrink the training set). Other folders and
    files are ignored.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("data root not found", root)
    if (root / ZIP_SUBDIR).is_dir():
        root = root / ZIP_SUBDIR
    cases = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if (d / BASELINE_NAME).exists() or (d / FOLLOWUP_NAME).exists():
            case = CaseFiles.from_dir(d)
            if require_mask and case.mask is None:
                raise DataError(f"{MASK_NAME} missing", d)
            cases.append(case)
    if not cases:
        raise DataError(f"no MSSEG-2 case folders (<id>/{BASELINE_NAME}) found", root)
    return cases


@dataclass(frozen=True)
class Split:
    """Disjoint train / validation / test case-id lists."""

    train: tuple[str, ...]
    val: tuple[str, ...] = ()
    test: tuple[str, ...] = ()
    meta: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parts = (self.train, self.val, self.test)
        ids = [i for p in parts for i in p]
        if len(ids) != len(set(ids)):
            raise ValueError("split parts overlap or contain duplicate ids")

    def as_dict(self) -> dict[str, list[str]]:
        return {"train": list(self.train), "val": list(self.val), "test": list(self.test)}


def _strata(ids: Sequence[str], stratify: Mapping[str, object] | None) -> list[list[str]]:
    """Groups of ids sharing a stratum label (one group if no labels), in a stable order."""
    if stratify is None:
        return [list(ids)]
    groups: dict[str, list[str]] = {}
    for i in ids:
        groups.setdefault(repr(stratify.get(i)), []).append(i)
    return [groups[k] for k in sorted(groups)]


def _draw(
    ids: Sequence[str], n: int, rng: np.random.Generator, stratify: Mapping[str, object] | None
) -> list[str]:
    """Draw ``n`` ids; with ``stratify``, each stratum contributes in proportion (largest
    remainder rounding) so e.g. a 4-case validation set of the 32 training cases gets one of
    the 11 negatives."""
    if not 0 <= n <= len(ids):
        raise ValueError(f"cannot draw {n} of {len(ids)} cases")
    groups = _strata(ids, stratify)
    exact = [n * len(g) / len(ids) for g in groups]
    counts = [int(np.floor(e)) for e in exact]
    for j in np.argsort([c - e for c, e in zip(counts, exact, strict=True)])[: n - sum(counts)]:
        counts[j] += 1
    out: list[str] = []
    for g, c in zip(groups, counts, strict=True):
        out += [g[j] for j in rng.permutation(len(g))[:c]]
    return sorted(out)


def split_cases(
    case_ids: Iterable[str],
    *,
    test: Sequence[str] | int = 0,
    n_val: int | float = 0.125,
    seed: int = 0,
    stratify: Mapping[str, object] | None = None,
) -> Split:
    """Seeded train/val/test split of arbitrary case ids.

    ``test``: fixed test ids, or a number of cases to draw. ``n_val``: validation cases drawn
    from the remaining (non-test) cases only, as a count or a fraction of them (rounded,
    at least 1 when the fraction is > 0). ``stratify``: optional id -> label (e.g. has new
    lesions) kept proportional in the drawn parts.
    """
    ids = sorted(set(case_ids))
    rng = np.random.default_rng(seed)
    if isinstance(test, int):
        test_ids = _draw(ids, test, rng, stratify)
    else:
        test_ids = sorted(test)
        missing = sorted(set(test_ids) - set(ids))
        if missing:
            raise ValueError(f"test ids not among the cases: {missing}")
    rest = [i for i in ids if i not in set(test_ids)]
    if isinstance(n_val, float):
        n_val = max(1, round(n_val * len(rest))) if n_val > 0 else 0
    val_ids = _draw(rest, n_val, rng, stratify)
    train_ids = [i for i in rest if i not in set(val_ids)]
    return Split(tuple(train_ids), tuple(val_ids), tuple(test_ids), {"seed": seed})


def coactseg_split(
    n_val: int = 4, seed: int = 0, available: Iterable[str] | None = None
) -> Split:
    """CoactSeg/HyTver 32/8 split, with ``n_val`` validation cases carved from the 32 (seeded,
    negatives kept proportional) so checkpoints are never selected on the 8 test cases.

    ``available``: discovered ids; a missing preset case raises DataError.
    """
    if available is not None:
        missing = sorted(set(ALL_CASES) - set(available))
        if missing:
            raise DataError(f"CoactSeg split needs cases that were not found: {missing}")
    positive = {i: i not in NEGATIVE_CASES for i in ALL_CASES}
    s = split_cases(ALL_CASES, test=COACTSEG_TEST, n_val=n_val, seed=seed, stratify=positive)
    return Split(s.train, s.val, s.test, {"preset": "coactseg", "seed": seed})


def kfold_splits(
    case_ids: Iterable[str],
    k: int = 5,
    *,
    seed: int = 0,
    test: Sequence[str] = (),
    stratify: Mapping[str, object] | None = None,
) -> list[Split]:
    """``k`` folds over the non-test ids: fold f validates on part f and trains on the rest;
    the validation parts partition the ids. Stratified folds deal each stratum round-robin,
    continuing across strata so fold sizes differ by at most one."""
    test_set = set(test)
    ids = [i for i in sorted(set(case_ids)) if i not in test_set]
    if not 2 <= k <= len(ids):
        raise ValueError(f"k={k} folds need 2 <= k <= {len(ids)} cases")
    rng = np.random.default_rng(seed)
    parts: list[list[str]] = [[] for _ in range(k)]
    offset = 0
    for g in _strata(ids, stratify):
        for j, idx in enumerate(rng.permutation(len(g))):
            parts[(offset + j) % k].append(g[idx])
        offset += len(g)
    return [
        Split(
            tuple(i for i in ids if i not in set(parts[f])),
            tuple(sorted(parts[f])),
            tuple(sorted(test_set)),
            {"fold": f, "k": k, "seed": seed},
        )
        for f in range(k)
    ]


def split_from_file(path: str | Path, available: Iterable[str], *, fold: int | None = None,
                    n_val: int | float = 0.125, seed: int = 0,
                    stratify: Mapping[str, object] | None = None) -> Split:
    """The split a JSON file gives: ``{"train": [...], "val": [...], "test": [...]}`` (``val``
    optional: then ``n_val`` cases are drawn from ``train``), or nnU-Net's
    ``splits_final.json``, a list of folds ``[{"train": [...], "val": [...]}, ...]`` of which
    ``fold`` is used. nnU-Net reports a fold on its ``val`` cases, so those become the test
    cases here, and the validation cases that choose the checkpoint (``n_val``, drawn with
    ``seed``) come out of the fold's training cases. Raises DataError naming the file for
    malformed content, a missing or out-of-range ``fold``, or case ids that are not in
    ``available``."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"unreadable split file ({e})", path) from e
    if isinstance(content, list):
        if fold is None:
            raise DataError(f"holds {len(content)} folds (nnU-Net splits_final.json): choose "
                            "one with split.fold", path)
        if not 0 <= fold < len(content):
            raise DataError(f"split.fold {fold} is out of range: the file holds folds "
                            f"0..{len(content) - 1}", path)
        parts = _split_parts(content[fold], ("train", "val"), path, f"fold {fold}: ")
        train, test, val = parts["train"], parts["val"], None
    elif isinstance(content, dict):
        if fold is not None:
            raise DataError("holds one split, not folds: leave split.fold unset", path)
        parts = _split_parts(content, ("train", "test"), path, "", optional=("val",))
        train, test, val = parts["train"], parts["test"], parts.get("val")
    else:
        raise DataError("expected a JSON object {train, val, test} or a list of folds", path)
    known = set(available)
    unknown = sorted({i for part in (train, test, val or []) for i in part} - known)
    if unknown:
        raise DataError(f"case ids not in the dataset: {unknown[:10]}"
                        f"{' ...' if len(unknown) > 10 else ''}", path)
    if val is None:
        sub = split_cases(train, test=0, n_val=n_val, seed=seed, stratify=stratify)
        train, val = list(sub.train), list(sub.val)
    try:
        return Split(tuple(train), tuple(val), tuple(test),
                     {"file": str(path), **({"fold": fold} if fold is not None else {})})
    except ValueError as e:
        raise DataError(f"{e}", path) from None


def _split_parts(obj: object, required: tuple[str, ...], path: Path, where: str,
                 optional: tuple[str, ...] = ()) -> dict[str, list[str]]:
    if not isinstance(obj, dict):
        raise DataError(f"{where}expected an object with keys {list(required)}", path)
    missing = [k for k in required if k not in obj]
    if missing:
        raise DataError(f"{where}missing key(s) {missing}", path)
    out = {}
    for key in (*required, *(k for k in optional if k in obj)):
        value = obj[key]
        if not isinstance(value, list) or not all(isinstance(i, str) for i in value):
            raise DataError(f"{where}{key} must be a list of case id strings", path)
        out[key] = value
    return out
