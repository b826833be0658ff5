"""Preprocessing: closest-canonical (RAS+) orientation, resampling to a target spacing, crop to
the brain bounding box, brain-only z-score, and an on-disk ``.npy`` cache.

Grid conventions: arrays are nibabel-ordered (i, j, k); after canonical reorientation axis 0
points Right, 1 Anterior, 2 Superior, so the default spacing (0.5, 0.75, 0.75) mm puts the
fine 0.5 mm along x like CoactSeg's SimpleITK (x, y, z) spacing. Resampling is centre-aligned
(the field of view's centre stays fixed) with shape ``round(extent / spacing)``.

Every step is an index-space map, recorded in :class:`GridMeta`, so a prediction on the
preprocessed grid maps back onto the input file's grid with :func:`to_original_grid`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from scipy import ndimage

from ..files import publish_dir
from .errors import DataError
from .io import Case, load_case
from .msseg2 import CaseFiles

CACHE_VERSION = 1  # bump when preprocessing output changes for identical inputs and config
DEFAULT_SPACING = (0.5, 0.75, 0.75)
_FULL_CONN = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity


@dataclass(frozen=True)
class PreprocessConfig:
    """Preprocessing parameters (all part of the cache key).

    ``target_spacing``: mm per canonical axis, None keeps the native grid. ``crop_margin``:
    voxels (target grid) added around the brain box; CoactSeg uses 15. ``brain_mask``:
    "auto" estimates the brain (threshold, 5 mm erosion, largest component, dilation; a crude
    stand-in for HD-BET on non-skull-stripped FLAIR), "head" uses the whole head foreground.
    ``mask_threshold``: rule for linearly resampled masks (see :func:`resample_mask`).
    """

    target_spacing: tuple[float, float, float] | None = DEFAULT_SPACING
    crop_margin: int = 15
    brain_mask: str = "auto"
    brain_erosion_mm: float = 5.0
    mask_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.brain_mask not in ("auto", "head"):
            raise ValueError(f"brain_mask must be 'auto' or 'head', not {self.brain_mask!r}")
        if self.target_spacing is not None:
            object.__setattr__(self, "target_spacing", tuple(float(s) for s in self.target_spacing))
            if len(self.target_spacing) != 3 or min(self.target_spacing) <= 0:
                raise ValueError(f"bad target_spacing {self.target_spacing}")


@dataclass(frozen=True, eq=False)
class GridMeta:
    """How the preprocessed grid relates to the input file's grid.

    canonical index = ``scale * (preprocessed index + crop_start) + offset`` (per axis), and
    the original array is ``apply_orientation(canonical array, ornt_back)``.
    """

    original_shape: tuple[int, int, int]
    original_affine: np.ndarray
    ornt: np.ndarray  # original -> canonical axis transform (nibabel orientation array)
    canonical_shape: tuple[int, int, int]
    scale: tuple[float, float, float]
    offset: tuple[float, float, float]
    resampled_shape: tuple[int, int, int]  # full resampled grid before cropping
    crop_start: tuple[int, int, int]
    crop_stop: tuple[int, int, int]
    affine: np.ndarray  # voxel -> world of the preprocessed (cropped) grid
    spacing: tuple[float, float, float]
    stats: dict = field(default_factory=dict)  # z-score means/stds etc., informational

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.crop_start, self.crop_stop, strict=True))

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("original_affine", "ornt", "affine"):
            d[k] = np.asarray(d[k]).tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> GridMeta:
        d = dict(d)
        for k in ("original_affine", "ornt", "affine"):
            d[k] = np.asarray(d[k], dtype=np.float64)
        for k in ("original_shape", "canonical_shape", "resampled_shape", "crop_start",
                  "crop_stop"):  # fmt: skip
            d[k] = tuple(int(v) for v in d[k])
        for k in ("scale", "offset", "spacing"):
            d[k] = tuple(float(v) for v in d[k])
        return cls(**d)


@dataclass(frozen=True, eq=False)
class PreprocessedCase:
    """A case on the preprocessed grid: z-scored float32 images, uint8 masks."""

    id: str
    baseline: np.ndarray
    followup: np.ndarray
    mask: np.ndarray | None
    brain: np.ndarray  # uint8 brain mask used for the z-score
    meta: GridMeta

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.baseline.shape)  # type: ignore[return-value]

    @property
    def has_lesions(self) -> bool:
        return self.mask is not None and bool(np.any(self.mask))


# ---------------------------------------------------------------- resampling primitives


def _resample(
    arr: np.ndarray, scale, offset, shape, *, order: int = 1, mode: str = "nearest", cval=0.0
) -> np.ndarray:
    """out[i] = arr(scale * i + offset) per axis (scipy.ndimage, no prefilter needed ≤ 1)."""
    return ndimage.affine_transform(
        arr, np.asarray(scale, float), np.asarray(offset, float), output_shape=tuple(shape),
        order=order, mode=mode, cval=cval, prefilter=False,
    )  # fmt: skip


def _coverage(src: np.ndarray, scale, offset, shape) -> np.ndarray:
    """Exact fraction of each target cell covered by ``src`` (0/1) voxels.

    Target voxel i along an axis is the cell [c - s/2, c + s/2] in source index units,
    c = s * i + offset, and source voxel k the cell [k - 0.5, k + 0.5]; the grids are
    axis-aligned (direction cosines are kept), so 3D overlap is a product of 1D overlaps and
    the computation is three 1D weighted gathers.
    """
    out = src.astype(np.float32)
    for ax in range(3):
        s, n_out, n_src = float(scale[ax]), int(shape[ax]), out.shape[ax]
        centre = s * np.arange(n_out) + float(offset[ax])
        lo, hi = centre - s / 2, centre + s / 2
        k0 = np.floor(lo + 0.5).astype(int)  # first source cell overlapping the target cell
        acc = np.zeros(out.shape[:ax] + (n_out,) + out.shape[ax + 1 :], np.float32)
        w_shape = [1, 1, 1]
        w_shape[ax] = n_out
        for m in range(int(np.ceil(s)) + 2):
            k = k0 + m
            w = np.clip(np.minimum(hi, k + 0.5) - np.maximum(lo, k - 0.5), 0, None) / s
            w[(k < 0) | (k >= n_src)] = 0
            if w.any():
                taken = np.take(out, np.clip(k, 0, n_src - 1), axis=ax)
                acc += taken * w.reshape(w_shape).astype(np.float32)
        out = acc
    return out


def resample_mask(
    mask: np.ndarray, scale, offset, shape, *, threshold: float = 0.5
) -> np.ndarray:
    """Resample a binary mask by partial-volume coverage, so that every lesion survives.

    Rule: a target voxel is lesion when at least ``threshold`` (0.5) of its volume is covered
    by source lesion voxels. This keeps volumes unbiased when up- and downsampling (nearest
    neighbour deletes 1-2-voxel lesions when downsampling; linear interpolation + 0.5 shrinks
    one-voxel-thin lesions by ~40 % when upsampling). Then every source lesion
    (26-connected) left without a voxel is restored as the target voxel holding its centroid,
    so lesions are never lost. Work is restricted to the lesions' bounding box.
    """
    src = np.asarray(mask) > 0
    scale, offset = np.asarray(scale, float), np.asarray(offset, float)
    shape = tuple(int(n) for n in shape)
    out = np.zeros(shape, dtype=bool)
    if not src.any():
        return out.astype(np.uint8)
    # Target index range whose cells overlap the source box [a - 0.5, b + 0.5].
    a, b = np.argwhere(src).min(0), np.argwhere(src).max(0)
    i0 = np.clip(np.floor((a - 0.5 - offset) / scale - 0.5).astype(int), 0, shape)
    i1 = np.clip(np.ceil((b + 0.5 - offset) / scale + 0.5).astype(int) + 1, i0, shape)
    sub = src[tuple(slice(x, y + 1) for x, y in zip(a, b, strict=True))]
    sub_offset = offset + scale * i0 - a
    box = tuple(slice(x, y) for x, y in zip(i0, i1, strict=True))
    out[box] = _coverage(sub, scale, sub_offset, i1 - i0) >= threshold - 1e-6
    labels, n = ndimage.label(sub, structure=_FULL_CONN)
    # Source lesion at each kept target voxel's centre (nearest source voxel).
    centres = [np.clip(np.rint(scale[d] * np.arange(i1[d] - i0[d]) + sub_offset[d]).astype(int),
                       0, sub.shape[d] - 1) for d in range(3)]  # fmt: skip
    near = labels[np.ix_(*centres)]
    missing = np.setdiff1d(np.arange(1, n + 1), near[out[box]])
    if missing.size:
        centroids = np.atleast_2d(ndimage.center_of_mass(sub, labels, missing)) + a
        idx = np.rint((centroids - offset) / scale).astype(int)
        idx = np.clip(idx, 0, np.asarray(shape) - 1)
        out[tuple(idx.T)] = True
    return out.astype(np.uint8)


def _target_grid(shape, spacing, target) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Centre-aligned grid of ``target`` spacing over the same field of view."""
    shape, spacing = np.asarray(shape, float), np.asarray(spacing, float)
    scale = np.asarray(target, float) / spacing
    new_shape = np.maximum(1, np.rint(shape * spacing / np.asarray(target, float))).astype(int)
    offset = (shape - 1) / 2 - scale * (new_shape - 1) / 2
    return scale, offset, tuple(int(s) for s in new_shape)


def _index_affine(scale, offset) -> np.ndarray:
    m = np.diag([*np.asarray(scale, float), 1.0])
    m[:3, 3] = offset
    return m


def resample_to_spacing(
    volume: np.ndarray, affine: np.ndarray, spacing, *, is_mask: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a volume to ``spacing`` (mm per array axis); returns (data, new affine).

    Images: linear (no anti-aliasing: MSSEG-2 is rarely coarser than the target). Masks:
    :func:`resample_mask`. Direction cosines are kept, so world
    coordinates of any point are unchanged.
    """
    scale, offset, shape = _target_grid(volume.shape, nib.affines.voxel_sizes(affine), spacing)
    if is_mask:
        out = resample_mask(volume, scale, offset, shape)
    else:
        out = _resample(np.asarray(volume, np.float32), scale, offset, shape)
    return out, affine @ _index_affine(scale, offset)


# --------------------------------------------------------------------------- brain mask


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    return float(centres[np.argmax(w0 * w1 * (m0 - m1) ** 2)])


def _largest_component(m: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(m)
    if n <= 1:
        return m.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def estimate_brain_mask(
    image: np.ndarray, spacing, *, erosion_mm: float = 5.0, head_only: bool = False
) -> np.ndarray:
    """Approximate brain mask of a non-skull-stripped FLAIR (bool, same grid).

    Head = Otsu threshold of the 1 mm-smoothed image, largest component, holes filled.
    Brain = head eroded by ``erosion_mm`` (cuts the thin scalp/skull/neck bridges), largest
    component, dilated back inside the head, holes filled (ventricles). Distances via EDT in
    mm, so anisotropic grids are handled. Falls back to the head if the result is implausibly
    small (< 5 % of the head). Pass a real brain mask (e.g. HD-BET) where one exists.
    """
    spacing = np.asarray(spacing, float)
    smooth = ndimage.gaussian_filter(np.asarray(image, np.float32), sigma=1.0 / spacing)
    lo, hi = np.percentile(smooth, [0.5, 99.5])
    head = smooth > _otsu(np.clip(smooth, lo, hi).ravel())
    head = ndimage.binary_fill_holes(_largest_component(head))
    if head_only or not head.any():
        return head
    core = ndimage.distance_transform_edt(head, sampling=spacing) > erosion_mm
    if not core.any():
        return head
    core = _largest_component(core)
    brain = (ndimage.distance_transform_edt(~core, sampling=spacing) <= erosion_mm) & head
    brain = ndimage.binary_fill_holes(brain)
    return brain if brain.sum() >= 0.05 * head.sum() else head


def _bbox(m: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    idx = np.argwhere(m)
    return (idx.min(0), idx.max(0)) if idx.size else None


# ------------------------------------------------------------------------ preprocessing


def preprocess_case(case: Case, config: PreprocessConfig | None = None) -> PreprocessedCase:
    """Canonicalise, crop, resample and z-score one loaded case (no caching)."""
    cfg = config or PreprocessConfig()
    ornt = io_orientation(case.affine)
    t1 = apply_orientation(case.baseline, ornt)
    t2 = apply_orientation(case.followup, ornt)
    gt = apply_orientation(case.mask, ornt) if case.mask is not None else None
    can_affine = case.affine @ nib.orientations.inv_ornt_aff(ornt, case.shape)
    can_spacing = nib.affines.voxel_sizes(can_affine)
    target = cfg.target_spacing or tuple(can_spacing)
    scale, offset, full_shape = _target_grid(t1.shape, can_spacing, target)

    # Brain mask and crop box on the native grid (cheaper than on the finer target grid),
    # from both time points; the box also covers every GT voxel so no label is cropped away.
    brain_native = estimate_brain_mask(
        (t1 + t2) / 2, can_spacing, erosion_mm=cfg.brain_erosion_mm,
        head_only=cfg.brain_mask == "head",
    )  # fmt: skip
    box = _bbox(brain_native | (gt > 0) if gt is not None else brain_native)
    if box is None:
        raise DataError("no head/brain foreground found", case.files.baseline)
    lo = np.floor((box[0] - offset) / scale).astype(int) - cfg.crop_margin
    hi = np.ceil((box[1] - offset) / scale).astype(int) + 1 + cfg.crop_margin
    start = np.clip(lo, 0, full_shape)
    stop = np.clip(hi, start + 1, full_shape)
    crop_offset = offset + scale * start  # resample straight into the cropped grid
    out_shape = tuple(int(v) for v in stop - start)

    brain = resample_mask(brain_native, scale, crop_offset, out_shape).astype(bool)
    stats: dict = {}
    images = []
    for name, vol in (("baseline", t1), ("followup", t2)):
        v = _resample(vol, scale, crop_offset, out_shape)
        mean, std = float(v[brain].mean()), float(v[brain].std())
        if not std > 1e-6 * max(1.0, abs(mean)):
            path = case.files.baseline if name == "baseline" else case.files.followup
            raise DataError("constant intensity inside the brain mask", path)
        # Same mask and rule for both time points, so follow-up - baseline stays meaningful
        # while per-session gain differences are removed.
        images.append(((v - mean) / std).astype(np.float32))
        stats[name] = {"mean": mean, "std": std}
    mask = None
    if gt is not None:
        mask = resample_mask(gt, scale, crop_offset, out_shape, threshold=cfg.mask_threshold)
        stats["mask_voxels"] = int(mask.sum())
    meta = GridMeta(
        original_shape=case.shape,
        original_affine=np.asarray(case.affine, float),
        ornt=np.asarray(ornt, float),
        canonical_shape=tuple(int(s) for s in t1.shape),
        scale=tuple(float(s) for s in scale),
        offset=tuple(float(o) for o in offset),
        resampled_shape=full_shape,
        crop_start=tuple(int(s) for s in start),
        crop_stop=tuple(int(s) for s in stop),
        affine=can_affine @ _index_affine(scale, crop_offset),
        spacing=tuple(float(s) for s in target),
        stats=stats,
    )
    return PreprocessedCase(case.id, images[0], images[1], mask, brain.astype(np.uint8), meta)


def to_original_grid(volume: np.ndarray, meta: GridMeta, *, is_mask: bool = True) -> np.ndarray:
    """Map a volume on the preprocessed grid back onto the input file's grid.

    ``is_mask``: binary prediction -> uint8 via :func:`resample_mask` (lesions survive);
    otherwise linear interpolation (e.g. probabilities; threshold afterwards). Outside the
    crop box the result is 0. Save it with ``meta.original_affine``.
    """
    volume = np.asarray(volume)
    if volume.shape != meta.shape:
        raise ValueError(f"volume shape {volume.shape} != preprocessed shape {meta.shape}")
    scale = np.asarray(meta.scale)
    crop_offset = np.asarray(meta.offset) + scale * np.asarray(meta.crop_start)
    inv_scale, inv_offset = 1 / scale, -crop_offset / scale
    if is_mask:
        can = resample_mask(volume, inv_scale, inv_offset, meta.canonical_shape)
    else:
        can = _resample(
            volume.astype(np.float32), inv_scale, inv_offset, meta.canonical_shape,
            mode="constant",
        )  # fmt: skip
    back = ornt_transform(axcodes2ornt("RAS"), np.asarray(meta.ornt))
    return np.ascontiguousarray(apply_orientation(can, back))


# ------------------------------------------------------------------------------- cache


def cache_key(files: CaseFiles, config: PreprocessConfig) -> str:
    """Hash of the source files' path, size and mtime plus the config and CACHE_VERSION."""
    return files_key(files.sources, version=CACHE_VERSION, config=asdict(config))


def files_key(paths, **fields) -> str:
    """20 hex digits hashing each file's resolved path, size and mtime, and ``fields``."""
    src = []
    for p in paths:
        st = p.stat()
        src.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    blob = json.dumps({"files": src, **fields}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _read_entry(d: Path, mmap: bool) -> PreprocessedCase:
    mode = "r" if mmap else None
    meta = json.loads((d / "meta.json").read_text())
    mask_path = d / "mask.npy"
    return PreprocessedCase(
        id=meta["id"],
        baseline=np.load(d / "baseline.npy", mmap_mode=mode),
        followup=np.load(d / "followup.npy", mmap_mode=mode),
        mask=np.load(mask_path, mmap_mode=mode) if mask_path.exists() else None,
        brain=np.load(d / "brain.npy", mmap_mode=mode),
        meta=GridMeta.from_dict(meta["grid"]),
    )


def load_preprocessed(
    case: CaseFiles | str | Path,
    cache_dir: str | Path,
    config: PreprocessConfig | None = None,
    *,
    mmap: bool = True,
) -> PreprocessedCase:
    """Preprocessed case from ``cache_dir``, computing and storing it on a miss.

    Entries are folders ``<id>-<key>/`` of ``.npy`` files (memory-mapped read-only when
    ``mmap``, so DDP ranks and loader workers share pages) plus ``meta.json``. Writes go to a
    temporary folder renamed into place, so concurrent ranks never see half an entry; stale
    entries of older keys are left for the user to delete.
    """
    files = case if isinstance(case, CaseFiles) else CaseFiles.from_dir(case)
    cfg = config or PreprocessConfig()
    cache_dir = Path(cache_dir)
    entry = cache_dir / f"{files.id}-{cache_key(files, cfg)}"
    if (entry / "meta.json").is_file():
        return _read_entry(entry, mmap)
    pre = preprocess_case(load_case(files), cfg)

    def write(tmp: Path) -> None:
        for name in ("baseline", "followup", "brain", "mask"):
            arr = getattr(pre, name)
            if arr is not None:
                np.save(tmp / f"{name}.npy", arr)
        meta = {"id": pre.id, "grid": pre.meta.to_dict(), "config": asdict(cfg)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))

    publish_dir(entry, write, "meta.json")
    return _read_entry(entry, mmap) if mmap else pre


def load_preprocessed_all(
    cases: list[CaseFiles], cache_dir: str | Path, config: PreprocessConfig | None = None,
    *, mmap: bool = True,
) -> list[PreprocessedCase]:  # fmt: skip
    """:func:`load_preprocessed` for each case, in order."""
    return [load_preprocessed(c, cache_dir, config, mmap=mmap) for c in cases]
