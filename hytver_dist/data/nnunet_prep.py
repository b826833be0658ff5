"""Preprocessing of nnU-Net v2 raw cases through the same grid machinery and on-disk cache as
MSSEG-2 (:mod:`.preprocess`): closest-canonical orientation, resampling to the target spacing,
a crop to the non-zero box of the channels, nnU-Net's normalisation, and label maps resampled
so that every label keeps its lesions.

The cache holds the non-CT channels z-scored per case and the CT channels resampled but not
normalised: their clipping and z-score use the training set's statistics, which depend on the
split, so :func:`apply_ct_statistics` applies them after it (cheap, in memory).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, io_orientation

from ..files import publish_dir
from .errors import DataError
from .nnunet import (
    CtStatistics,
    NnunetCase,
    NnunetCaseFiles,
    NnunetDataset,
    ct_statistics,
    load_nnunet_case,
)
from .preprocess import (
    GridMeta,
    PreprocessConfig,
    _bbox,
    _coverage,
    _index_affine,
    _resample,
    _target_grid,
    files_key,
    resample_mask,
)

CACHE_VERSION = 1  # bump when this module's output changes for identical inputs and config


@dataclass(frozen=True, eq=False)
class PreprocessedVolume:
    """An nnU-Net case on the preprocessed grid: float32 ``image`` (C, X, Y, Z), the uint8
    label map ``mask`` (label values, None without a label file) and the grid's metadata."""

    id: str
    image: np.ndarray
    mask: np.ndarray | None
    meta: GridMeta

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape[1:])  # type: ignore[return-value]

    @property
    def has_lesions(self) -> bool:
        return self.mask is not None and bool(np.any(self.mask))

    def network_input(self) -> np.ndarray:
        """The network's input channels (C, X, Y, Z), float32."""
        return np.asarray(self.image, dtype=np.float32)


def is_ct(name: str) -> bool:
    return name.upper() == "CT"


def resample_labels(label: np.ndarray, scale, offset, shape) -> np.ndarray:
    """Resample an integer label map so that every label keeps its lesions.

    Each voxel takes the label covering most of its volume (partial-volume coverage, as
    :func:`.preprocess.resample_mask`; background wins when it covers most); then every
    lesion of every label that lost all its voxels is restored (:func:`resample_mask` per
    label), smaller labels last so a small structure is never painted over by a large one.
    """
    label = np.asarray(label)
    values = [int(v) for v in np.unique(label) if v != 0]
    shape = tuple(int(n) for n in shape)
    out = np.zeros(shape, np.uint8)
    if not values:
        return out
    if np.allclose(scale, 1.0) and np.allclose(np.mod(offset, 1.0), 0.0):
        # A pure crop/shift: exact, no coverage arithmetic needed.
        return np.asarray(_resample(label.astype(np.float32), scale, offset, shape, order=0,
                                    mode="constant"), dtype=np.uint8)
    best = np.zeros(shape, np.float32)
    best[:] = _coverage(label == 0, scale, offset, shape)
    for v in values:
        cov = _coverage(label == v, scale, offset, shape)
        win = cov > best
        out[win], best[win] = v, cov[win]
    volumes = {v: int(np.count_nonzero(label == v)) for v in values}
    for v in sorted(values, key=lambda v: -volumes[v]):
        kept = resample_mask(label == v, scale, offset, shape).astype(bool)
        # Only voxels whose lesion would otherwise vanish: where this label has none nearby.
        lost = kept & (out != v)
        if lost.any():
            from scipy import ndimage

            comp, n = ndimage.label(kept, structure=np.ones((3, 3, 3), bool))
            present = np.unique(comp[(out == v) & kept])
            restore = lost & ~np.isin(comp, present)
            out[restore] = v
    return out


def preprocess_nnunet(case: NnunetCase, channel_names: Sequence[str],
                      config: PreprocessConfig | None = None,
                      label_path: Path | None = None) -> PreprocessedVolume:
    """Canonicalise, resample, crop and normalise one loaded case (no caching); CT channels
    are left unnormalised (see the module docstring)."""
    cfg = config or PreprocessConfig()
    ornt = io_orientation(case.affine)
    image = np.stack([apply_orientation(ch, ornt) for ch in case.image])
    label = apply_orientation(case.label, ornt) if case.label is not None else None
    native_shape = tuple(int(s) for s in image.shape[1:])
    can_affine = case.affine @ nib.orientations.inv_ornt_aff(ornt, case.image.shape[1:])
    can_spacing = nib.affines.voxel_sizes(can_affine)
    target = cfg.target_spacing or tuple(can_spacing)
    scale, offset, full_shape = _target_grid(native_shape, can_spacing, target)
    # nnU-Net crops to the non-zero region of the channels; the labels are always kept.
    fg = np.any(image != 0, axis=0)
    box = _bbox(fg | (label > 0) if label is not None else fg)
    if box is None:
        raise DataError(f"case {case.id}: every channel is zero everywhere", label_path)
    lo = np.floor((box[0] - offset) / scale).astype(int) - cfg.crop_margin
    hi = np.ceil((box[1] - offset) / scale).astype(int) + 1 + cfg.crop_margin
    start = np.clip(lo, 0, full_shape)
    stop = np.clip(hi, start + 1, full_shape)
    crop_offset = offset + scale * start
    out_shape = tuple(int(v) for v in stop - start)
    channels, stats = [], {}
    for c, name in enumerate(channel_names):
        v = _resample(np.ascontiguousarray(image[c]), scale, crop_offset, out_shape)
        if not is_ct(name):
            mean, std = float(v.mean()), float(v.std())
            v = (v - mean) / max(std, 1e-8)
            stats[f"channel{c}"] = {"mean": mean, "std": std}
        channels.append(v.astype(np.float32))
    mask = None
    if label is not None:
        mask = resample_labels(label, scale, crop_offset, out_shape)
        stats["label_voxels"] = {str(int(v)): int(n) for v, n in
                                 zip(*np.unique(mask, return_counts=True), strict=True) if v}
    meta = GridMeta(
        original_shape=tuple(int(s) for s in case.image.shape[1:]),
        original_affine=np.asarray(case.affine, float),
        ornt=np.asarray(ornt, float), canonical_shape=native_shape,
        scale=tuple(float(s) for s in scale), offset=tuple(float(o) for o in offset),
        resampled_shape=full_shape, crop_start=tuple(int(s) for s in start),
        crop_stop=tuple(int(s) for s in stop),
        affine=can_affine @ _index_affine(scale, crop_offset),
        spacing=tuple(float(s) for s in target), stats=stats)
    return PreprocessedVolume(case.id, np.stack(channels), mask, meta)


def labels_to_original_grid(labels: np.ndarray, meta: GridMeta) -> np.ndarray:
    """A label map on the preprocessed grid mapped back onto the input file's grid (uint8
    label values, every label's lesions kept; 0 outside the crop box)."""
    from nibabel.orientations import axcodes2ornt, ornt_transform

    labels = np.asarray(labels)
    if labels.shape != meta.shape:
        raise ValueError(f"label map shape {labels.shape} != preprocessed shape {meta.shape}")
    scale = np.asarray(meta.scale)
    crop_offset = np.asarray(meta.offset) + scale * np.asarray(meta.crop_start)
    can = resample_labels(labels, 1 / scale, -crop_offset / scale, meta.canonical_shape)
    back = ornt_transform(axcodes2ornt("RAS"), np.asarray(meta.ornt))
    return np.ascontiguousarray(apply_orientation(can, back)).astype(np.uint8)


def _cache_key(files: NnunetCaseFiles, channel_names: Sequence[str],
               config: PreprocessConfig) -> str:
    paths = (*files.images, *([files.label] if files.label else []))
    return files_key(paths, version=CACHE_VERSION, format="nnunet",
                     channels=list(channel_names), config=asdict(config))


def _read_entry(d: Path, mmap: bool) -> PreprocessedVolume:
    mode = "r" if mmap else None
    meta = json.loads((d / "meta.json").read_text())
    mask_path = d / "mask.npy"
    return PreprocessedVolume(
        id=meta["id"], image=np.load(d / "image.npy", mmap_mode=mode),
        mask=np.load(mask_path, mmap_mode=mode) if mask_path.exists() else None,
        meta=GridMeta.from_dict(meta["grid"]))


def load_preprocessed_nnunet(dataset: NnunetDataset, files: NnunetCaseFiles,
                             cache_dir: str | Path, config: PreprocessConfig | None = None,
                             *, mmap: bool = True) -> PreprocessedVolume:
    """A preprocessed case from ``cache_dir`` (``nnunet-<id>-<key>/``), computed and stored
    on a miss, like :func:`.preprocess.load_preprocessed`."""
    cfg = config or PreprocessConfig()
    names = dataset.channel_names
    entry = Path(cache_dir) / f"nnunet-{files.id}-{_cache_key(files, names, cfg)}"
    if (entry / "meta.json").is_file():
        return _read_entry(entry, mmap)
    pre = preprocess_nnunet(load_nnunet_case(dataset, files), names, cfg, files.label)

    def write(tmp: Path) -> None:
        np.save(tmp / "image.npy", pre.image)
        if pre.mask is not None:
            np.save(tmp / "mask.npy", pre.mask)
        meta = {"id": pre.id, "grid": pre.meta.to_dict(), "config": asdict(cfg)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))

    publish_dir(entry, write, "meta.json")
    return _read_entry(entry, mmap) if mmap else pre


def training_ct_statistics(cases: Sequence[PreprocessedVolume],
                           channel_names: Sequence[str]) -> dict[int, CtStatistics]:
    """Statistics of every CT channel over ``cases`` (the training cases)."""
    out = {}
    for c, name in enumerate(channel_names):
        if is_ct(name):
            out[c] = ct_statistics(((np.asarray(v.image[c]), v.mask) for v in cases), c)
    return out


def apply_ct_statistics(case: PreprocessedVolume,
                        ct: dict[int, CtStatistics]) -> PreprocessedVolume:
    """``case`` with its CT channels clipped and z-scored with ``ct`` (in memory)."""
    if not ct:
        return case
    image = np.array(case.image, dtype=np.float32)
    for c, s in ct.items():
        image[c] = (np.clip(image[c], s.lower, s.upper) - s.mean) / s.std
    return dataclasses.replace(case, image=image)


__all__ = ["PreprocessedVolume", "apply_ct_statistics", "labels_to_original_grid",
           "load_preprocessed_nnunet", "preprocess_nnunet", "resample_labels",
           "training_ct_statistics"]
