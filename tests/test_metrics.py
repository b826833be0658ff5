"""Metrics: agreement with medpy and MONAI (oracles), empty-mask policies, MSSEG-2 lesion F1."""

from __future__ import annotations

import math
import warnings

import medpy.metric.binary as medpy_binary
import monai.metrics as mm
import numpy as np
import pytest
import torch

from hytver_dist import metrics as M

SPACING = (0.5, 0.75, 1.2)  # anisotropic, in array-axis order
SHAPE = (32, 32, 32)


def _ellipsoid(center: tuple[float, ...], radii: tuple[float, ...]) -> np.ndarray:
    z = np.indices(SHAPE, dtype=float)
    return sum(((z[i] - center[i]) / radii[i]) ** 2 for i in range(3)) <= 1.0


@pytest.fixture(scope="module")
def case() -> tuple[np.ndarray, np.ndarray]:
    """GT: 3 lesions (one tiny, one touching the array border); prediction: GT shifted by one
    voxel with boundary noise, the tiny lesion missed, one false-positive blob."""
    gt = (_ellipsoid((10, 12, 14), (5, 4, 3)) | _ellipsoid((22, 20, 10), (3, 5, 4))
          | _ellipsoid((26, 8, 26), (1.2, 1.2, 1.2)))
    gt[12:16, 28:, 4:8] = True  # touches the last index of axis 1
    rng = np.random.default_rng(0)
    pred = np.roll(gt, (1, 0, 1), axis=(0, 1, 2))
    boundary = pred != np.roll(pred, 1, axis=0)
    pred ^= boundary & (rng.random(SHAPE) < 0.3)
    pred[24:29, 6:11, 24:29] = False
    pred |= _ellipsoid((6, 26, 26), (2, 2, 2))
    return pred, gt


# ---- overlap ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ours, theirs",
    [("dice", "dc"), ("jaccard", "jc"), ("precision", "precision"), ("recall", "recall")],
)
def test_overlap_matches_medpy(case, ours: str, theirs: str) -> None:
    pred, gt = case
    assert getattr(M, ours)(pred, gt) == pytest.approx(getattr(medpy_binary, theirs)(pred, gt),
                                                       rel=1e-12)


def test_overlap_accepts_0_1_numeric(case) -> None:
    pred, gt = case
    assert M.dice(pred.astype(np.float32), gt.astype(np.uint8)) == M.dice(pred, gt)


# ---- surface distances: medpy (same conventions -> exact) -----------------------------------


@pytest.mark.parametrize("name", ["hd", "hd95", "asd", "assd"])
@pytest.mark.parametrize("connectivity", [1, 3])
def test_surface_matches_medpy_mm(case, name: str, connectivity: int) -> None:
    pred, gt = case
    ours = getattr(M, name)(pred, gt, SPACING, connectivity=connectivity)
    theirs = getattr(medpy_binary, name)(pred, gt, voxelspacing=SPACING, connectivity=connectivity)
    assert ours == pytest.approx(theirs, rel=1e-12)


def test_voxel_variants_match_medpy_without_spacing(case) -> None:
    # The paper's Table I: medpy hd95/asd with voxelspacing=None (voxel units).
    pred, gt = case
    r = M.evaluate_case(pred, gt, SPACING)
    for name in ("hd", "hd95", "asd", "assd"):
        assert r[f"{name}_vox"] == pytest.approx(getattr(medpy_binary, name)(pred, gt), rel=1e-12)
        assert r[name] == pytest.approx(getattr(M, name)(pred, gt, SPACING), rel=1e-12)
    assert r["hd95"] != pytest.approx(r["hd95_vox"])  # units matter


def test_asd_is_directed(case) -> None:
    pred, gt = case
    forward, backward = M.asd(pred, gt, SPACING), M.asd(gt, pred, SPACING)
    assert forward != pytest.approx(backward)  # the FP blob inflates pred -> gt
    assert backward == pytest.approx(medpy_binary.asd(gt, pred, voxelspacing=SPACING), rel=1e-12)
    d = M.surface_distances(pred, gt, SPACING)
    assert M.assd(pred, gt, SPACING) == pytest.approx(np.concatenate(d).mean())  # pooled
    assert M.assd(pred, gt, SPACING) != pytest.approx((forward + backward) / 2)


# ---- surface distances: MONAI (exact KD-tree, float32; its own conventions) ----------------


@pytest.fixture(scope="module")
def monai_metrics():
    def to_t(a: np.ndarray):
        return torch.from_numpy(a)[None, None].float()  # (B=1, C=1, ...), foreground channel

    def run(fn: str, pred: np.ndarray, gt: np.ndarray, **kw) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(getattr(mm, fn)(to_t(pred), to_t(gt), include_background=True,
                                         spacing=list(SPACING), **kw).item())

    return run


def test_monai_agreement_where_conventions_match(case, monai_metrics) -> None:
    pred, gt = case
    rel = 1e-6  # MONAI computes in float32
    assert M.hd(pred, gt, SPACING) == pytest.approx(
        monai_metrics("compute_hausdorff_distance", pred, gt), rel=rel)
    assert M.asd(pred, gt, SPACING) == pytest.approx(
        monai_metrics("compute_average_surface_distance", pred, gt, symmetric=False), rel=rel)
    assert M.assd(pred, gt, SPACING) == pytest.approx(
        monai_metrics("compute_average_surface_distance", pred, gt, symmetric=True), rel=rel)
    # MONAI's percentile HD = max of the two DIRECTED 95th percentiles = our pooled=False.
    assert M.hd95(pred, gt, SPACING, pooled=False) == pytest.approx(
        monai_metrics("compute_hausdorff_distance", pred, gt, percentile=95), rel=rel)


def test_monai_hd95_differs_from_pooled_medpy_convention(case, monai_metrics) -> None:
    # Documented difference: our (medpy's, the paper's) hd95 pools both directions before the
    # percentile; MONAI takes the max of the directed percentiles, here dominated by the FP blob.
    pred, gt = case
    pooled = M.hd95(pred, gt, SPACING)
    monai = monai_metrics("compute_hausdorff_distance", pred, gt, percentile=95)
    assert pooled < monai
    assert pooled == pytest.approx(medpy_binary.hd95(pred, gt, voxelspacing=SPACING), rel=1e-12)


# ---- empty-mask policies --------------------------------------------------------------------

EMPTY = np.zeros(SHAPE, dtype=bool)
ONE = np.zeros(SHAPE, dtype=bool)
ONE[3:6, 3:6, 3:6] = True
DIAGONAL = math.sqrt(sum((n * s) ** 2 for n, s in zip(SHAPE, SPACING, strict=True)))
NAN = float("nan")


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize(
    "pred, gt, expected",
    [
        pytest.param(EMPTY, ONE, {"dice": 0.0, "jaccard": 0.0, "precision": NAN, "recall": 0.0},
                     id="pred-empty"),
        pytest.param(ONE, EMPTY, {"dice": 0.0, "jaccard": 0.0, "precision": 0.0, "recall": NAN},
                     id="gt-empty"),
        pytest.param(EMPTY, EMPTY, {"dice": NAN, "jaccard": NAN, "precision": NAN, "recall": NAN},
                     id="both-empty"),
    ],
)
def test_overlap_empty_policy(pred, gt, expected: dict[str, float]) -> None:
    for name, value in expected.items():
        assert _same(getattr(M, name)(pred, gt), value), name


@pytest.mark.parametrize(
    "pred, gt, diagonal_value",
    [
        pytest.param(EMPTY, ONE, DIAGONAL, id="pred-empty"),
        pytest.param(ONE, EMPTY, DIAGONAL, id="gt-empty"),
        pytest.param(EMPTY, EMPTY, 0.0, id="both-empty"),
    ],
)
@pytest.mark.parametrize("name", ["hd", "hd95", "asd", "assd"])
def test_surface_empty_policy(pred, gt, diagonal_value: float, name: str) -> None:
    fn = getattr(M, name)
    assert math.isnan(fn(pred, gt, SPACING))  # default "nan": undefined, never a fake 0
    assert fn(pred, gt, SPACING, empty="diagonal") == pytest.approx(diagonal_value)
    with pytest.raises(ValueError, match="undefined"):
        fn(pred, gt, SPACING, empty="raise")
    d = M.surface_distances(pred, gt, SPACING)
    assert d.pred_to_gt.size == 0 and d.gt_to_pred.size == 0


def test_single_voxel_masks() -> None:
    a, b = EMPTY.copy(), EMPTY.copy()
    a[5, 5, 5] = b[5, 5, 8] = True
    assert M.hd(a, b, SPACING) == pytest.approx(3 * SPACING[2])
    assert M.hd95(a, a, SPACING) == 0.0 and M.asd(a, a, SPACING) == 0.0


# ---- input validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: M.dice(ONE, ONE[:-1]), r"pred and gt shapes differ"),
        (lambda: M.dice(ONE[0], ONE[0]), r"pred must be a 3-D mask"),
        (lambda: M.recall(ONE, ONE[None]), r"gt must be a 3-D mask"),
        (lambda: M.dice(ONE * 0.7, ONE), r"pred must be binary"),
        (lambda: M.hd(ONE, ONE, (1.0, 1.0)), r"spacing must have 3 values"),
        (lambda: M.hd(ONE, ONE, (1.0, 0.0, 1.0)), r"spacing values must be finite and > 0"),
        (lambda: M.asd(ONE, ONE, (1.0, -1.0, 1.0)), r"spacing"),
        (lambda: M.assd(ONE, ONE, 1.0), r"spacing must be a sequence"),
        (lambda: M.hd95(ONE, ONE, SPACING, empty="zero"), r"empty must be one of"),
        (lambda: M.lesion_f1(ONE, ONE[:, :-1], SPACING), r"shapes differ"),
        (lambda: M.lesion_f1(ONE, ONE, SPACING, connectivity=8), r"connectivity"),
        (lambda: M.evaluate_case(ONE, ONE, (1, 1, float("nan"))), r"spacing"),
    ],
)
def test_validation_errors(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


# ---- lesion-wise detection (MSSEG-2 / Anima) ------------------------------------------------

ISO = (1.0, 1.0, 1.0)  # minimum lesion size 4 voxels (> 3 mm^3)


def _vol(*boxes: tuple[slice, slice, slice]) -> np.ndarray:
    m = np.zeros(SHAPE, dtype=bool)
    for b in boxes:
        m[b] = True
    return m


A = np.s_[2:5, 2:5, 2:5]
B = np.s_[20:23, 20:23, 20:23]
C = np.s_[2:5, 20:23, 10:13]


def test_min_lesion_size_rule() -> None:
    assert M.min_lesion_size_voxels((0.5, 0.75, 0.75)) == 11  # = CoactSeg's hard-coded 11
    assert M.min_lesion_size_voxels(ISO) == 4
    assert M.min_lesion_size_voxels((1.0, 1.0, 3.0)) == 2


def test_lesion_detected() -> None:
    r = M.lesion_f1(_vol(A), _vol(A), ISO)
    assert r == M.LesionF1(f1=1.0, sensitivity=1.0, ppv=1.0, n_gt=1, n_pred=1, tp_gt=1, tp_pred=1)


def test_lesion_missed_and_false_positive() -> None:
    missed = M.lesion_f1(_vol(A), _vol(A, B), ISO)
    assert (missed.sensitivity, missed.ppv, missed.n_gt, missed.tp_gt) == (0.5, 1.0, 2, 1)
    assert missed.f1 == pytest.approx(2 / 3)
    fp = M.lesion_f1(_vol(A, C), _vol(A), ISO)
    assert (fp.sensitivity, fp.ppv, fp.n_pred, fp.tp_pred) == (1.0, 0.5, 2, 1)


def test_lesion_at_or_below_3_mm3_ignored() -> None:
    small = np.s_[20:21, 20:21, 20:23]  # 3 voxels = 3 mm^3: not > 3, dropped in both masks
    r = M.lesion_f1(_vol(A), _vol(A, small), ISO)
    assert (r.n_gt, r.f1) == (1, 1.0)
    r = M.lesion_f1(_vol(A, small), _vol(A), ISO)
    assert (r.n_pred, r.f1) == (1, 1.0)
    four = np.s_[20:21, 20:21, 20:24]  # 4 mm^3: kept, and missed
    assert M.lesion_f1(_vol(A), _vol(A, four), ISO).n_gt == 2
    # Anisotropic grid: 0.28125 mm^3 voxels -> 10 voxels (2.8 mm^3) dropped, 11 kept.
    grid = (0.5, 0.75, 0.75)
    assert M.lesion_f1(_vol(A), _vol(A, np.s_[20:21, 20:21, 0:10]), grid).n_gt == 1
    assert M.lesion_f1(_vol(A), _vol(A, np.s_[20:21, 20:21, 0:11]), grid).n_gt == 2


def test_split_lesion_detected() -> None:
    gt = _vol(np.s_[2:6, 2:6, 2:10])  # one lesion, 128 voxels
    pred = _vol(np.s_[2:6, 2:6, 2:5], np.s_[2:6, 2:6, 6:10])  # two pieces, one slice gap
    r = M.lesion_f1(pred, gt, ISO)
    assert (r.n_gt, r.n_pred, r.tp_gt, r.tp_pred, r.f1) == (1, 2, 1, 2, 1.0)


def test_merged_lesions_detected() -> None:
    gt = _vol(np.s_[2:6, 2:6, 2:6], np.s_[2:6, 2:6, 8:12])  # two lesions
    pred = _vol(np.s_[2:6, 2:6, 2:12])  # one blob bridging them (bridge = 32 of 160 voxels)
    r = M.lesion_f1(pred, gt, ISO)
    assert (r.n_gt, r.n_pred, r.tp_gt, r.tp_pred, r.f1) == (2, 1, 2, 1, 1.0)


def test_lesion_swallowed_by_mostly_outside_blob_not_detected() -> None:
    gt = _vol(np.s_[10:13, 10:13, 10:13])  # 27 voxels
    # Blob covers 9 GT voxels (share 1/3 > alpha) but is 91% outside any lesion (> beta 0.7).
    pred = _vol(np.s_[12:13, 10:13, 10:13], np.s_[13:23, 10:13, 10:13])
    r = M.lesion_f1(pred, gt, ISO)
    assert (r.tp_gt, r.sensitivity) == (0, 0.0)
    # The blob itself: 9/99 inside, not > alpha -> a false positive.
    assert (r.tp_pred, r.ppv, r.f1) == (0, 0.0, 0.0)


def test_alpha_minimum_overlap() -> None:
    gt = _vol(np.s_[2:10, 2:10, 2:4])  # 128 voxels
    pred = _vol(np.s_[2:3, 2:6, 2:4])  # 8 voxels inside: 6% of the lesion, not > alpha 0.1
    r = M.lesion_f1(pred, gt, ISO)
    assert r.tp_gt == 0
    # The prediction lies inside the lesion, but the lesion is 94% uncovered (> beta): no TP.
    assert r.tp_pred == 0 and r.f1 == 0.0


def test_anima_walk_stops_after_table_rows() -> None:
    # One GT lesion (4x4x19) split into 4 predicted pieces with overlaps 80, 64, 48, 32. Anima
    # walks at most n_rows = 2 pieces (share 0.64 < gamma), so the third piece, 71% outside
    # the lesion (> beta), is never checked: the lesion counts as detected.
    gt = _vol(np.s_[4:8, 4:8, 4:23])
    pred = _vol(np.s_[4:8, 4:8, 4:9], np.s_[4:8, 4:8, 10:14], np.s_[4:18, 4:8, 15:18],
                np.s_[4:8, 4:8, 21:23])
    r = M.lesion_f1(pred, gt, ISO)
    assert (r.n_gt, r.n_pred, r.tp_gt, r.tp_pred) == (1, 4, 1, 4)


def test_connectivity_6_vs_26() -> None:
    # Two 3^3 cubes touching at one corner: two lesions with 6-connectivity, one with 26.
    gt = _vol(np.s_[2:5, 2:5, 2:5], np.s_[5:8, 5:8, 5:8])
    assert M.label_lesions(gt, 6)[1] == 2
    assert M.label_lesions(gt, 26)[1] == 1
    pred = _vol(np.s_[2:5, 2:5, 2:5])
    six = M.lesion_f1(pred, gt, ISO)
    assert (six.n_gt, six.tp_gt, six.sensitivity) == (2, 1, 0.5)
    tsix = M.lesion_f1(pred, gt, ISO, connectivity=26)
    assert (tsix.n_gt, tsix.tp_gt, tsix.sensitivity, tsix.f1) == (1, 1, 1.0, 1.0)


@pytest.mark.parametrize(
    "pred, gt, expected",
    [
        pytest.param(EMPTY, EMPTY, (NAN, NAN, NAN, 0, 0), id="both-empty"),
        pytest.param(ONE, EMPTY, (NAN, NAN, 0.0, 0, 1), id="gt-empty"),
        pytest.param(EMPTY, ONE, (0.0, 0.0, NAN, 1, 0), id="pred-empty"),
    ],
)
def test_lesion_f1_empty_policy(pred, gt, expected) -> None:
    r = M.lesion_f1(pred, gt, ISO)
    got = (r.f1, r.sensitivity, r.ppv, r.n_gt, r.n_pred)
    assert all(_same(a, b) for a, b in zip(got, expected, strict=True)), got


# ---- evaluate_case --------------------------------------------------------------------------


def test_evaluate_case_keys_and_values(case) -> None:
    pred, gt = case
    r = M.evaluate_case(pred, gt, SPACING)
    assert tuple(r) == M.CASE_METRICS
    assert all(isinstance(v, float) for v in r.values())
    voxel = SPACING[0] * SPACING[1] * SPACING[2]
    assert r["gt_volume_mm3"] == pytest.approx(gt.sum() * voxel)
    assert r["pred_volume_mm3"] == pytest.approx(pred.sum() * voxel)
    assert r["gt_empty"] == 0.0 and math.isnan(r["fp_lesions"]) and math.isnan(r["fp_volume_mm3"])
    les = M.lesion_f1(pred, gt, SPACING)
    assert (r["lesion_f1"], r["n_gt_lesions"], r["n_pred_lesions"]) == (les.f1, les.n_gt,
                                                                        les.n_pred)
    # CoactSeg's 11-voxel minimum is a volume (3.09 mm^3 on its 0.5 x 0.75 x 0.75 grid).
    from hytver_dist.metrics.case import coactseg_min_size_voxels

    assert coactseg_min_size_voxels((0.5, 0.75, 0.75)) == 11
    assert coactseg_min_size_voxels((1.0, 1.0, 1.0)) == 4
    les26 = M.lesion_f1(pred, gt, SPACING, connectivity=26,
                        min_size_voxels=coactseg_min_size_voxels(SPACING))
    assert r["lesion_f1_26conn"] == les26.f1
    assert r["dice"] == M.dice(pred, gt) and r["asd"] == M.asd(pred, gt, SPACING)


def test_evaluate_case_empty_gt_reports_false_positives() -> None:
    tiny = np.s_[20:21, 20:21, 20:22]  # 2 voxels * 0.45 mm^3 = 0.9 mm^3: below 3 mm^3
    pred = _vol(A, C, tiny)
    r = M.evaluate_case(pred, EMPTY, SPACING)
    voxel = SPACING[0] * SPACING[1] * SPACING[2]
    assert r["gt_empty"] == 1.0
    assert r["fp_lesions"] == 2.0
    assert r["fp_volume_mm3"] == pytest.approx(54 * voxel)  # the two kept lesions
    assert r["pred_volume_mm3"] == pytest.approx(56 * voxel)  # every predicted voxel
    for name in ("recall", "hd", "hd95_vox", "asd", "lesion_f1", "lesion_sensitivity"):
        assert math.isnan(r[name]), name
    assert r["dice"] == r["precision"] == r["lesion_ppv"] == 0.0

    clean = M.evaluate_case(EMPTY, EMPTY, SPACING)
    assert (clean["fp_lesions"], clean["fp_volume_mm3"], clean["pred_volume_mm3"]) == (0, 0, 0)
    assert math.isnan(clean["dice"]) and math.isnan(clean["lesion_f1"])


def test_evaluate_case_pred_empty_scores_zero() -> None:
    r = M.evaluate_case(EMPTY, _vol(A), SPACING)
    assert (r["dice"], r["recall"], r["lesion_f1"], r["lesion_sensitivity"]) == (0.0, 0.0, 0.0, 0.0)
    assert math.isnan(r["hd95"]) and math.isnan(r["precision"])
    diag = M.evaluate_case(EMPTY, _vol(A), SPACING, empty="diagonal")
    assert diag["hd95"] == pytest.approx(DIAGONAL)
    assert diag["hd95_vox"] == pytest.approx(math.sqrt(3 * 32**2))
