"""The fused backend of the loss library against its reference backend.

Needs the compiled extension (``pip install --no-build-isolation -e .``). Where it should have
been built (``HYTVER_REQUIRE_EXT=1``, as scripts/test.sh sets), these tests fail instead of
skipping when it is missing.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from loss_helpers import needs_ext

from hytver_dist import ops
from hytver_dist.losses import LOSSES, get_loss

pytestmark = needs_ext

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
@pytest.mark.parametrize("batch,channels,spatial",
                         [(1, 1, (7, 9, 11)), (3, 1, (5, 13, 17)), (2, 1, (33, 31)),
                          (2, 3, (6, 7, 5)), (1, 4, (9, 8))])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_fused_equals_reference_float64(name, batch, channels, spatial, device):
    x, y = inputs((batch, channels, *spatial), torch.float64, device=device)
    for kwargs in ([{}, {"per_sample": True}] if name in SCOPED else [{}]):
        (vf, gf), (vr, gr) = both(name, x, y, **kwargs)
        torch.testing.assert_close(vf, vr, rtol=1e-10, atol=0)
        torch.testing.assert_close(gf, gr, rtol=1e-10, atol=1e-10 * float(gr.abs().max()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("target_dtype", [torch.float32, torch.uint8, torch.bool])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_fused_equals_reference_float32(name, target_dtype, device, channels):
    x, y = inputs((3, channels, 19, 21, 23), torch.float32, device=device)
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


def test_auto_picks_fused_and_fused_errors_without_extension(monkeypatch):
    from hytver_dist.losses import _base

    x, y = inputs((1, 1, 4, 4, 4), torch.float32)
    calls = []
    real = ops.loss
    monkeypatch.setattr(ops, "loss", lambda *a: calls.append(a) or real(*a))
    get_loss("dice")(x, y)
    assert len(calls) == 1  # auto went through the fused op
    monkeypatch.setattr(_base, "FUSED_DEVICE_TYPES", frozenset())
    get_loss("dice")(x, y)  # auto falls back silently
    assert len(calls) == 1
    with pytest.raises(RuntimeError, match="backend='fused'"):
        get_loss("dice", backend="fused")(x, y)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_one_fused_call_per_loss(name, monkeypatch):
    """Every loss is one call of the fused op (hard labels), with its registry name as kind and
    its hyperparameters in the op's order."""
    x, y = inputs((2, 2, 5, 6, 7), torch.float32)
    calls = []
    real = torch.ops.hytver.loss
    monkeypatch.setattr(torch.ops.hytver, "loss",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    loss = get_loss(name)
    with torch.no_grad():  # the plain op (no saving autograd node)
        loss(x, y)
    assert len(calls) == 1
    assert calls[0][2] == name and len(calls[0][3]) == len(LOSSES[name].fused_param_names)


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


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("channels", [1, 3])
def test_fullgraph_compile_traces_the_fused_op(name, channels):
    """torch.compile(fullgraph=True) traces the fused op (one graph, no break), forward and
    backward, and gives the eager fused values."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()  # every loss compiles SegmentationLoss.forward: no recompile limit here
    x, y = inputs((2, channels, 6, 7, 8), torch.float32)
    y = y.to(torch.uint8)
    loss = get_loss(name, backend="fused")
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(loss, fullgraph=True, backend=counter)
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    vc, ve = compiled(xc, y), loss(xe, y)
    vc.backward()
    ve.backward()
    assert counter.frame_count == 1
    graph = "\n".join(str(g.graph) for g in counter.graphs)
    assert "hytver.loss" in graph
    torch.testing.assert_close(vc, ve, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_monai_metatensor_inputs(name, backend):
    """MONAI's MetaTensor (a tensor subclass) works as logits and target, without a warning
    (the tests run with warnings as errors here), and gives the plain tensors' values."""
    from monai.data import MetaTensor

    x, y = inputs((2, 2, 5, 6, 7), torch.float32)
    xm = MetaTensor(x.clone()).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = get_loss(name, backend=backend)(xm, MetaTensor(y))
        value.backward()
    xp = x.clone().requires_grad_()
    want = get_loss(name, backend=backend)(xp, y)
    want.backward()
    torch.testing.assert_close(value.as_subclass(torch.Tensor), want)
    torch.testing.assert_close(xm.grad.as_subclass(torch.Tensor), xp.grad)


@pytest.mark.parametrize("name", ["hytver", "dice_pp"])
def test_integer_targets_are_hard_labels_and_checked(name):
    """int64 masks take the fused path as hard labels; values that would wrap in uint8 (256)
    are refused, not read as 0."""
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 6, 6, 6, dtype=torch.float64)
    mask = torch.rand(2, 1, 6, 6, 6) > 0.7
    loss = get_loss(name, backend="fused")
    expected = loss(logits, mask.to(torch.uint8))
    torch.testing.assert_close(loss(logits, mask.long()), expected, rtol=0, atol=0)
    bad = mask.long()
    bad[0, 0, 0, 0, 0] = 256
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        loss(logits, bad)
