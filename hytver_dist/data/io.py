"""Validating NIfTI loader: every defect surfaces as one DataError naming the file.

nibabel loads lazily, so a truncated ``.nii.gz`` only fails when the data are read; we read the
whole volume up front (inside ``try``) rather than failing mid-training.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from .errors import DataError
from .msseg2 import CaseFiles

# What nibabel and gzip raise on corrupt or truncated files. gzip.BadGzipFile is an
# OSError; nibabel raises ValueError/HeaderDataError for impossible headers.
_READ_ERRORS = (ImageFileError, EOFError, OSError, zlib.error, ValueError)
_AFFINE_ATOL = 1e-3  # mm; t1/t2/GT share one grid in MSSEG-2, so any real mismatch is large
_BINARY_ATOL = 1e-3  # float masks saved via scl_slope=1/255 read as 1.00000006


@dataclass(frozen=True, eq=False)
class Case:
    """A validated case on its native grid (file orientation, not yet resampled)."""

    id: str
    baseline: np.ndarray  # float32 (X, Y, Z), time point 1
    followup: np.ndarray  # float32 (X, Y, Z), time point 2
    mask: np.ndarray | None  # uint8 {0, 1} new lesions, None if the case has no mask file
    affine: np.ndarray  # (4, 4) voxel -> world (mm), shared by all volumes
    spacing: tuple[float, float, float]  # mm per array axis, from the affine
    files: CaseFiles

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.baseline.shape)  # type: ignore[return-value]


def read_volume(path: str | Path, *, binary: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read a whole 3D NIfTI volume and its affine, validating it.

    Returns float32 data, or uint8 {0, 1} when ``binary`` (values must be within 1e-3 of 0 or
    1; anything else, e.g. a probability or multi-label map, is an error rather than silently
    thresholded). A trailing singleton axis (X, Y, Z, 1) is squeezed. Raises DataError for a
    missing/empty/unreadable file, a non-3D volume, non-finite values or a degenerate affine.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path)
    if path.stat().st_size == 0:
        raise DataError("empty file", path)
    try:
        img = nib.load(path)
        data = img.get_fdata(dtype=np.float32)
        img.uncache()
    except _READ_ERRORS as e:
        raise DataError(f"unreadable or corrupt image ({type(e).__name__}: {e})", path) from e
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"expected a 3D volume, got shape {tuple(img.shape)}", path)
    affine = np.asarray(img.affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine)) < 1e-9:
        raise DataError(f"degenerate affine {affine.tolist()}", path)
    bad = data.size - int(np.count_nonzero(np.isfinite(data)))
    if bad:
        raise DataError(f"{bad} non-finite voxel values (NaN/Inf)", path)
    if binary:
        # Masks are binarised with > 0.5 (MSSEG-2's consensus may hold interpolated or scaled
        # values); only values outside [0, 1] mean a label map or a wrong file.
        outside = (data < -_BINARY_ATOL) | (data > 1 + _BINARY_ATOL)
        if outside.any():
            vals = np.unique(data[outside])[:5]
            raise DataError(f"mask values must lie in [0, 1] (e.g. values {vals.tolist()}); "
                            "is this a label map rather than a binary mask?", path)
        data = (data > 0.5).astype(np.uint8)
    return data, affine


def _check_same_grid(
    path: Path, shape: tuple[int, ...], affine: np.ndarray, ref: Path, ref_shape, ref_affine
) -> None:
    if shape != ref_shape:
        raise DataError(f"shape {shape} differs from {ref.name} shape {ref_shape}", path)
    diff = float(np.abs(affine - ref_affine).max())
    if diff > _AFFINE_ATOL:
        raise DataError(f"affine differs from {ref.name} (max abs difference {diff:.4g})", path)


def load_case(case_dir: str | Path | CaseFiles, *, require_mask: bool = False) -> Case:
    """Load and validate one MSSEG-2 case folder (or discovered :class:`CaseFiles`).

    Both time points and the mask (if present) must share shape and affine. Raises DataError
    naming the offending file.
    """
    files = case_dir if isinstance(case_dir, CaseFiles) else CaseFiles.from_dir(case_dir)
    if require_mask and files.mask is None:
        raise DataError("ground_truth.nii.gz missing", files.dir)
    t1, aff = read_volume(files.baseline)
    t2, aff2 = read_volume(files.followup)
    _check_same_grid(files.followup, t2.shape, aff2, files.baseline, t1.shape, aff)
    mask = None
    if files.mask is not None:
        mask, aff_m = read_volume(files.mask, binary=True)
        _check_same_grid(files.mask, mask.shape, aff_m, files.baseline, t1.shape, aff)
    spacing = tuple(float(s) for s in nib.affines.voxel_sizes(aff))
    return Case(files.id, t1, t2, mask, aff, spacing, files)  # type: ignore[arg-type]


def save_mask(
    mask: np.ndarray, affine: np.ndarray, path: str | Path, header: nib.Nifti1Header | None = None
) -> Path:
    """Write a binary mask as uint8 with the reference affine (and header, if given).

    Masks go through uint8 explicitly: a float {0,1} array saved with a uint8 header gets
    scl_slope 1/255, and ``np.eye(4)`` affines break downstream evaluators.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image((np.asarray(mask) > 0.5).astype(np.uint8), affine, header=header)
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1.0, 0.0)
    nib.save(img, path)
    return path
