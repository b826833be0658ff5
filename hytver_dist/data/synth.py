"""Synthetic longitudinal FLAIR pairs with new-lesion masks, in the MSSEG-2 layout or (with
``--format nnunet``) the nnU-Net v2 raw layout with nested multi-class or region labels.

    python -m hytver_dist.synth --out DIR --cases N --seed S [--size tiny|small|full]

Deterministic per (seed, case index). Anatomy, sizes and lesions: docs/datasets.md.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform
from scipy import ndimage
from scipy.spatial.transform import Rotation

from .io import save_mask
from .msseg2 import BASELINE_NAME, FOLLOWUP_NAME, MASK_NAME

SIZES: dict[str, int] = {"tiny": 4, "small": 2, "full": 1}  # voxel size, mm
P_NO_NEW = 11 / 40  # MSSEG-2 public training set: 11 of 40 patients without new lesions
# Head box on the 1 mm MNI152 grid (brain bounding box + >= 12 mm for skull and scalp;
# edges divisible by 4 so every size is an exact block average).
_BOX_START = np.array([14, 13, 0])
BOX_MM = (172, 208, 168)
_BOX_SIZE = np.array(BOX_MM)
_MNI_AFFINE = np.array([[1.0, 0, 0, -98], [0, 1, 0, -134], [0, 0, 1, -72], [0, 0, 0, 1]])
_AXCODES = ("RAS", "LAS", "LPS", "PIR")  # stored orientations, exercising canonicalisation
_REGIONS = ("periventricular", "deep_wm", "juxtacortical")
_REGION_P = (0.6, 0.3, 0.1)
_CONN26 = np.ones((3, 3, 3), dtype=bool)


# ------------------------------------------------------------------------------ anatomy


@dataclass(frozen=True, eq=False)
class Anatomy:
    """Template anatomy on the output grid: tissue fractions, distances in mm, region codes
    (1 periventricular, 2 deep WM, 3 juxtacortical, 0 elsewhere)."""

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    dist_out: np.ndarray  # mm outside the brain (0 inside)
    region: np.ndarray
    voxel: float
    affine: np.ndarray  # RAS voxel -> world


def _nilearn_data_dir() -> Path | None:
    """nilearn's bundled data folder, located without importing nilearn (slow, needs sklearn)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    return d if (d / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz").is_file() else None


def _mni_maps() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = _nilearn_data_dir()
    if d is None:
        raise RuntimeError(
            "anatomy='mni' needs nilearn's bundled MNI152 templates (pip install nilearn); "
            "or use anatomy='procedural'"
        )
    box = tuple(slice(a, a + n) for a, n in zip(_BOX_START, _BOX_SIZE, strict=True))

    def read(kind: str) -> np.ndarray:
        img = nib.load(d / f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz")
        return np.asarray(img.dataobj, dtype=np.float32)[box] / 255.0

    brain = ndimage.binary_fill_holes(read("t1") > 0.05).astype(np.float32)
    gm, wm = read("gm") * brain, read("wm") * brain
    return gm, wm, np.clip(brain - gm - wm, 0, 1)


def _procedural_maps(f: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ellipsoidal brain at ``f`` mm: folded ~3 mm cortex, WM core, two lateral ventricles."""
    rng = np.random.default_rng(12345)  # fixed: subjects differ through their deformation
    shape = tuple(int(n) for n in _BOX_SIZE // f)
    g = np.stack(np.meshgrid(*[(np.arange(n) + 0.5) * f - e / 2
                               for n, e in zip(shape, _BOX_SIZE, strict=True)],
                             indexing="ij"))  # fmt: skip
    g[2] += 20  # brain sits high in the box (room for the neck below)
    r = np.sqrt(((g / np.array([70.0, 86, 62])[:, None, None, None]) ** 2).sum(0))
    depth = (1 - r) * 66  # ~mm below the surface
    folds = ndimage.gaussian_filter(rng.standard_normal(shape), 4 / f)
    folds *= 6 / folds.std()
    brain = depth > 0
    gm = brain & (depth < 3 + np.abs(folds))
    sulci = brain & (np.abs(folds) < 0.6) & (depth < 8)
    vent = np.zeros_like(brain)
    for side in (-9.0, 9.0):
        vent |= (((g[0] - side) / 5) ** 2 + (g[1] / 24) ** 2 + ((g[2] - 5) / 9) ** 2) <= 1
    csf = (sulci | vent).astype(np.float32)
    gm_f = (gm & ~sulci).astype(np.float32)
    wm_f = (brain & ~gm & ~sulci & ~vent).astype(np.float32)
    smooth = [ndimage.gaussian_filter(m, 0.7 / f) for m in (gm_f, wm_f, csf)]
    return smooth[0], smooth[1], smooth[2]


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return a
    s = a.shape
    return a.reshape(s[0] // f, f, s[1] // f, f, s[2] // f, f).mean(axis=(1, 3, 5))


def grid_shape(size: str, spacing: Sequence[float] | None = None) -> tuple[int, int, int]:
    """Voxels per axis of a generated case of ``size``, or of it resampled to ``spacing`` mm."""
    mm = spacing or (SIZES[size],) * 3
    return tuple(int(b // s) for b, s in zip(BOX_MM, mm, strict=True))  # type: ignore[return-value]


@functools.lru_cache(maxsize=4)
def template_anatomy(size: str = "small", anatomy: str = "mni") -> Anatomy:
    """Cached template anatomy for a size ("tiny", "small", "full")."""
    f = SIZES[size]
    if anatomy == "mni":
        gm, wm, csf = (_block_mean(m, f).astype(np.float32) for m in _mni_maps())
    else:
        gm, wm, csf = (m.astype(np.float32) for m in _procedural_maps(f))
    brain = (gm + wm + csf) > 0.5
    # Ventricles: CSF deep inside the brain, the two largest components.
    deep = ndimage.distance_transform_edt(brain, sampling=f) > 15
    labels, n = ndimage.label((csf > 0.5) & deep)
    vent = np.zeros_like(brain)
    if n:
        sizes = np.bincount(labels.ravel())[1:]
        vent = np.isin(labels, 1 + np.argsort(sizes)[-2:])
    dist_vent = ndimage.distance_transform_edt(~vent, sampling=f)
    region = np.zeros(gm.shape, np.uint8)
    region[(wm > 0.6) & (dist_vent > 1) & (dist_vent <= 8 + f)] = 1
    region[(wm > 0.8) & (dist_vent > 8 + f)] = 2
    near_gm = ndimage.binary_dilation(gm > 0.5, _CONN26)
    region[(wm > 0.4) & near_gm & (region != 1)] = 3
    dist_out = ndimage.distance_transform_edt(~brain, sampling=f).astype(np.float32)
    origin = _BOX_START + (f - 1) / 2
    affine = _MNI_AFFINE @ np.block([[np.eye(3) * f, origin[:, None]], [np.zeros((1, 3)), 1]])
    return Anatomy(gm, wm, csf, dist_out, region, float(f), affine)


# ------------------------------------------------------------------------------ lesions


@dataclass(frozen=True)
class CasePlan:
    """Random choices of a case drawn before rendering (cheap: used for statistics)."""

    negative: bool
    old_volumes: tuple[int, ...]  # voxels
    new_volumes: tuple[int, ...]


def plan_case(
    rng: np.random.Generator, *, negative: bool | None = None, cap: int = 2000
) -> CasePlan:
    """Lesion counts and volumes. New lesions: none with probability 11/40, else
    1 + NegBin(r=0.5, mean 4.2) capped at 30 (mean 5.1, median 3, a third single-lesion:
    MSSEG-2 has 5.2 / 3 / 10 of 29). Old: U{3..12}. Volumes log-normal in voxels, clipped
    to [2, cap]."""
    if negative is None:
        negative = bool(rng.random() < P_NO_NEW)
    n_old = int(rng.integers(3, 13))
    n_new = 0 if negative else 1 + min(int(rng.negative_binomial(0.5, 0.5 / 4.7)), 29)

    def volumes(n: int, median: float) -> tuple[int, ...]:
        v = np.exp(rng.normal(np.log(median), 1.0, n))
        return tuple(int(x) for x in np.clip(np.rint(v), 2, cap))

    return CasePlan(negative, volumes(n_old, 60), volumes(n_new, 30))


def _render_lesion(
    rng: np.random.Generator, volume: int, centre: np.ndarray, shape: tuple[int, ...]
) -> tuple[tuple[slice, ...], np.ndarray]:
    """Rough rotated ellipsoid of about ``volume`` voxels around ``centre``: (box, inside)."""
    radius = (3 * volume / (4 * np.pi)) ** (1 / 3)
    radii = radius * np.exp(rng.normal(0, 0.25, 3))
    radii *= radius / np.prod(radii) ** (1 / 3)  # keep the volume, vary the shape
    half = int(np.ceil(radii.max() * 1.4)) + 2
    lo = np.maximum(centre - half, 0)
    hi = np.minimum(centre + half + 1, shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)],
                                indexing="ij"), -1)  # fmt: skip
    d = (grid - centre - rng.uniform(-0.3, 0.3, 3)) @ Rotation.random(rng=rng).as_matrix()
    q = ((d / radii) ** 2).sum(-1)
    rough = ndimage.gaussian_filter(rng.standard_normal(q.shape), 1.0)
    inside = (q + 0.25 * rough / max(rough.std(), 1e-6)) <= 1
    inside[tuple(centre - lo)] = True
    labels, _ = ndimage.label(inside, _CONN26)
    return box, labels == labels[tuple(centre - lo)]  # one connected lesion


def _place_lesions(
    rng: np.random.Generator,
    volumes: Sequence[int],
    region: np.ndarray,
    tissue: np.ndarray,
    occupied: np.ndarray,
    *,
    must_place: bool,
) -> list[tuple[tuple[slice, ...], np.ndarray]]:
    """Non-touching lesions (>= 1 voxel apart, so each is its own 26-connected component)
    inside white matter. A lesion that does not fit after 30 tries is dropped, except that
    with ``must_place`` the first is retried at shrinking volume until it fits."""
    candidates = [np.flatnonzero(region == k + 1) for k in range(len(_REGIONS))]
    fallback = np.flatnonzero(tissue > 0.5)
    placed = []
    for j, vol in enumerate(volumes):
        for attempt in range(200 if (must_place and j == 0) else 30):
            v = max(1, int(vol * 0.8 ** (attempt // 10)))
            pool = candidates[rng.choice(len(_REGIONS), p=_REGION_P)]
            pool = pool if pool.size else fallback
            centre = np.asarray(np.unravel_index(pool[rng.integers(pool.size)], region.shape))
            box, inside = _render_lesion(rng, v, centre, region.shape)
            inside &= tissue[box] > 0.5
            if not inside.any() or (occupied[box] & inside).any():
                continue
            occupied[box] |= ndimage.binary_dilation(inside, _CONN26)
            placed.append((box, inside))
            break
    return placed


def _composite(image: np.ndarray, lesions, intensities: Sequence[float]) -> None:
    """Blend lesions into ``image`` in place: a 0.7-voxel Gaussian partial-volume rim, and
    at least 85 % lesion signal inside the labelled voxels (tiny lesions stay visible)."""
    for (box, inside), mu in zip(lesions, intensities, strict=True):
        f = np.maximum(ndimage.gaussian_filter(inside.astype(np.float32), 0.7), 0.85 * inside)
        image[box] = image[box] * (1 - f) + mu * f


# ---------------------------------------------------------------------------- rendering


def _rigid(shape, rng, max_deg: float, max_mm: float, voxel: float, max_scale: float = 0.0):
    """(matrix, offset) of a random rotation/scale/translation about the volume centre."""
    rot = Rotation.from_euler("xyz", rng.uniform(-max_deg, max_deg, 3), degrees=True)
    m = rot.as_matrix() @ np.diag(1 + rng.uniform(-max_scale, max_scale, 3))
    c = (np.asarray(shape) - 1) / 2
    return m, c - m @ c + rng.uniform(-max_mm, max_mm, 3) / voxel


def _bias(rng: np.random.Generator, shape) -> np.ndarray:
    coarse = rng.normal(0, 0.08, (4, 4, 4))
    zoom = [n / 4 for n in shape]
    return np.exp(ndimage.zoom(coarse, zoom, order=3, mode="nearest", grid_mode=True))


def _rician(rng: np.random.Generator, image: np.ndarray, sigma: float) -> np.ndarray:
    n1, n2 = rng.normal(0, sigma, (2, *image.shape)).astype(np.float32)
    return np.sqrt((image + n1) ** 2 + n2**2)


@dataclass
class CaseInfo:
    """What was generated (written to manifest.json)."""

    id: str
    seed: list[int]
    negative: bool
    n_old: int
    n_new: int
    n_new_planned: int  # differs from n_new only if a lesion found no free white matter
    old_volumes: list[int]
    new_volumes: list[int]  # voxels per placed new lesion (mask components)
    axcodes: str
    shape: list[int]
    spacing: float
    misregistration: dict = field(default_factory=dict)


def generate_case(
    out_dir: str | Path,
    case_id: str,
    rng: np.random.Generator,
    *,
    size: str = "small",
    anatomy: str = "mni",
    negative: bool | None = None,
    axcodes: str | None = None,
) -> CaseInfo:
    """Render and write one case folder ``out_dir/case_id``; returns its :class:`CaseInfo`."""
    tpl = template_anatomy(size, anatomy)
    shape = tpl.gm.shape
    # Subject anatomy: random affine of the template (order 1 for fractions/distances,
    # order 0 for region codes).
    m, off = _rigid(shape, rng, 5.0, 3.0, tpl.voxel, max_scale=0.05)

    def warp(a, order=1):
        return ndimage.affine_transform(a, m, off, order=order, mode="nearest", prefilter=False)

    gm, wm, csf = warp(tpl.gm), warp(tpl.wm), warp(tpl.csf)
    dist_out, region = warp(tpl.dist_out), warp(tpl.region, 0)
    brain = gm + wm + csf

    cap = int(min(2000, 0.01 * np.count_nonzero(brain > 0.5)))
    plan = plan_case(rng, negative=negative, cap=max(cap, 8))
    occupied = np.zeros(shape, bool)
    old = _place_lesions(rng, plan.old_volumes, region, wm, occupied, must_place=False)
    new = _place_lesions(rng, plan.new_volumes, region, wm, occupied,
                         must_place=not plan.negative)  # fmt: skip
    mu_old = rng.uniform(0.95, 1.3, len(old))
    mu_new = rng.uniform(0.95, 1.3, len(new))

    images = []
    for t in range(2):
        mu = np.array([0.72, 0.55, 0.10, 0.04, 0.62]) * rng.normal(1, 0.05, 5)
        # FLAIR: GM > WM, dark CSF; outside the brain a CSF rim, dark skull, bright scalp fat.
        shell = np.select(
            [dist_out <= 0, dist_out <= 2.5, dist_out <= 7, dist_out <= 12],
            [0.0, mu[2], mu[3], mu[4]], 0.0,
        )  # fmt: skip
        img = (mu[0] * gm + mu[1] * wm + mu[2] * csf + (1 - np.clip(brain, 0, 1)) * shell)
        img = img.astype(np.float32)
        if t == 0:
            _composite(img, old, mu_old)
        else:  # old lesions persist with slightly changed signal; new ones appear
            _composite(img, old, mu_old * rng.uniform(0.9, 1.1, len(old)))
            _composite(img, new, mu_new)
        images.append(img)
    # Baseline slightly misregistered (<= 1 deg, <= 0.7 mm); the mask is on the follow-up grid.
    m_b, off_b = _rigid(shape, rng, 1.0, 0.7, tpl.voxel)
    images[0] = ndimage.affine_transform(images[0], m_b, off_b, order=1, mode="nearest")
    for t in range(2):
        img = _rician(rng, images[t] * _bias(rng, shape), rng.uniform(0.02, 0.04))
        images[t] = (img * 1000 * rng.uniform(0.8, 1.2)).astype(np.float32)

    mask = np.zeros(shape, np.uint8)
    for box, inside in new:
        mask[box] |= inside.astype(np.uint8)

    # Store in a random (or given) orientation with a matching affine.
    codes = axcodes or _AXCODES[int(rng.integers(len(_AXCODES)))]
    ornt = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(codes)))
    affine = tpl.affine @ inv_ornt_aff(ornt, shape)
    case_dir = Path(out_dir) / case_id
    case_dir.mkdir(parents=True, exist_ok=True)
    for name, img in ((BASELINE_NAME, images[0]), (FOLLOWUP_NAME, images[1])):
        nii = nib.Nifti1Image(apply_orientation(img, ornt), affine)
        nii.set_qform(affine, code=1)
        nii.set_sform(affine, code=1)
        nib.save(nii, case_dir / name)
    save_mask(apply_orientation(mask, ornt), affine, case_dir / MASK_NAME)
    return CaseInfo(
        id=case_id, seed=[], negative=plan.negative, n_old=len(old), n_new=len(new),
        n_new_planned=len(plan.new_volumes),
        old_volumes=[int(i.sum()) for _, i in old], new_volumes=[int(i.sum()) for _, i in new],
        axcodes=codes, shape=list(apply_orientation(mask, ornt).shape), spacing=tpl.voxel,
        misregistration={"matrix": m_b.tolist(), "offset_vox": off_b.tolist()},
    )  # fmt: skip


def case_rng(seed: int, index: int) -> np.random.Generator:
    """Independent stream of case ``index`` (unchanged when more cases are generated)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def generate_dataset(
    out_dir: str | Path,
    n_cases: int,
    seed: int,
    size: str = "small",
    *,
    anatomy: str = "mni",
    n_negative: int | None = None,
    prefix: str = "syn",
) -> list[Path]:
    """Write ``n_cases`` cases ``<prefix>000 ...`` plus ``manifest.json``; returns case dirs.

    ``n_negative``: exact number of cases without new lesions (chosen by seed); None draws
    each case's status with probability 11/40.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, not {size!r}")
    if anatomy not in ("mni", "procedural"):
        raise ValueError(f"anatomy must be 'mni' or 'procedural', not {anatomy!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    negatives: set[int] | None = None
    if n_negative is not None:
        if not 0 <= n_negative <= n_cases:
            raise ValueError(f"n_negative must be in [0, {n_cases}]")
        perm = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2**32 - 1,)))
        negatives = {int(i) for i in perm.permutation(n_cases)[:n_negative]}
    infos, dirs = [], []
    for i in range(n_cases):
        neg = None if negatives is None else i in negatives
        info = generate_case(out, f"{prefix}{i:03d}", case_rng(seed, i), size=size,
                             anatomy=anatomy, negative=neg)  # fmt: skip
        info.seed = [seed, i]
        infos.append(asdict(info))
        dirs.append(out / info.id)
    manifest = {"generator": "hytver_dist.synth", "seed": seed, "size": size,
                "anatomy": anatomy, "cases": infos}  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return dirs


def lesion_depth_labels(mask: np.ndarray, n_labels: int) -> np.ndarray:
    """A label map from a binary lesion mask: 1 on a lesion, raised by one for every erosion
    the voxel survives, up to ``n_labels`` (nested rims and cores, like tumour sub-regions)."""
    out = np.zeros(mask.shape, np.uint8)
    inside = mask.astype(bool)
    for value in range(1, n_labels + 1):
        out[inside] = value
        inside = ndimage.binary_erosion(inside)
        if not inside.any():
            break
    return out


def generate_nnunet_dataset(out_dir: str | Path, n_cases: int, seed: int, size: str = "small",
                            *, classes: int = 3, regions: bool = False,
                            n_negative: int | None = None, anatomy: str = "mni") -> Path:
    """Write a synthetic dataset in the nnU-Net v2 raw layout: two FLAIR channels per case
    and a label map whose lesions hold nested labels (:func:`lesion_depth_labels`). With
    ``regions`` the labels are 1-3 and ``dataset.json`` declares BraTS-like regions (whole
    lesion [1, 2, 3], core [2, 3], centre 3); otherwise ``classes`` classes incl. background."""
    import tempfile

    if regions:
        n_labels = 3
        labels: dict[str, Any] = {"background": 0, "whole": [1, 2, 3], "core": [2, 3],
                                  "centre": 3}
    else:
        if classes < 2:
            raise ValueError(f"classes must be >= 2 (background and one class), not {classes}")
        n_labels = classes - 1
        labels = {"background": 0, **{f"class{v}": v for v in range(1, classes)}}
    out = Path(out_dir)
    for sub in ("imagesTr", "labelsTr"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        for case_dir in generate_dataset(tmp, n_cases, seed, size, anatomy=anatomy,
                                         n_negative=n_negative, prefix="case"):
            for channel, name in enumerate((BASELINE_NAME, FOLLOWUP_NAME)):
                (case_dir / name).rename(out / "imagesTr" / f"{case_dir.name}_{channel:04d}.nii.gz")
            mask_img = nib.load(case_dir / MASK_NAME)
            label = lesion_depth_labels(np.asarray(mask_img.dataobj) > 0, n_labels)
            nii = nib.Nifti1Image(label, mask_img.affine)
            nii.set_data_dtype(np.uint8)
            nib.save(nii, out / "labelsTr" / f"{case_dir.name}.nii.gz")
    meta: dict[str, Any] = {"name": "synthetic lesions", "channel_names": {"0": "FLAIR_t1",
                            "1": "FLAIR_t2"}, "labels": labels, "numTraining": n_cases,
                            "file_ending": ".nii.gz"}
    if regions:
        meta["regions_class_order"] = [1, 2, 3]
    (out / "dataset.json").write_text(json.dumps(meta, indent=1))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m hytver_dist.synth", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", required=True, type=Path, help="output root (created)")
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--anatomy", choices=("mni", "procedural"), default="mni")
    p.add_argument("--negatives", type=int, default=None,
                   help="exact number of cases without new lesions (default: random, p=11/40)")
    p.add_argument("--format", choices=("msseg2", "nnunet"), default="msseg2",
                   help="folder layout: MSSEG-2 case folders, or the nnU-Net v2 raw layout")
    p.add_argument("--classes", type=int, default=3,
                   help="nnunet: classes including background (default 3)")
    p.add_argument("--regions", action="store_true",
                   help="nnunet: label values 1-3 declared as three nested regions")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    if a.format == "nnunet":
        generate_nnunet_dataset(a.out, a.cases, a.seed, a.size, classes=a.classes,
                                regions=a.regions, n_negative=a.negatives, anatomy=a.anatomy)
    else:
        generate_dataset(a.out, a.cases, a.seed, a.size, anatomy=a.anatomy,
                         n_negative=a.negatives)
    print(f"wrote {a.cases} cases ({a.format} layout) to {a.out} in "
          f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
