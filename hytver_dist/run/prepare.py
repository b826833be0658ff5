"""From a config's ``data`` section to preprocessed train / validation / test cases.

Shared by ``hytver_dist.train``, ``hytver_dist.evaluate`` and the sweep's workers: synthetic
data is generated once into the cache and reused, preprocessed volumes come from the on-disk
cache (``hytver_dist.data.load_preprocessed``), and the split is a pure function of the config.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import (
    PreprocessConfig,
    Split,
    coactseg_split,
    discover_cases,
    load_preprocessed,
    split_cases,
    split_from_file,
)
from ..data.nnunet import CtStatistics, discover_nnunet, is_nnunet
from ..data.nnunet_prep import (
    apply_ct_statistics,
    load_preprocessed_nnunet,
    training_ct_statistics,
)
from ..data.sampling import AnyCase
from ..files import publish_dir
from .config import DataConfig


@dataclass(frozen=True)
class DatasetInfo:
    """What the network and the metrics need to know about a dataset.

    ``kind``: ``binary`` (MSSEG-2: one new-lesion output), ``labels`` (mutually exclusive
    classes, background included in ``outputs``) or ``regions`` (one output per region, each
    a set of label ``region_values``, painted into a label map in ``regions_class_order``).
    """

    format: str = "msseg2"
    kind: str = "binary"
    channel_names: tuple[str, ...] = ("baseline", "followup", "difference")
    outputs: tuple[str, ...] = ("lesion",)
    region_values: tuple[tuple[int, ...], ...] = ()
    regions_class_order: tuple[int, ...] = ()
    ct: dict[int, CtStatistics] = field(default_factory=dict)

    @property
    def in_channels(self) -> int:
        return len(self.channel_names)

    @property
    def out_channels(self) -> int:
        return len(self.outputs)

    @property
    def default_activation(self) -> str:
        return "softmax" if self.kind == "labels" else "sigmoid"

    @property
    def classes(self) -> list[tuple[str, Any]]:
        """(name, selector) of each foreground class or region the metrics score: a label
        value (labels), a tuple of label values (regions) or 1 (binary)."""
        if self.kind == "labels":
            return [(n, v) for v, n in enumerate(self.outputs) if v > 0]
        if self.kind == "regions":
            return list(zip(self.outputs, self.region_values, strict=True))
        return [(self.outputs[0], 1)]


    def checkpoint_entry(self) -> dict[str, Any]:
        """What a checkpoint of a model trained on this dataset stores about it: ``dataset``
        (prediction on new scans needs it) for every format but MSSEG-2's."""
        return {} if self.format == "msseg2" else {"dataset": self.to_dict()}

    def to_dict(self) -> dict[str, Any]:
        """Plain data (stored with a model trained on it, for prediction on new scans)."""
        d = dataclasses.asdict(self)
        d["ct"] = {str(c): dataclasses.asdict(s) for c, s in self.ct.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetInfo:
        d = dict(d)
        d["ct"] = {int(c): CtStatistics(**s) for c, s in d.get("ct", {}).items()}
        d["region_values"] = tuple(tuple(v) for v in d.get("region_values", ()))
        for key in ("channel_names", "outputs", "regions_class_order"):
            d[key] = tuple(d.get(key, ()))
        return cls(**d)


MSSEG2 = DatasetInfo()


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
    files: dict[str, Any]  # CaseFiles (MSSEG-2) or NnunetCaseFiles
    cases: dict[str, AnyCase]
    preprocess: PreprocessConfig
    dataset: DatasetInfo = MSSEG2

    def part(self, name: str) -> list[AnyCase]:
        """The cases of ``"train"``, ``"val"`` or ``"test"`` (or ``"all"``), in split order."""
        ids = (self.split.train + self.split.val + self.split.test if name == "all"
               else getattr(self.split, name))
        return [self.cases[i] for i in ids]


def make_split(data: DataConfig, cases: dict[str, AnyCase]) -> Split:
    s = data.split
    if s.preset == "file":
        assert s.file is not None
        lesions = {i: c.has_lesions for i, c in cases.items()}
        return split_from_file(s.file, list(cases), fold=s.fold, n_val=s.n_val, seed=s.seed,
                               stratify=lesions)
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


def data_format(data: DataConfig, path: str | Path | None) -> str:
    """msseg2 or nnunet for the folder ``path`` (``format: auto``: nnunet when it holds a
    dataset.json; synthetic data, ``path`` None, is msseg2 unless the format says otherwise)."""
    if data.format != "auto":
        return data.format
    return "nnunet" if path is not None and is_nnunet(path) else "msseg2"


def prepare_data(data: DataConfig, *, data_dir: str | Path | None = None,
                 cache_dir: str | Path | None = None) -> PreparedData:
    """Discover (or generate), preprocess (cached) and split the cases of ``data``.

    ``data_dir`` overrides ``data.path`` (the sweep's ``--data``). A corrupt case raises the
    loader's :class:`hytver_dist.data.DataError`, which names the file and the problem.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    path = data_dir if data_dir is not None else data.path
    if data_format(data, path) == "nnunet":
        return _prepare_nnunet(data, path, cache)
    root = Path(path) if path is not None else synthetic_root(data, cache)
    files = {f.id: f for f in discover_cases(root, require_mask=True)}
    if not files:
        raise FileNotFoundError(f"{root}: no MSSEG-2 cases found (expected <id>/"
                                "flair_time01_on_middle_space.nii.gz, ...)")
    config = preprocess_config(data)
    cases = {i: load_preprocessed(f, cache / "preprocessed", config) for i, f in files.items()}
    return PreparedData(root, make_split(data, cases), files, cases, config)


def synthetic_nnunet_root(data: DataConfig, cache_dir: Path) -> Path:
    """Like :func:`synthetic_root`, in the nnU-Net v2 raw layout (``synthetic.classes`` or
    ``synthetic.regions``)."""
    from ..data.synth import generate_nnunet_dataset

    syn = data.synthetic
    assert syn is not None
    neg = "p" if syn.n_negative is None else syn.n_negative
    labels = "regions" if syn.regions else f"c{syn.classes}"
    root = cache_dir / f"synth-nnunet-{labels}-{syn.size}-n{syn.n_cases}-s{syn.seed}-neg{neg}"
    return publish_dir(root, lambda tmp: generate_nnunet_dataset(
        tmp, syn.n_cases, syn.seed, size=syn.size, classes=syn.classes, regions=syn.regions,
        n_negative=syn.n_negative), "dataset.json")


def _prepare_nnunet(data: DataConfig, path: str | Path | None, cache: Path) -> PreparedData:
    root = Path(path) if path is not None else synthetic_nnunet_root(data, cache)
    ds = discover_nnunet(root)
    config = preprocess_config(data)
    cases: dict[str, AnyCase] = {
        f.id: load_preprocessed_nnunet(ds, f, cache / "preprocessed", config) for f in ds.cases}
    split = make_split(data, cases)
    # CT channels: clipped and z-scored with the training cases' statistics only.
    ct = training_ct_statistics([cases[i] for i in split.train], ds.channel_names)
    if ct:
        cases = {i: apply_ct_statistics(c, ct) for i, c in cases.items()}  # type: ignore[arg-type]
    regions = ds.is_regions
    info = DatasetInfo(
        format="nnunet", kind="regions" if regions else "labels",
        channel_names=tuple(ds.channel_names), outputs=tuple(ds.output_names),
        region_values=tuple(v for _, v in ds.regions()) if regions else (),
        regions_class_order=tuple(ds.meta.regions_class_order or ()), ct=ct)
    files = {f.id: f for f in ds.cases}
    return PreparedData(root, split, files, cases, config, info)  # type: ignore[arg-type]
