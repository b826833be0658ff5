"""The fused backend of the loss library against its reference backend.

Needs the compiled extension (``pip install --no-build-isolation -e .``). Where it should have
been built (``HYTVER_REQUIRE_EXT=1``, as scripts/test.sh sets), these tests fail instead of
skipping when it is missing.
"""

from __future__ import annotations

import os

import pytest
import torch

from hytver_dist import ops
from hytver_dist.losses import LOSSES, ExponentLoss, get_loss

pytestmark = pytest.mark.skipif(
    not ops.is_available() and not os.environ.get("HYTVER_REQUIRE_EXT"),
    reason="C++ extension not built (set HYTVER_REQUIRE_EXT=1 to make this a failure)")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SCOPED = [n for n in LOSSES if "per_sample" in LOSSES[n].hyperparameters()]


def inputs(shape, dtype, soft=False, seed=0, device="cpu", scale=3.0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    y = torch.rand(shape, generator=g, dtype=torch.float64)
    y = y if soft else (y < 0.2).double()
    return x.to(device), y.to(device)


def both(name, x, y, **kwargs):
    out = []
    for backend in ("fused", "reference"):
        xi = x.clone().requires_grad_()
        value = get_loss(name, backend=backend, **kwargs)(xi, y)
        value.backward()
        out.append((value, xi.grad))
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch,spatial", [(1, (7, 9, 11)), (3, (5, 13, 17)), (2, (33, 31))])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_fused_equals_reference_float64(name, batch, spatial, device):
    x, y = inputs((batch, 1, *spatial), torch.float64, device=device)
    for kwargs in ([{}, {"per_sample": True}] if name in SCOPED else [{}]):
        (vf, gf), (vr, gr) = both(name, x, y, **kwargs)
        torch.testing.assert_close(vf, vr, rtol=1e-10, atol=0)
        torch.testing.assert_close(gf, gr, rtol=1e-10, atol=1e-10 * float(gr.abs().max()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("target_dtype", [torch.float32, torch.uint8, torch.bool])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_fused_equals_reference_float32(name, target_dtype, device):
    x, y = inputs((3, 1, 19, 21, 23), torch.float32, device=device)
    y = y.to(target_dtype)
    (vf, gf), (vr, gr) = both(name, x, y)
    assert vf.dtype == torch.float32
    torch.testing.assert_close(vf, vr, rtol=2e-5, atol=1e-7)
    torch.testing.assert_close(gf, gr, rtol=1e-3, atol=2e-4 * float(gr.abs().max()))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_soft_labels(name):
    """Sum losses run fused on soft labels; exponent losses fall back to the reference."""
    x, y = inputs((2, 1, 6, 7, 8), torch.float64, soft=True)
    (vf, gf), (vr, gr) = both(name, x, y)
    torch.testing.assert_close(vf, vr, rtol=1e-10, atol=0)
    torch.testing.assert_close(gf, gr, rtol=1e-10, atol=1e-10 * float(gr.abs().max()))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_extreme_logits_fused_float32(name):
    _, y = inputs((2, 1, 9, 10, 11), torch.float32)
    x = 100.0 * torch.sign(torch.randn(y.shape, generator=torch.Generator().manual_seed(1)))
    (vf, gf), (vr, gr) = both(name, x, y)
    assert torch.isfinite(vf) and torch.isfinite(gf).all()
    torch.testing.assert_close(vf, vr, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gf, gr, rtol=1e-3, atol=1e-3 * float(gr.abs().max()))


@pytest.mark.parametrize("name", ["hytver", "dice_pp", "focal"])
def test_half_logits_fused(name):
    x, y = inputs((2, 1, 16, 16, 16), torch.float32)
    for dtype in (torch.bfloat16, torch.float16):
        xh = x.to(dtype)
        fused = get_loss(name, backend="fused")(xh, y)
        ref = get_loss(name, backend="reference")(xh, y)
        assert fused.dtype == torch.float32
        torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-6)


def test_fullgraph_compile_fused_hytver():
    x, y = inputs((2, 1, 12, 12, 12), torch.float32)
    y = y.to(torch.uint8)
    loss = get_loss("hytver", backend="fused")
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    vc, ve = compiled(xc, y), loss(xe, y)
    vc.backward()
    ve.backward()
    torch.testing.assert_close(vc, ve)
    torch.testing.assert_close(xc.grad, xe.grad)


def test_auto_picks_fused_and_fused_errors_without_extension(monkeypatch):
    from hytver_dist.losses import _sums

    x, y = inputs((1, 1, 4, 4, 4), torch.float32)
    calls = []
    monkeypatch.setattr(ops, "stats", lambda *a: calls.append(a) or ops.reference_stats(*a))
    get_loss("dice")(x, y)
    assert len(calls) == 1  # auto went through the fused op
    monkeypatch.setattr(_sums, "FUSED_DEVICE_TYPES", frozenset())
    get_loss("dice")(x, y)  # auto falls back silently
    assert len(calls) == 1
    with pytest.raises(RuntimeError, match="backend='fused'"):
        get_loss("dice", backend="fused")(x, y)


def test_torch_func_transforms_use_the_reference():
    """torch.func transforms cannot run the fused ops: "auto" gives the reference's gradient
    there, "fused" says why it cannot."""
    x, y = inputs((2, 1, 6, 7, 5), torch.float64)
    for name in ("hytver", "dice_pp"):
        want = torch.func.grad(lambda t, n=name: get_loss(n, backend="reference")(t, y))(x)
        got = torch.func.grad(lambda t, n=name: get_loss(n)(t, y))(x)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        with pytest.raises(RuntimeError, match="torch.func"):
            torch.func.grad(lambda t, n=name: get_loss(n, backend="fused")(t, y))(x)


def test_every_exponent_loss_has_a_fused_path():
    exponent = [n for n, c in LOSSES.items() if issubclass(c, ExponentLoss)]
    assert sorted(exponent) == sorted(["focal", "focal_dice", "symmetric_unified_focal",
                                       "asymmetric_unified_focal", "dice_pp"])
