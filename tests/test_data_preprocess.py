"""Canonical orientation, resampling geometry, small-lesion survival, crop, z-score, cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

import hytver_dist.data.preprocess as pp
from hytver_dist.data import (
    FOLLOWUP_NAME,
    PreprocessConfig,
    load_case,
    load_preprocessed,
    preprocess_case,
    resample_mask,
    resample_to_spacing,
    to_original_grid,
)
from hytver_dist.data.synth import case_rng, generate_case

CONN26 = np.ones((3, 3, 3), bool)
SMALL = PreprocessConfig(target_spacing=(2.0, 3.0, 3.0), crop_margin=3)


def _oblique_affine() -> np.ndarray:
    c, s = np.cos(np.radians(15)), np.sin(np.radians(15))
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([-1.0, 1, 1])  # L-flipped
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag([1.0, 1.2, 0.9])
    a[:3, 3] = [40, -10, 7]
    return a


def test_resample_geometry_keeps_world_points() -> None:
    aff = _oblique_affine()
    shape = (30, 26, 24)
    p0 = np.array([12.3, 9.7, 14.2])
    grid = np.indices(shape).astype(float)
    vol = np.exp(-(((grid - p0[:, None, None, None]) / 2.0) ** 2).sum(0)).astype(np.float32)
    target = (0.7, 0.8, 1.1)
    out, new_aff = resample_to_spacing(vol, aff, target)
    np.testing.assert_allclose(nib.affines.voxel_sizes(new_aff), target, rtol=1e-6)
    expect_shape = np.rint(np.array(shape) * [1.0, 1.2, 0.9] / target).astype(int)
    assert out.shape == tuple(expect_shape)
    # Direction cosines kept; the blob centre and the field-of-view centre stay in place.
    np.testing.assert_allclose(
        new_aff[:3, :3] / np.array(target), aff[:3, :3] / [1.0, 1.2, 0.9], atol=1e-9
    )
    world = nib.affines.apply_affine
    centre_new = np.array(ndimage.center_of_mass(out))
    assert np.linalg.norm(world(new_aff, centre_new) - world(aff, p0)) < 0.1
    fov = world(aff, (np.array(shape) - 1) / 2)
    np.testing.assert_allclose(world(new_aff, (np.array(out.shape) - 1) / 2), fov, atol=1e-9)


def test_tiny_lesions_survive_downsampling() -> None:
    mask = np.zeros((40, 40, 40), np.uint8)
    mask[10:12, 10, 10] = 1  # 2 voxels
    mask[30, 5, 20] = 1  # 1 voxel
    sphere = ((np.indices(mask.shape) - np.array([25.3, 24.6, 26.1])[:, None, None, None]) ** 2
              ).sum(0) <= 10.0**2  # fmt: skip
    mask[sphere] = 1  # radius 5 mm
    aff = np.diag([0.5, 0.5, 0.5, 1.0])
    out, new_aff = resample_to_spacing(mask, aff, (1.5, 1.5, 1.5), is_mask=True)
    assert out.dtype == np.uint8
    labels, n = ndimage.label(out, CONN26)
    assert n == 3
    # Each small lesion is kept where it was (within one target voxel).
    for src in ([10.5, 10, 10], [30, 5, 20]):
        w = nib.affines.apply_affine(aff, src)
        v = nib.affines.apply_affine(np.linalg.inv(new_aff), w)
        near = out[tuple(slice(max(int(np.floor(x)) - 1, 0), int(np.ceil(x)) + 2) for x in v)]
        assert near.any()
    # The large lesion keeps its volume (coverage >= 0.5 is unbiased).
    big = np.bincount(labels.ravel())[1:].max() * 1.5**3
    assert abs(big - sphere.sum() * 0.125) / (sphere.sum() * 0.125) < 0.15
    # Nearest neighbour would have lost the tiny ones.
    nn = ndimage.affine_transform(mask, [3.0] * 3, [1.0] * 3, (13,) * 3, order=0)
    assert ndimage.label(nn, CONN26)[1] < 3


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 1.0, 3.0)])
def test_two_voxel_lesion_survives_default_grid(spacing) -> None:
    mask = np.zeros((20, 20, 12), np.uint8)
    mask[7:9, 9, 5] = 1
    out, _ = resample_to_spacing(mask, np.diag([*spacing, 1.0]), pp.DEFAULT_SPACING, is_mask=True)
    assert ndimage.label(out, CONN26)[1] == 1
    # Volume within quantisation: a 1-voxel-thin lesion gets 1 or 2 cells per axis.
    vol = out.sum() * np.prod(pp.DEFAULT_SPACING)
    assert 0.5 <= vol / (2 * np.prod(spacing)) <= 2.0


def test_resample_mask_empty() -> None:
    out = resample_mask(np.zeros((5, 5, 5)), [0.5] * 3, [0.0] * 3, (9, 9, 9))
    assert out.shape == (9, 9, 9) and not out.any()


def _lesion_centres(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask, CONN26)
    centres = ndimage.center_of_mass(mask, labels, range(1, n + 1))
    return nib.affines.apply_affine(affine, np.asarray(centres))


@pytest.fixture(scope="module")
def oriented_cases(tmp_path_factory) -> dict[str, Path]:
    """Tiny synthetic positive cases stored in three orientations."""
    root = tmp_path_factory.mktemp("oriented")
    out = {}
    for i, codes in enumerate(("LAS", "PIR", "RAS")):
        info = generate_case(root, codes, case_rng(7, i), size="tiny", negative=False,
                             axcodes=codes)  # fmt: skip
        assert info.n_new >= 1
        out[codes] = root / codes
    return out


@pytest.mark.parametrize("codes", ["LAS", "PIR"])
def test_preprocess_geometry_and_roundtrip(oriented_cases, codes: str) -> None:
    case = load_case(oriented_cases[codes])
    assert nib.aff2axcodes(case.affine) == tuple(codes)
    pre = preprocess_case(case, SMALL)
    m = pre.meta
    assert nib.aff2axcodes(m.affine) == ("R", "A", "S")
    np.testing.assert_allclose(nib.affines.voxel_sizes(m.affine), SMALL.target_spacing)
    assert pre.shape == m.shape and pre.baseline.dtype == np.float32
    box = zip(m.crop_start, m.crop_stop, m.resampled_shape, strict=True)
    assert all(0 <= a < b <= n for a, b, n in box)
    # Lesion volume (mm^3) and world position are preserved.
    vol0 = case.mask.sum() * np.prod(case.spacing)
    vol1 = pre.mask.sum() * np.prod(SMALL.target_spacing)
    assert abs(vol1 - vol0) / vol0 < 0.3
    c0, c1 = _lesion_centres(case.mask, case.affine), _lesion_centres(pre.mask, m.affine)
    assert len(c0) == len(c1)
    dist = np.linalg.norm(c0[:, None] - c1[None], axis=-1).min(1)
    assert dist.max() < 2.0  # mm; voxels are 4 mm before, 2-3 mm after
    # Back onto the input grid.
    back = to_original_grid(pre.mask, m)
    assert back.shape == case.shape and back.dtype == np.uint8
    dice = 2 * (back & case.mask).sum() / (back.sum() + case.mask.sum())
    assert dice > 0.85
    assert ndimage.label(back, CONN26)[1] == ndimage.label(case.mask, CONN26)[1]
    prob = to_original_grid(pre.mask.astype(np.float32), m, is_mask=False)
    assert prob.shape == case.shape and prob.dtype == np.float32


@pytest.mark.parametrize("codes", ["LAS", "PIR", "RAS"])
def test_native_grid_roundtrip_is_exact(oriented_cases, codes: str) -> None:
    case = load_case(oriented_cases[codes])
    cfg = PreprocessConfig(target_spacing=None, crop_margin=2)
    pre = preprocess_case(case, cfg)
    np.testing.assert_allclose(pre.meta.spacing, case.spacing)
    np.testing.assert_array_equal(to_original_grid(pre.mask, pre.meta), case.mask)
    st = pre.meta.stats["followup"]
    raw = to_original_grid(pre.followup * st["std"] + st["mean"], pre.meta, is_mask=False)
    inside = to_original_grid(np.ones(pre.shape, np.uint8), pre.meta).astype(bool)
    np.testing.assert_allclose(raw[inside], case.followup[inside], rtol=1e-4, atol=1e-2)


def test_crop_and_zscore(oriented_cases) -> None:
    case = load_case(oriented_cases["RAS"])
    pre = preprocess_case(case, SMALL)
    brain = pre.brain.astype(bool)
    assert 0.15 < brain.mean() < 0.8
    for img in (pre.baseline, pre.followup):
        assert abs(img[brain].mean()) < 1e-3 and abs(img[brain].std() - 1) < 1e-3
    lo, hi = np.argwhere(brain).min(0), np.argwhere(brain).max(0)
    m = pre.meta
    for ax in range(3):  # margin kept unless the volume edge is reached
        assert lo[ax] >= SMALL.crop_margin - 1 or m.crop_start[ax] == 0
        assert pre.shape[ax] - 1 - hi[ax] >= SMALL.crop_margin - 1 or (
            m.crop_stop[ax] == m.resampled_shape[ax]
        )
    # The crop keeps every lesion voxel.
    assert pre.mask.sum() > 0
    assert to_original_grid(pre.mask, m).sum() >= 0.8 * case.mask.sum()


def test_head_mode_and_bad_config() -> None:
    with pytest.raises(ValueError):
        PreprocessConfig(brain_mask="bet")
    with pytest.raises(ValueError):
        PreprocessConfig(target_spacing=(1.0, 0.0, 1.0))


def test_cache_reuse_and_invalidation(tmp_path: Path, oriented_cases, monkeypatch) -> None:
    case_dir = tmp_path / "data" / "c01"
    shutil.copytree(oriented_cases["LAS"], case_dir)
    calls = []
    real = pp.preprocess_case

    def counting(case, config=None):
        calls.append(case.id)
        return real(case, config)

    monkeypatch.setattr(pp, "preprocess_case", counting)
    cache = tmp_path / "cache"
    a = load_preprocessed(case_dir, cache, SMALL)
    b = load_preprocessed(case_dir, cache, SMALL)
    assert len(calls) == 1
    assert isinstance(b.followup, np.memmap)
    np.testing.assert_array_equal(a.followup, b.followup)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert b.meta.crop_start == a.meta.crop_start and b.meta.spacing == a.meta.spacing
    np.testing.assert_allclose(b.meta.affine, a.meta.affine)
    np.testing.assert_array_equal(
        to_original_grid(b.mask, b.meta), to_original_grid(a.mask, a.meta)
    )
    assert not list(cache.glob(".tmp-*"))
    # A changed source file (mtime) or config gives a new entry.
    st = (case_dir / FOLLOWUP_NAME).stat()
    os.utime(case_dir / FOLLOWUP_NAME, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    load_preprocessed(case_dir, cache, SMALL)
    assert len(calls) == 2
    load_preprocessed(case_dir, cache, PreprocessConfig(target_spacing=(2.0, 3.0, 3.0)))
    assert len(calls) == 3
    load_preprocessed(case_dir, cache, SMALL, mmap=False)
    assert len(calls) == 3
    assert len(list(cache.iterdir())) == 3
