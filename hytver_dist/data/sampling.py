"""Training patches as in HyTver/CoactSeg ``WeightCrop`` (lesion-centred), plus flip/rot90
augmentation; nnU-Net cases draw a label first, then a voxel of it. Rules: docs/model.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .nnunet_prep import PreprocessedVolume
from .preprocess import PreprocessedCase

AnyCase = PreprocessedCase | PreprocessedVolume


@dataclass(frozen=True)
class PatchConfig:
    """``patch_size``: edge in voxels (or a 3-tuple). ``shift``: max centre offset in voxels,
    capped at patch//2 - 1 so the chosen lesion voxel always lies inside the patch.
    ``p_foreground``: probability of a lesion-centred patch when the case has lesions (1.0 in
    the paper). ``flip_axes``: axes flipped independently with p 0.5. ``rot_axes``: plane of
    random rot90; (1, 2) is the isotropic 0.75 x 0.75 mm plane of the default grid (CoactSeg
    rotates the same plane), None disables; for non-cubic patches rot90 is skipped."""

    patch_size: int | tuple[int, int, int] = 80
    shift: int = 10
    p_foreground: float = 1.0
    augment: bool = True
    flip_axes: tuple[int, ...] = (0, 1, 2)
    rot_axes: tuple[int, int] | None = (1, 2)

    @property
    def size(self) -> np.ndarray:
        s = self.patch_size
        return np.asarray((s, s, s) if isinstance(s, int) else s, dtype=int)


def _window(start: np.ndarray, size: np.ndarray, shape: tuple[int, ...]):
    """Source and destination slices of a patch at ``start`` (may overhang the volume)."""
    src, dst = [], []
    for a, p, n in zip(start, size, shape, strict=True):
        lo, hi = max(a, 0), min(a + p, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - a, hi - a))
    return tuple(src), tuple(dst)


def _bounds(size: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """Allowed range of patch corners: inside the volume; an axis shorter than the patch is
    centred in it (the padding split evenly)."""
    shape = np.asarray(shape)
    short = shape < size
    lo = np.where(short, (shape - size) // 2, 0)
    return lo, np.where(short, lo, shape - size)


def _clamp_start(start: np.ndarray, size: np.ndarray, shape) -> np.ndarray:
    lo, hi = _bounds(size, shape)
    return np.clip(start, lo, hi)


class PatchSampler:
    """Draws patches from preprocessed cases; deterministic given the numpy Generator."""

    def __init__(self, cases: Sequence[AnyCase], config: PatchConfig | None = None):
        if not cases:
            raise ValueError("PatchSampler needs at least one case")
        self.cases = list(cases)
        self.config = config or PatchConfig()
        # Flat lesion-voxel indices and pad values, computed once per case (a full scan of a
        # 0.5 mm volume per patch would dominate sampling time).
        self._fg = [
            np.flatnonzero(c.mask) if c.mask is not None else np.empty(0, np.int64)
            for c in self.cases
        ]
        self._pad = [float(min(np.min(c.baseline), np.min(c.followup)))
                     if isinstance(c, PreprocessedCase)
                     else np.asarray(c.image).reshape(c.image.shape[0], -1).min(1)
                     for c in self.cases]
        # Per label: its voxels' flat indices (cases of datasets with several labels).
        self._by_label: list[list[np.ndarray]] = []
        for c, fg in zip(self.cases, self._fg, strict=True):
            if isinstance(c, PreprocessedCase) or not fg.size:
                self._by_label.append([])
                continue
            values = np.asarray(c.mask).reshape(-1)[fg]
            self._by_label.append([fg[values == v] for v in np.unique(values)])

    def patch_start(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
        """Corner of the next patch of case ``index`` and whether it is lesion-centred."""
        cfg, case = self.config, self.cases[index]
        size, shape = cfg.size, np.asarray(case.shape)
        fg = self._fg[index]
        if fg.size and rng.random() < cfg.p_foreground:
            if self._by_label[index]:
                fg = self._by_label[index][int(rng.integers(len(self._by_label[index])))]
            centre = np.asarray(np.unravel_index(fg[rng.integers(fg.size)], case.shape))
            shift = np.minimum(cfg.shift, size // 2 - 1)
            centre = centre + rng.integers(-shift, shift + 1)
            return _clamp_start(centre - size // 2, size, shape), True
        lo, hi = _bounds(size, shape)
        return lo + rng.integers(0, hi - lo + 1), False

    def sample(
        self, rng: np.random.Generator, index: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One (image (C, P, P, P) float32, mask (1, P, P, P) float32) pair; a random case if
        ``index`` is None. MSSEG-2: C = 3 and a 0/1 mask; other datasets: their channels and
        the label map's values."""
        if index is None:
            index = int(rng.integers(len(self.cases)))
        case, size = self.cases[index], self.config.size
        start, _ = self.patch_start(index, rng)
        src, dst = _window(start, size, case.shape)
        if isinstance(case, PreprocessedCase):
            image = np.full((3, *size), self._pad[index], dtype=np.float32)
            image[(0, *dst)] = case.baseline[src]
            image[(1, *dst)] = case.followup[src]
            image[2] = image[1] - image[0]
        else:
            pad = np.asarray(self._pad[index], np.float32)
            image = np.empty((len(pad), *size), dtype=np.float32)
            image[:] = pad.reshape(-1, 1, 1, 1)
            image[(slice(None), *dst)] = case.image[(slice(None), *src)]
        mask = np.zeros((1, *size), dtype=np.float32)
        if case.mask is not None:
            mask[(0, *dst)] = case.mask[src]
        if self.config.augment:
            image, mask = augment(image, mask, rng, self.config)
        return image, mask


def augment(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, config: PatchConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Random flips and rot90 on (C, X, Y, Z) arrays, identical for image and mask."""
    for ax in config.flip_axes:
        if rng.random() < 0.5:
            image, mask = np.flip(image, ax + 1), np.flip(mask, ax + 1)
    if config.rot_axes is not None:
        a, b = config.rot_axes
        k = int(rng.integers(4))
        if image.shape[a + 1] != image.shape[b + 1]:
            k = 0 if k % 2 else k  # odd turns would change a non-cubic patch's shape
        if k:
            image = np.rot90(image, k, axes=(a + 1, b + 1))
            mask = np.rot90(mask, k, axes=(a + 1, b + 1))
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)
