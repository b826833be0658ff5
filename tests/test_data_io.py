"""Validating loader: each corruption raises DataError naming the file."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hytver_dist.data import (
    BASELINE_NAME,
    FOLLOWUP_NAME,
    MASK_NAME,
    DataError,
    load_case,
    read_volume,
    save_mask,
)

SHAPE = (12, 14, 10)
AFFINE = np.array([[-0.9, 0, 0, 10], [0, 1.1, 0, -20], [0, 0, 1.3, 5], [0, 0, 0, 1.0]])


def _save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _write_case(d: Path, seed: int = 0) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    _save(d / BASELINE_NAME, rng.random(SHAPE, dtype=np.float32))
    _save(d / FOLLOWUP_NAME, rng.random(SHAPE, dtype=np.float32))
    mask = np.zeros(SHAPE, np.uint8)
    mask[3:5, 4:6, 2:4] = 1
    _save(d / MASK_NAME, mask)
    return d


def test_valid_case(tmp_path: Path) -> None:
    case = load_case(_write_case(tmp_path / "001"))
    assert case.id == "001"
    assert case.baseline.shape == case.followup.shape == case.mask.shape == SHAPE
    assert case.baseline.dtype == np.float32 and case.mask.dtype == np.uint8
    assert case.mask.sum() == 8
    np.testing.assert_allclose(case.spacing, (0.9, 1.1, 1.3))
    np.testing.assert_allclose(case.affine, AFFINE)


def test_missing_mask_is_none(tmp_path: Path) -> None:
    d = _write_case(tmp_path / "002")
    (d / MASK_NAME).unlink()
    assert load_case(d).mask is None
    with pytest.raises(DataError, match="ground_truth"):
        load_case(d, require_mask=True)


def test_float_mask_with_scaling_is_tolerated(tmp_path: Path) -> None:
    """A float {0,1} mask saved as uint8 gets scl_slope 1/255 and reads as 1.00000006."""
    d = _write_case(tmp_path / "003")
    m = np.zeros(SHAPE, np.float32)
    m[1, 1, 1] = 1.0
    img = nib.Nifti1Image(m, AFFINE)
    img.set_data_dtype(np.uint8)
    nib.save(img, d / MASK_NAME)
    assert load_case(d).mask.sum() == 1


def test_trailing_singleton_axis_is_squeezed(tmp_path: Path) -> None:
    p = _save(tmp_path / "x.nii.gz", np.ones((*SHAPE, 1), np.float32))
    assert read_volume(p)[0].shape == SHAPE


def _truncate(p: Path) -> None:
    # Incompressible data, so cutting the .gz in half cuts inside the voxel data.
    _save(p, np.random.default_rng(1).random(SHAPE, dtype=np.float32))
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])


def _not_gzip(p: Path) -> None:
    p.write_bytes(b"this is not a gzip file at all" * 20)


def _bad_crc_body(p: Path) -> None:
    _save(p, np.random.default_rng(1).random(SHAPE, dtype=np.float32))
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    p.write_bytes(bytes(raw))


CORRUPTIONS = {
    # name: (file to corrupt, corruption, expected words in the message)
    "truncated_gzip": (FOLLOWUP_NAME, _truncate, "corrupt"),
    "not_gzip": (BASELINE_NAME, _not_gzip, "corrupt"),
    "flipped_byte": (FOLLOWUP_NAME, _bad_crc_body, "corrupt"),
    "empty_file": (BASELINE_NAME, lambda p: p.write_bytes(b""), "empty file"),
    "4d": (FOLLOWUP_NAME, lambda p: _save(p, np.ones((*SHAPE, 2), np.float32)), "3D"),
    "2d": (BASELINE_NAME, lambda p: _save(p, np.ones(SHAPE[:2], np.float32)), "3D"),
    "shape": (MASK_NAME, lambda p: _save(p, np.zeros((12, 14, 11), np.uint8)), "shape"),
    "affine": (
        FOLLOWUP_NAME,
        lambda p: _save(p, np.ones(SHAPE, np.float32), AFFINE + np.diag([0, 0, 0.01, 0])),
        "affine",
    ),
    "nan": (
        FOLLOWUP_NAME,
        lambda p: _save(p, np.where(np.arange(np.prod(SHAPE)).reshape(SHAPE) == 7, np.nan,
                                    1.0).astype(np.float32)),  # fmt: skip
        "non-finite",
    ),
    "label_map_mask": (
        MASK_NAME,
        lambda p: _save(p, np.full(SHAPE, 2, np.uint8)),
        "label map",
    ),
    "negative_mask": (
        MASK_NAME,
        lambda p: _save(p, np.full(SHAPE, -1.0, np.float32)),
        "[0, 1]",
    ),
}


def test_fractional_mask_is_binarised_above_half(tmp_path: Path) -> None:
    """MSSEG-2 ground truth is binarised with > 0.5, never == 1 (interpolated masks)."""
    d = _write_case(tmp_path / "005")
    values = np.zeros(SHAPE, np.float32)
    values[1, 1, 1], values[2, 2, 2], values[3, 3, 3] = 0.4, 0.6, 1.0
    _save(d / MASK_NAME, values)
    mask = load_case(d).mask
    assert mask.dtype == np.uint8
    assert mask.sum() == 2 and mask[2, 2, 2] == 1 and mask[1, 1, 1] == 0


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corruption_raises_data_error_naming_file(tmp_path: Path, kind: str) -> None:
    name, corrupt, words = CORRUPTIONS[kind]
    d = _write_case(tmp_path / "004")
    corrupt(d / name)
    with pytest.raises(DataError) as info:
        load_case(d)
    msg = str(info.value)
    assert str(d / name) in msg
    assert words.lower() in msg.lower()
    assert info.value.path == d / name
    assert isinstance(info.value, ValueError)


def test_missing_followup_names_folder(tmp_path: Path) -> None:
    d = _write_case(tmp_path / "005")
    (d / FOLLOWUP_NAME).unlink()
    with pytest.raises(DataError, match="incomplete case"):
        load_case(d)


def test_save_mask_roundtrip(tmp_path: Path) -> None:
    ref = nib.load(_write_case(tmp_path / "006") / BASELINE_NAME)
    mask = np.zeros(SHAPE, np.float64)
    mask[2, 3, 4] = 1.0
    p = save_mask(mask, ref.affine, tmp_path / "pred.nii.gz", header=ref.header)
    out = nib.load(p)
    assert out.get_data_dtype() == np.uint8
    np.testing.assert_allclose(out.affine, ref.affine)
    data = np.asarray(out.dataobj)
    assert data.dtype == np.uint8 and data.sum() == 1 and data[2, 3, 4] == 1


def test_gzip_is_really_truncated(tmp_path: Path) -> None:
    """Guard for the fixture above: the truncated file must fail inside gzip, not earlier."""
    p = tmp_path / "t.nii.gz"
    _truncate(p)
    with pytest.raises(EOFError), gzip.open(p) as f:
        f.read()
