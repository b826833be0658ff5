"""From a config's ``data`` section to preprocessed train / validation / test cases.

Shared by ``hytver_dist.train``, ``hytver_dist.evaluate`` and the sweep's workers: synthetic
data is generated once into the cache and reused, preprocessed volumes come from the on-disk
cache (``hytver_dist.data.load_preprocessed``), and the split is a pure function of the config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..data import (
    CaseFiles,
    PreprocessConfig,
    PreprocessedCase,
    Split,
    coactseg_split,
    discover_cases,
    load_preprocessed,
    split_cases,
)
from ..files import publish_dir
from .config import DataConfig


def default_cache_dir() -> Path:
    """``$HYTVER_CACHE`` or ``~/.cache/hytver_dist``: synthetic datasets and preprocessed cases."""
    return Path(os.environ.get("HYTVER_CACHE", Path.home() / ".cache" / "hytver_dist"))


def synthetic_root(data: DataConfig, cache_dir: Path) -> Path:
    """Directory of the synthetic dataset that ``data.synthetic`` describes, generated on first
    use. Generation writes to a temporary folder renamed into place, so concurrent trials on
    one node never read half a dataset."""
    from ..data.synth import generate_dataset

    syn = data.synthetic
    assert syn is not None
    neg = "p" if syn.n_negative is None else syn.n_negative
    root = cache_dir / f"synth-{syn.size}-n{syn.n_cases}-s{syn.seed}-neg{neg}"
    return publish_dir(root, lambda tmp: generate_dataset(
        tmp, syn.n_cases, syn.seed, size=syn.size, n_negative=syn.n_negative), "manifest.json")


@dataclass
class PreparedData:
    """Preprocessed cases of one split, with their source files."""

    root: Path
    split: Split
    files: dict[str, CaseFiles]
    cases: dict[str, PreprocessedCase]
    preprocess: PreprocessConfig

    def part(self, name: str) -> list[PreprocessedCase]:
        """The cases of ``"train"``, ``"val"`` or ``"test"`` (or ``"all"``), in split order."""
        ids = (self.split.train + self.split.val + self.split.test if name == "all"
               else getattr(self.split, name))
        return [self.cases[i] for i in ids]


def make_split(data: DataConfig, cases: dict[str, PreprocessedCase]) -> Split:
    s = data.split
    if s.preset == "coactseg":
        return coactseg_split(n_val=s.n_val, seed=s.seed, available=list(cases))
    # Keep the share of patients without new lesions alike in every part.
    lesions = {i: c.has_lesions for i, c in cases.items()}
    return split_cases(list(cases), test=s.n_test or 0, n_val=s.n_val, seed=s.seed,
                       stratify=lesions)


def preprocess_config(data: DataConfig) -> PreprocessConfig:
    """The preprocessing of ``data.preprocessing`` (shared by training, evaluation and
    prediction, so a new scan is resampled and normalised like the training cases)."""
    spacing = data.preprocessing.target_spacing
    return PreprocessConfig(target_spacing=tuple(spacing) if spacing else None)


def prepare_data(data: DataConfig, *, data_dir: str | Path | None = None,
                 cache_dir: str | Path | None = None) -> PreparedData:
    """Discover (or generate), preprocess (cached) and split the cases of ``data``.

    ``data_dir`` overrides ``data.path`` (the sweep's ``--data``). A corrupt case raises the
    loader's :class:`hytver_dist.data.DataError`, which names the file and the problem.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    path = data_dir if data_dir is not None else data.path
    root = Path(path) if path is not None else synthetic_root(data, cache)
    files = {f.id: f for f in discover_cases(root, require_mask=True)}
    if not files:
        raise FileNotFoundError(f"{root}: no MSSEG-2 cases found (expected <id>/"
                                "flair_time01_on_middle_space.nii.gz, ...)")
    config = preprocess_config(data)
    cases = {i: load_preprocessed(f, cache / "preprocessed", config) for i, f in files.items()}
    return PreparedData(root, make_split(data, cases), files, cases, config)
