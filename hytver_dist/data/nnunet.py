"""Datasets in the nnU-Net v2 raw layout: ``dataset.json``, ``imagesTr/<case>_<XXXX><ending>``
(one file per input channel) and ``labelsTr/<case><ending>`` (an integer label map), with
classes or regions. Every problem is a :class:`DataError` naming the case's file, or
``dataset.json`` and the key. Layout, labels and normalisation: docs/datasets.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import DataError
from .io import _check_same_grid, read_volume

DATASET_JSON = "dataset.json"
SUPPORTED_ENDINGS = (".nii.gz", ".nii")
CT_PERCENTILES = (0.5, 99.5)
# Foreground voxels sampled per training case for the CT statistics (nnU-Net samples 10,000).
CT_SAMPLES_PER_CASE = 10_000

LabelValue = Annotated[int, Field(ge=0, le=255)]


class DatasetJson(BaseModel):
    """The keys of ``dataset.json`` this reader uses (others, e.g. ``name``, are kept)."""

    model_config = ConfigDict(extra="allow")

    channel_names: dict[int, str] = Field(min_length=1)
    labels: dict[str, LabelValue | list[LabelValue]] = Field(min_length=2)
    numTraining: int = Field(ge=1)  # noqa: N815 - nnU-Net's key
    file_ending: str
    regions_class_order: list[LabelValue] | None = None

    @field_validator("channel_names")
    @classmethod
    def _consecutive_channels(cls, v: dict[int, str]) -> dict[int, str]:
        if sorted(v) != list(range(len(v))):
            raise ValueError(f"channel numbers must be 0..{len(v) - 1}, got {sorted(v)}")
        return v

    @field_validator("file_ending")
    @classmethod
    def _nifti_only(cls, v: str) -> str:
        if v not in SUPPORTED_ENDINGS:
            raise ValueError(f"{v!r} is not supported: use one of {list(SUPPORTED_ENDINGS)} "
                             "(convert other formats to NIfTI first)")
        return v

    @field_validator("labels")
    @classmethod
    def _background_zero(cls, v: dict[str, Any]) -> dict[str, Any]:
        if v.get("background") != 0:
            raise ValueError("needs 'background': 0")
        return v


@dataclass(frozen=True)
class NnunetCaseFiles:
    """Paths of one case: one image per channel (in channel order) and the label map."""

    id: str
    images: tuple[Path, ...]
    label: Path | None


@dataclass(frozen=True)
class NnunetDataset:
    """A validated nnU-Net v2 raw dataset (``dataset.json`` read, files present)."""

    root: Path
    meta: DatasetJson
    cases: tuple[NnunetCaseFiles, ...]

    @property
    def channel_names(self) -> list[str]:
        return [self.meta.channel_names[i] for i in range(len(self.meta.channel_names))]

    @property
    def is_regions(self) -> bool:
        """Whether ``labels`` declares regions (sigmoid per region) rather than classes."""
        return any(isinstance(v, list) for v in self.meta.labels.values())

    @property
    def output_names(self) -> list[str]:
        """The network's outputs: every class including background, or every region."""
        names = list(self.meta.labels)
        return [n for n in names if n != "background"] if self.is_regions else names

    @property
    def label_values(self) -> set[int]:
        """Every value a label map may hold."""
        out: set[int] = set()
        for v in self.meta.labels.values():
            out.update(v if isinstance(v, list) else [v])
        return out

    def regions(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, label values) of each region, in ``labels`` order (regions datasets)."""
        return [(k, tuple(v) if isinstance(v, list) else (v,))
                for k, v in self.meta.labels.items() if k != "background"]


def is_nnunet(root: str | Path) -> bool:
    """Whether ``root`` holds a ``dataset.json`` (the nnU-Net v2 raw layout)."""
    return (Path(root) / DATASET_JSON).is_file()


def read_dataset_json(path: str | Path) -> DatasetJson:
    """Parse and validate ``dataset.json``; errors name the file and the key."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"unreadable JSON ({e})", path) from e
    try:
        meta = DatasetJson.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(top level)"
        msg = first["msg"].removeprefix("Value error, ")
        raise DataError(f"{key}: {msg}", path) from None
    if any(isinstance(v, list) for v in meta.labels.values()):
        if meta.regions_class_order is None:
            raise DataError("labels declares regions (lists of values), so "
                            "regions_class_order is required", path)
        if len(meta.regions_class_order) != len(meta.labels) - 1:
            raise DataError(f"regions_class_order: {len(meta.regions_class_order)} entries for "
                            f"{len(meta.labels) - 1} regions", path)
    else:
        values = sorted(meta.labels.values())  # type: ignore[type-var]
        if values != list(range(len(values))):
            raise DataError(f"labels: class values must be 0..{len(values) - 1} without gaps or "
                            f"repeats, got {values}", path)
    return meta


def discover_nnunet(root: str | Path, *, require_labels: bool = True) -> NnunetDataset:
    """Read ``dataset.json`` and find every training case's files (``imagesTr``, ``labelsTr``).

    Raises DataError for a missing folder or channel file, files with another ending, or a
    ``numTraining`` that does not match the label files."""
    root = Path(root)
    meta = read_dataset_json(root / DATASET_JSON)
    ending = meta.file_ending
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    for d in (images_dir, labels_dir) if require_labels else (images_dir,):
        if not d.is_dir():
            raise DataError("folder not found", d)
    foreign = sorted(p.name for d in (images_dir, labels_dir) if d.is_dir()
                     for p in d.iterdir() if p.is_file() and not p.name.startswith(".")
                     and not p.name.endswith(ending))
    if foreign:
        raise DataError(f"files not ending in {ending!r} (dataset.json file_ending): "
                        f"{foreign[:5]}; only NIfTI ({', '.join(SUPPORTED_ENDINGS)}) is read",
                        images_dir.parent)
    if require_labels:
        ids = sorted(p.name[: -len(ending)] for p in labels_dir.iterdir()
                     if p.name.endswith(ending))
        if len(ids) != meta.numTraining:
            raise DataError(f"numTraining is {meta.numTraining} but labelsTr holds {len(ids)} "
                            "label files", root / DATASET_JSON)
    else:
        suffix = f"_0000{ending}"
        ids = sorted(p.name[: -len(suffix)] for p in images_dir.iterdir()
                     if p.name.endswith(suffix))
    n_channels = len(meta.channel_names)
    cases = []
    for case in ids:
        images = tuple(images_dir / f"{case}_{c:04d}{ending}" for c in range(n_channels))
        for c, img in enumerate(images):
            if not img.is_file():
                raise DataError(f"case {case}: channel {c} ({meta.channel_names[c]}) missing",
                                img)
        label = labels_dir / f"{case}{ending}" if require_labels else None
        cases.append(NnunetCaseFiles(case, images, label))
    if not cases:
        raise DataError("no cases found", images_dir)
    return NnunetDataset(root, meta, tuple(cases))


@dataclass(frozen=True, eq=False)
class NnunetCase:
    """One loaded case on its native grid."""

    id: str
    image: np.ndarray  # float32 (channels, X, Y, Z)
    label: np.ndarray | None  # uint8 (X, Y, Z) label values, None without a label file
    affine: np.ndarray
    spacing: tuple[float, float, float]


def load_nnunet_case(dataset: NnunetDataset | None, files: NnunetCaseFiles) -> NnunetCase:
    """Read every channel and the label map; shapes and affines must agree, and the label
    map may only hold values ``dataset.json`` declares (``dataset`` may be None for a case
    without a label map: a scan to predict)."""
    volumes, ref, ref_shape, ref_affine = [], files.images[0], None, None
    for path in files.images:
        data, affine = read_volume(path)
        if ref_shape is None:
            ref_shape, ref_affine = data.shape, affine
        else:
            _check_same_grid(path, data.shape, affine, ref, ref_shape, ref_affine)
        volumes.append(data)
    label = None
    if files.label is not None:
        raw, affine = read_volume(files.label)
        _check_same_grid(files.label, raw.shape, affine, ref, ref_shape, ref_affine)
        label = np.rint(raw)
        if np.abs(raw - label).max(initial=0.0) > 1e-3:
            raise DataError("label map holds non-integer values", files.label)
        if dataset is None:
            raise ValueError(f"{files.label}: a label map needs its dataset (dataset.json)")
        found = {int(v) for v in np.unique(label)}
        undeclared = sorted(found - dataset.label_values)
        if undeclared:
            raise DataError(f"case {files.id}: label values {undeclared} are not declared in "
                            f"dataset.json labels {sorted(dataset.label_values)}", files.label)
        label = label.astype(np.uint8)
    import nibabel as nib

    spacing = tuple(float(s) for s in nib.affines.voxel_sizes(ref_affine))
    return NnunetCase(files.id, np.stack(volumes).astype(np.float32), label, ref_affine,
                      spacing)  # type: ignore[arg-type]


def regions_to_label_map(masks: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """A label map from region masks (R, X, Y, Z), painted with the values ``order``
    (dataset.json's ``regions_class_order``; nnU-Net's rule: a later region overwrites an
    earlier one)."""
    out = np.zeros(masks.shape[1:], dtype=np.uint8)
    for mask, value in zip(masks.astype(bool), order, strict=True):
        out[mask] = value
    return out


@dataclass(frozen=True)
class CtStatistics:
    """Foreground intensity statistics of one CT channel over the training cases."""

    lower: float
    upper: float
    mean: float
    std: float


def ct_statistics(volumes: Iterable[tuple[np.ndarray, np.ndarray | None]], channel: int,
                  seed: int = 0) -> CtStatistics:
    """The clipping percentiles and the mean/std of the clipped foreground intensities of one
    CT ``channel`` (named in errors) over its ``volumes``, (image of that channel, label map)
    pairs of the training cases only: nothing of the test set leaks in."""
    rng = np.random.default_rng(seed)
    samples = []
    for image, label in volumes:
        if label is None:
            continue
        values = image[label > 0]
        if values.size > CT_SAMPLES_PER_CASE:
            values = rng.choice(values, CT_SAMPLES_PER_CASE, replace=False)
        samples.append(values)
    fg = np.concatenate(samples) if samples else np.empty(0, np.float32)
    if fg.size == 0:
        raise DataError(f"CT channel {channel}: no foreground voxel in the training cases, so "
                        "its normalisation statistics are undefined")
    lower, upper = np.percentile(fg, CT_PERCENTILES)
    clipped = np.clip(fg, lower, upper)
    return CtStatistics(float(lower), float(upper), float(clipped.mean()),
                        float(max(clipped.std(), 1e-8)))


__all__ = ["CT_PERCENTILES", "DATASET_JSON", "SUPPORTED_ENDINGS", "CtStatistics",
           "DatasetJson", "NnunetCase", "NnunetCaseFiles", "NnunetDataset", "ct_statistics",
           "discover_nnunet", "is_nnunet", "load_nnunet_case", "read_dataset_json",
           "regions_to_label_map"]
