"""Patch sampler: lesion-centred and uniform patches, padding, augmentation, seed streams."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hytver_dist.data import (
    GridMeta,
    PatchConfig,
    PatchSampler,
    PreprocessConfig,
    PreprocessedCase,
    discover_cases,
    load_preprocessed_all,
)

P = 16


def _case(shape=(40, 44, 36), lesions=(), seed=0, cid="c") -> PreprocessedCase:
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, np.uint8)
    for idx in lesions:
        mask[idx] = 1
    t1 = rng.normal(size=shape).astype(np.float32)
    # Follow-up = baseline + 5 x mask, so augmentations can be checked against the mask.
    t2 = (t1 + 5 * mask).astype(np.float32)
    meta = GridMeta(shape, np.eye(4), np.array([[0, 1], [1, 1], [2, 1.0]]), shape, (1.0,) * 3,
                    (0.0,) * 3, shape, (0, 0, 0), shape, np.eye(4), (1.0,) * 3)  # fmt: skip
    return PreprocessedCase(cid, t1, t2, mask, np.ones(shape, np.uint8), meta)


def test_foreground_patches_contain_lesions() -> None:
    case = _case(lesions=[(3, 40, 2), (20, 20, 20), (39, 0, 35)])  # incl. corners
    sampler = PatchSampler([case], PatchConfig(patch_size=P, shift=10, augment=False))
    rng = np.random.default_rng(0)
    hits = set()
    for _ in range(300):
        start, fg = sampler.patch_start(0, rng)
        assert fg
        image, mask = sampler.sample(np.random.default_rng(rng.integers(1 << 31)), 0)
        assert mask.sum() >= 1 and image.shape == (3, P, P, P) and mask.shape == (1, P, P, P)
        assert np.all((start >= 0) & (start + P <= case.shape))
        hits |= {tuple(v) for v in np.argwhere(case.mask) if np.all((v >= start) &
                                                                     (v < start + P))}  # fmt: skip
    assert len(hits) == 3  # every lesion voxel drawn, the last one included


def test_single_voxel_lesion_and_shift_range() -> None:
    """CoactSeg fails on one foreground voxel and never shifts by +10; we do both."""
    case = _case(lesions=[(20, 22, 18)])
    cfg = PatchConfig(patch_size=40, shift=10, augment=False)
    sampler = PatchSampler([case], cfg)
    rng = np.random.default_rng(1)
    offsets = np.array([sampler.patch_start(0, rng)[0] for _ in range(2000)])
    # Volume 40 x 44 x 36 with 40-patches: only axis 1 has room (start 0..4).
    assert set(offsets[:, 1]) <= set(range(5))
    assert offsets[:, 0].min() == 0 and (offsets[:, 2] == -2).all()  # short axis: centred
    wide = _case(shape=(100, 100, 100), lesions=[(50, 50, 50)])
    wide_sampler = PatchSampler([wide], cfg)
    starts = np.array([wide_sampler.patch_start(0, rng)[0] for _ in range(3000)])
    shifts = 50 - 20 - starts  # start = voxel - 20 + shift
    assert shifts.min() == -10 and shifts.max() == 10
    assert abs(shifts.mean()) < 0.3


def test_negative_patches_uniform() -> None:
    case = _case(shape=(40, 24, 20))
    sampler = PatchSampler([case], PatchConfig(patch_size=P, augment=False))
    rng = np.random.default_rng(2)
    starts = np.array([sampler.patch_start(0, rng) for _ in range(4000)], dtype=object)
    assert not any(starts[:, 1])
    s = np.stack(starts[:, 0])
    for ax, n in enumerate((40, 24, 20)):
        counts = np.bincount(s[:, ax], minlength=n - P + 1)
        assert len(counts) == n - P + 1 and counts.min() > 0  # whole range reached
        expected = len(s) / (n - P + 1)
        chi2 = ((counts - expected) ** 2 / expected).sum()
        assert chi2 < 3 * (n - P + 1) + 30  # loose: far from any systematic bias


def test_padding_at_borders() -> None:
    case = _case(shape=(10, 20, 30), lesions=[(0, 0, 0)])
    sampler = PatchSampler([case], PatchConfig(patch_size=P, augment=False))
    image, mask = sampler.sample(np.random.default_rng(0), 0)
    assert image.shape == (3, P, P, P) and mask.shape == (1, P, P, P)
    assert image.dtype == mask.dtype == np.float32 and mask.sum() == 1
    pad = min(case.baseline.min(), case.followup.min())
    # Axis 0 (10 < 16) is centred: 3 padded planes on each side, difference channel 0 there.
    assert np.all(image[:2, :3] == pad) and np.all(image[:2, -3:] == pad)
    assert np.all(image[2, :3] == 0)
    np.testing.assert_allclose(image[2], image[1] - image[0], atol=1e-6)


def test_augmentation_identical_for_image_and_mask() -> None:
    case = _case(shape=(30, 30, 30), lesions=[(5, 6, 7), (6, 6, 7), (20, 10, 25), (9, 9, 9)])
    sampler = PatchSampler([case], PatchConfig(patch_size=P, augment=True))
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(50):
        image, mask = sampler.sample(rng, 0)
        np.testing.assert_allclose(image[2], 5 * mask[0], atol=1e-5)  # diff channel = 5 x mask
        assert image.flags.c_contiguous and mask.flags.c_contiguous
        seen.add(tuple(np.argwhere(mask[0]).ravel()[:3]))
    assert len(seen) > 5  # orientations vary


def test_determinism_per_seed() -> None:
    cases = [_case(lesions=[(10, 10, 10)], cid="a"), _case(seed=1, cid="b")]
    sampler = PatchSampler(cases, PatchConfig(patch_size=P))

    def draw(seed):
        rng = np.random.default_rng(seed)
        return [sampler.sample(rng) for _ in range(5)]

    a, b, c = draw(7), draw(7), draw(8)
    for (ia, ma), (ib, mb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ma, mb)
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, c, strict=True))


def test_sampler_on_preprocessed_synthetic(synth_dataset: Path, tmp_path: Path) -> None:
    files = discover_cases(synth_dataset)
    cases = load_preprocessed_all(files, tmp_path / "cache",
                                  PreprocessConfig(target_spacing=(4.0, 4.0, 4.0), crop_margin=2))
    sampler = PatchSampler(cases, PatchConfig(patch_size=24))
    rng = np.random.default_rng(0)
    n_fg = 0
    for _ in range(16):
        img, msk = sampler.sample(rng)
        assert img.shape == (3, 24, 24, 24) and np.isfinite(img).all()
        n_fg += int(msk.sum() > 0)
    positives = sum(c.has_lesions for c in cases)
    assert positives == 3 and n_fg >= 4  # the 3 positive cases always give lesion patches


@pytest.mark.parametrize("size", [(16, 16, 8)])
def test_non_cubic_patch(size) -> None:
    case = _case(lesions=[(10, 10, 10)])
    image, mask = PatchSampler([case], PatchConfig(patch_size=size)).sample(
        np.random.default_rng(0), 0
    )
    assert image.shape == (3, *size) and mask.shape == (1, *size) and mask.sum() == 1
