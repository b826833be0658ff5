"""The float algebra of the fused CPU path (losses/_scalar.py) against the tensor algebra.

Every loss computes its value from the sums twice: as tensor ops (``from_sums`` /
``from_exp_stats``: reference backend, CUDA, torch.compile) and on Python floats (``scalar``: the
fused CPU path, one autograd node). Here both run on the same float64 sums, values and gradients
w.r.t. the sums compared, edge cases included; the end-to-end comparison with the reference
backend is in test_losses_fused.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from hytver_dist.losses import LOSSES, ExponentLoss, get_loss
from hytver_dist.losses._scalar import ScalarLoss, div
from hytver_dist.losses._sums import sums_from_stats

SCOPED = [n for n in LOSSES if "per_sample" in LOSSES[n].hyperparameters()]
VOXELS = 500  # per sample


def random_stats(batch: int, columns: int, seed: int) -> torch.Tensor:
    """Plausible sums: per sample TP + FP + FN <= n, CE-type sums positive, EQ <= FN, EP <= FP
    (gamma >= 1)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(batch, columns, generator=g, dtype=torch.float64)
    s = torch.empty_like(u)
    s[:, 0] = u[:, 0] * 100  # TP
    s[:, 1] = u[:, 1] * 150  # FP
    s[:, 2] = u[:, 2] * 80  # FN
    s[:, 3:5] = u[:, 3:5] * 300  # C1, C0
    if columns == 9:
        s[:, 5] = u[:, 5] * s[:, 2]  # EQ
        s[:, 6] = u[:, 6] * s[:, 1]  # EP
        s[:, 7:9] = u[:, 7:9] * 50  # F1, F0
    return s


def tensor_loss(loss, stats: torch.Tensor, n_voxels: int) -> torch.Tensor:
    if isinstance(loss, ExponentLoss):
        return loss.from_exp_stats(stats, n_voxels)
    return loss.from_sums(sums_from_stats(stats, loss.per_sample, n_voxels))


def both(loss, stats: torch.Tensor):
    n_voxels = VOXELS * stats.shape[0]
    out = []
    for fn in (lambda s: tensor_loss(loss, s, n_voxels),
               lambda s: ScalarLoss.apply(s, loss.scalar, n_voxels)):
        s = stats.clone().requires_grad_(True)
        value = fn(s)
        value.backward()
        out.append((value.detach(), s.grad))
    return out


def configurations(name: str) -> list[dict]:
    return [{}, {"per_sample": True}] if name in SCOPED else [{}]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_scalar_algebra_matches_tensor_algebra(name, batch):
    columns = 9 if issubclass(LOSSES[name], ExponentLoss) else 5
    stats = random_stats(batch, columns, seed=batch)
    for kwargs in configurations(name):
        (vt, gt), (vs, gs) = both(get_loss(name, **kwargs), stats)
        assert vs.dtype == torch.float64 and vs.dim() == 0
        torch.testing.assert_close(vs, vt, rtol=1e-12, atol=0)
        torch.testing.assert_close(gs, gt, rtol=1e-10, atol=1e-13 * float(gt.abs().max()))


def test_scalar_value_keeps_the_sums_dtype():
    stats = random_stats(2, 5, seed=3).float()
    value = ScalarLoss.apply(stats.requires_grad_(True), get_loss("hytver").scalar, 2 * VOXELS)
    assert value.dtype == torch.float32
    value.backward()
    assert stats.grad.dtype == torch.float32 and stats.grad.shape == stats.shape


@pytest.mark.parametrize("name", ["dice", "tversky", "focal_tversky", "hytver", "logcosh_dice"])
def test_zero_denominators_give_nan_not_an_exception(name):
    """smooth=0 on an empty group: 0/0 as tensor arithmetic gives it (NaN), no ZeroDivisionError."""
    stats = torch.zeros(2, 5, dtype=torch.float64)
    for kwargs in configurations(name):
        loss = get_loss(name, smooth=0.0, **kwargs)
        (vt, gt), (vs, gs) = both(loss, stats)
        assert math.isnan(vt.item()) and math.isnan(vs.item())
        assert torch.equal(gt.isnan(), gs.isnan())


def test_nonfinite_sums_propagate():
    stats = random_stats(2, 9, seed=5)
    stats[0, 0] = math.nan
    stats[1, 3] = math.inf
    for name in ("hytver", "dice_pp", "symmetric_unified_focal", "focal_tversky"):
        loss = get_loss(name)
        s = stats if isinstance(loss, ExponentLoss) else stats[:, :5]
        (vt, _), (vs, _) = both(loss, s.contiguous())
        assert not math.isfinite(vs.item()) and not math.isfinite(vt.item()), name


def test_div_follows_ieee():
    assert div(1.0, 0.0) == math.inf
    assert div(-1.0, 0.0) == -math.inf
    assert div(1.0, -0.0) == -math.inf
    assert math.isnan(div(0.0, 0.0))
    assert div(3.0, 2.0) == 1.5
