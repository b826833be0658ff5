"""Tests of the fused loss-sum ops (hytver_dist.ops, torch.ops.hytver.*).

The fused kernels are checked against the pure-PyTorch references in float64, which are checked
against textbook formulas. CUDA tests are marked ``cuda`` and run only where a GPU is visible.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from hytver_dist import ops

requires_ext = pytest.mark.skipif(not ops.is_available(), reason="hytver_dist._C is not built")
cuda = pytest.mark.cuda
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

GAMMAS = (0.0, 0.5, 2.0, 2.5)
EPSS = (0.0, 1e-7)
SHAPES = ((1, 1, 5, 7, 3), (3, 1, 17, 9, 5), (3, 2, 11, 13))  # odd sizes, batch 1 and 3
NO_LOGS = torch.tensor([1.0, 1, 1, 0, 0, 1, 1, 0, 0], dtype=torch.float64)  # exp_stats logs=False


def make_inputs(
    shape, *, scale=3.0, soft=False, tdtype=torch.uint8, device="cpu", seed=0, extremes=True
):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    flat = x.view(-1)
    if extremes and flat.numel() >= 8:
        flat[:6] = torch.tensor([0.0, 100.0, -100.0, 20.0, -20.0, 1e-8], dtype=torch.float64)
    if soft:
        y = torch.rand(shape, generator=g, dtype=torch.float64)
    else:
        y = (torch.rand(shape, generator=g) < 0.3).to(torch.float64)
    return x.to(device), y.to(tdtype).to(device)


def weights(out: torch.Tensor, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(out.shape, generator=g, dtype=torch.float64).to(out.dtype).to(out.device)


def value_and_grad(fn, x, y, *args):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, y, *args)
    (out * weights(out)).sum().backward()
    return out.detach(), x.grad


def assert_sums_close(got, ref, rel):
    """|got - ref| <= rel * max(|ref|, 1) elementwise (sums are O(n) positive numbers)."""
    got = got.double().cpu()
    ref = ref.double().cpu()
    bound = rel * ref.abs().clamp_min(1.0)
    err = (got - ref).abs()
    assert torch.all(err <= bound), f"max err {err.max().item():.3e}, rel {rel}\n{got}\n{ref}"


def assert_grad_close(got, ref, rel, floor=1e-6):
    """Elementwise relative error rel, plus floor * max|ref| for terms that cancel."""
    got = got.double().cpu()
    ref = ref.double().cpu()
    bound = rel * ref.abs() + floor * ref.abs().max()
    err = (got - ref).abs()
    assert torch.all(err <= bound), f"max err {err.max().item():.3e} (max |ref| {ref.abs().max()})"


# ------------------------------------------------------------------------------------------
# extension presence, references


def test_extension_is_built():
    assert ops.is_available(), (
        "hytver_dist._C is not built: pip install --no-build-isolation --no-deps -e . "
        f"(import error: {ops.extension_error()!r})"
    )


def textbook_exp_stats(x, y, gamma, eps):
    """Direct float64 formulas: p = 1/(1+exp(-x)), clamp, q = 1 - p, log, pow."""
    b = x.shape[0]
    x = x.reshape(b, -1).double()
    y = y.reshape(b, -1).double()
    p = 1.0 / (1.0 + torch.exp(-x))
    if eps > 0:
        p = p.clamp(eps, 1 - eps)
    q = 1.0 - p
    lp, lq = torch.log(p), torch.log(q)
    ny = 1 - y
    terms = [
        y * p,
        ny * p,
        y * q,
        -y * lp,
        -ny * lq,
        y * q**gamma,
        ny * p**gamma,
        y * q**gamma * -lp,
        ny * p**gamma * -lq,
    ]
    return torch.stack([t.sum(1) for t in terms], 1)


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("eps", EPSS)
def test_reference_matches_textbook(gamma, eps):
    x, y = make_inputs((3, 1, 7, 9), scale=2.0, tdtype=torch.float64, extremes=False)
    ref = ops.reference_exp_stats(x, y, gamma, eps)
    torch.testing.assert_close(ref, textbook_exp_stats(x, y, gamma, eps), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ops.reference_stats(x, y), ref[:, :5], rtol=1e-12, atol=1e-12)
    xs, ys = make_inputs(
        (3, 1, 7, 9), scale=2.0, soft=True, tdtype=torch.float64, seed=3, extremes=False
    )
    torch.testing.assert_close(
        ops.reference_stats(xs, ys), textbook_exp_stats(xs, ys, 0, 0)[:, :5], rtol=1e-10, atol=1e-12
    )


def test_reference_gradient_through_clamp_is_zero_outside():
    x = torch.tensor([[40.0, -40.0, 0.5]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64)
    ops.reference_exp_stats(x, y, 2.0, 1e-7).sum().backward()
    assert x.grad[0, 0] == 0 and x.grad[0, 1] == 0 and x.grad[0, 2] != 0


# ------------------------------------------------------------------------------------------
# fused vs reference on the CPU


@requires_ext
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tdtype", [torch.float64, torch.float32, torch.uint8, torch.bool])
def test_stats_float64(shape, tdtype):
    x, y = make_inputs(shape, tdtype=tdtype)
    out, gx = value_and_grad(ops.stats, x, y)
    ref, gref = value_and_grad(ops.reference_stats, x, y)
    assert out.dtype == torch.float64 and out.shape == (shape[0], 5)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gx, gref, rtol=1e-10, atol=1e-12)


@requires_ext
@pytest.mark.parametrize("shape", SHAPES[:2])
def test_stats_soft_labels_float64(shape):
    x, y = make_inputs(shape, soft=True, tdtype=torch.float64, seed=5)
    out, gx = value_and_grad(ops.stats, x, y)
    ref, gref = value_and_grad(ops.reference_stats, x, y)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gx, gref, rtol=1e-10, atol=1e-12)


@requires_ext
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("eps", EPSS)
@pytest.mark.parametrize("tdtype", [torch.float64, torch.uint8])
def test_exp_stats_float64(gamma, eps, tdtype):
    x, y = make_inputs((3, 1, 17, 9, 5), tdtype=tdtype, seed=7)
    out, gx = value_and_grad(ops.exp_stats, x, y, gamma, eps)
    ref, gref = value_and_grad(ops.reference_exp_stats, x, y, gamma, eps)
    assert out.dtype == torch.float64 and out.shape == (3, 9)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gx, gref, rtol=1e-10, atol=1e-12)


@requires_ext
@pytest.mark.parametrize(
    "soft,tdtype",
    [(False, torch.float32), (False, torch.uint8), (False, torch.bool), (True, torch.float32)],
)  # soft labels need a float target
def test_stats_float32(soft, tdtype):
    x, y = make_inputs((3, 1, 17, 19, 23), soft=soft, tdtype=tdtype, seed=11)
    x32 = x.float()
    out, gx = value_and_grad(ops.stats, x32, y)
    ref, gref = value_and_grad(ops.reference_stats, x32.double(), y)
    assert out.dtype == torch.float32 and gx.dtype == torch.float32
    assert_sums_close(out, ref, 2e-6)
    assert_grad_close(gx, gref, 1e-5)
    # the float32 reference (the fallback path) agrees too
    assert_sums_close(ops.reference_stats(x32, y), ref, 2e-5)


@requires_ext
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("eps", EPSS)
def test_exp_stats_float32(gamma, eps):
    x, y = make_inputs((3, 1, 17, 19, 23), tdtype=torch.uint8, seed=13)
    x32 = x.float()
    out, gx = value_and_grad(ops.exp_stats, x32, y, gamma, eps)
    ref, gref = value_and_grad(ops.reference_exp_stats, x32.double(), y, gamma, eps)
    assert out.dtype == torch.float32 and out.shape == (3, 9)
    assert_sums_close(out, ref, 5e-6)
    assert_grad_close(gx, gref, 2e-5)


@requires_ext
@pytest.mark.parametrize("xdtype,rel", [(torch.bfloat16, 2.0**-7), (torch.float16, 2.0**-10)])
@pytest.mark.parametrize("tdtype", [torch.float32, torch.uint8])
def test_low_precision_logits(xdtype, rel, tdtype):
    x, y = make_inputs((2, 1, 13, 17, 11), tdtype=tdtype, seed=17)
    xl = x.to(xdtype)
    out, gx = value_and_grad(ops.stats, xl, y)
    ref, gref = value_and_grad(ops.reference_stats, xl.double(), y)
    assert out.dtype == torch.float32 and gx.dtype == xdtype
    assert_sums_close(out, ref, 2e-6)  # inputs are exact in float32: only the sums round
    assert_grad_close(gx, gref, rel)  # the gradient is rounded to the logits' dtype
    out, gx = value_and_grad(ops.exp_stats, xl, y, 2.0, 1e-7)
    ref, gref = value_and_grad(ops.reference_exp_stats, xl.double(), y, 2.0, 1e-7)
    assert_sums_close(out, ref, 5e-6)
    assert_grad_close(gx, gref, rel)


@requires_ext
@pytest.mark.parametrize("big", [100.0, 1000.0])
def test_extreme_logits_are_exact(big):
    vals = torch.tensor([big, -big, big / 2, -big / 2, 0.0, 30.0, -30.0])
    x = vals.repeat(2, 3).reshape(2, 1, 21)
    y = torch.tensor([1, 0] * 10 + [1], dtype=torch.uint8).repeat(2, 1).reshape(2, 1, 21)
    y[1] = 1 - y[1]
    for fn, args in [(ops.stats, ()), (ops.exp_stats, (2.0, 0.0)), (ops.exp_stats, (0.5, 1e-7))]:
        ref_fn = ops.reference_stats if fn is ops.stats else ops.reference_exp_stats
        out, gx = value_and_grad(fn, x, y, *args)
        ref, gref = value_and_grad(ref_fn, x.double(), y, *args)
        assert torch.isfinite(out).all() and torch.isfinite(gx).all()
        assert_sums_close(out, ref, 2e-6)
        torch.testing.assert_close(gx.double(), gref, rtol=1e-5, atol=1e-7)


@requires_ext
def test_noncontiguous_and_target_shape():
    x, y = make_inputs((3, 1, 9, 14), tdtype=torch.float32)
    xt = x.transpose(2, 3)
    yt = y.transpose(2, 3)
    assert not xt.is_contiguous()
    torch.testing.assert_close(
        ops.stats(xt, yt), ops.reference_stats(xt, yt), rtol=1e-10, atol=1e-12
    )
    # (B, *spatial) target for (B, 1, *spatial) logits: same numel per sample
    torch.testing.assert_close(ops.stats(x, y[:, 0]), ops.stats(x, y), rtol=0, atol=0)
    torch.testing.assert_close(torch.ops.hytver.stats(xt, yt), ops.stats(xt, yt), rtol=0, atol=0)


@requires_ext
def test_empty_inputs():
    x = torch.zeros(0, 1, 4)
    assert torch.equal(ops.stats(x, torch.zeros(0, 1, 4)), torch.zeros(0, 5))
    x = torch.zeros(2, 1, 0)
    assert torch.equal(ops.exp_stats(x, torch.zeros(2, 1, 0), 2.0), torch.zeros(2, 9))
    g = torch.ops.hytver.stats_backward(torch.ones(2, 5), x, torch.zeros(2, 1, 0))
    assert g.shape == x.shape


# ------------------------------------------------------------------------------------------
# ISA paths, threads


@requires_ext
def test_every_cpu_isa_path():
    isas = ops.supported_cpu_isas()
    assert isas[0] == "base"
    x, y = make_inputs((2, 1, 40, 41, 19), tdtype=torch.uint8, seed=23)  # 31160 per sample
    x32 = x.float()
    ref, gref = value_and_grad(ops.reference_stats, x32.double(), y)
    eref, egref = value_and_grad(ops.reference_exp_stats, x32.double(), y, 2.0, 1e-7)
    for isa in isas:
        with ops.use_cpu_isa(isa):
            assert ops.cpu_isa() == isa
            out, gx = value_and_grad(ops.stats, x32, y)
            assert_sums_close(out, ref, 2e-6)
            assert_grad_close(gx, gref, 1e-5)
            out, gx = value_and_grad(ops.exp_stats, x32, y, 2.0, 1e-7)
            assert_sums_close(out, eref, 5e-6)
            assert_grad_close(gx, egref, 2e-5)
            # logs=False (DSC++): the saving forward without the log series, the backward from
            # the saved values
            xg = x32.detach().clone().requires_grad_(True)
            xr = x32.double().requires_grad_(True)
            w = weights(eref) * NO_LOGS
            out = ops.exp_stats(xg, y, 2.0, 1e-7, logs=False)
            assert_sums_close(out, eref * NO_LOGS, 5e-6)
            (out * w).sum().backward()
            (ops.reference_exp_stats(xr, y, 2.0, 1e-7) * w).sum().backward()
            assert_grad_close(xg.grad, xr.grad, 2e-5)
            xb = x.to(torch.bfloat16)
            torch.testing.assert_close(
                ops.stats(xb, y).double(), ops.reference_stats(xb.double(), y), rtol=2e-6, atol=1e-5
            )


@requires_ext
def test_cpu_isa_env_errors():
    with ops.use_cpu_isa("sse9"):
        with pytest.raises(ValueError, match="HYTVER_CPU_ISA"):
            ops.stats(torch.zeros(1, 3), torch.zeros(1, 3))
    for isa in ("avx2", "avx512"):
        if isa not in ops.supported_cpu_isas():
            with ops.use_cpu_isa(isa):
                with pytest.raises(RuntimeError, match=isa):
                    ops.stats(torch.zeros(1, 3), torch.zeros(1, 3))
    with ops.use_cpu_isa("auto"):
        assert ops.cpu_isa() == ops.supported_cpu_isas()[-1]


@requires_ext
@pytest.mark.parametrize("xdtype", [torch.float32, torch.float64, torch.bfloat16])
def test_bitwise_equal_for_1_and_2_threads(xdtype):
    x, y = make_inputs((2, 1, 71, 67, 13), tdtype=torch.uint8, seed=29)  # 4 chunks per sample
    x = x.to(xdtype)
    old = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            s, gs = value_and_grad(ops.stats, x, y)
            e, ge = value_and_grad(ops.exp_stats, x, y, 2.5, 1e-7)
            results.append((s, gs, e, ge))
    finally:
        torch.set_num_threads(old)
    for a, b in zip(results[0], results[1], strict=True):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------
# errors


@requires_ext
def test_errors_name_the_problem():
    x = torch.zeros(2, 1, 4, 4)
    y = torch.zeros(2, 1, 4, 4)
    for fn in (ops.stats, torch.ops.hytver.stats, ops.reference_stats):
        with pytest.raises(ValueError, match="does not match logits shape"):
            fn(x, torch.zeros(2, 1, 4, 5))
        with pytest.raises(ValueError, match="does not match logits shape"):
            fn(x, torch.zeros(1, 2, 4, 4))
        with pytest.raises(ValueError, match="logits must be"):
            fn(torch.zeros(2, 1, 4, 4, dtype=torch.int64), y)
        with pytest.raises(ValueError, match="target must be"):
            fn(x, torch.zeros(2, 1, 4, 4, dtype=torch.int32))
        with pytest.raises(ValueError, match="batch dimension"):
            fn(torch.tensor(1.0), torch.tensor(1.0))
    for fn in (ops.exp_stats, torch.ops.hytver.exp_stats):
        with pytest.raises(ValueError, match="gamma"):
            fn(x, y, -1.0, 0.0)
        with pytest.raises(ValueError, match="eps"):
            fn(x, y, 1.0, 0.5)
    with pytest.raises(ValueError, match="grad must have shape"):
        torch.ops.hytver.stats_backward(torch.ones(2, 9), x, y)
    with pytest.raises(ValueError, match="grad must have shape"):
        torch.ops.hytver.exp_stats_backward(torch.ones(2, 5), x, y, 2.0, 0.0)
    with pytest.raises(ValueError, match="float64 logits have no saving variant"):
        torch.ops.hytver.stats_save(x.double(), y)
    with pytest.raises(ValueError, match="saving variant takes float32 logits"):
        torch.ops.hytver.exp_stats_save(x.to(torch.bfloat16), y, 2.0, 0.0)
    _, saved = torch.ops.hytver.stats_save(x, y)
    with pytest.raises(ValueError, match="saved must be the contiguous float32"):
        torch.ops.hytver.stats_backward_saved_(torch.ones(2, 5), saved[:, :, :2], x, y)
    with pytest.raises(ValueError, match="saved must be the contiguous float32"):
        torch.ops.hytver.exp_stats_backward_saved_(torch.ones(2, 9), saved.double(), x, y, 2.0,
                                                   0.0)


# ------------------------------------------------------------------------------------------
# registration: opcheck, gradcheck, torch.compile


def opcheck_cases(device="cpu"):
    x, y = make_inputs((2, 1, 5, 7), device=device)
    x32 = x.float()
    yb = y.bool()
    yf = y.float()
    return [
        (torch.ops.hytver.stats.default, (x32, y)),
        (torch.ops.hytver.stats.default, (x, yf)),
        (torch.ops.hytver.stats.default, (x32.to(torch.bfloat16), yb)),
        (torch.ops.hytver.stats_backward.default, (torch.rand(2, 5, device=device), x32, y)),
        (torch.ops.hytver.exp_stats.default, (x32, y, 2.0, 1e-7)),
        (torch.ops.hytver.exp_stats.default, (x, yb, 0.5, 0.0)),
        (
            torch.ops.hytver.exp_stats_backward.default,
            (torch.rand(2, 9, device=device), x32, yf, 2.5, 1e-7),
        ),
    ]


def opcheck_saving_cases():
    """The CPU saving variants (stats: float32 / half logits; exp_stats: float32), and their
    in-place backwards on each path: from the saved values, and recomputing (gamma != 2 or a
    focal gradient)."""
    x, y = make_inputs((2, 1, 5, 7))
    x32 = x.float()
    xb = x32.to(torch.bfloat16)
    _, saved = torch.ops.hytver.stats_save(xb, y.bool())
    _, esaved = torch.ops.hytver.exp_stats_save(x32, y, 2.0, 1e-7)
    g9 = torch.rand(2, 9)
    no_focal = g9.clone()
    no_focal[:, 7:] = 0
    ebwd = torch.ops.hytver.exp_stats_backward_saved_.default
    return [
        (torch.ops.hytver.stats_save.default, (x32, y)),
        (torch.ops.hytver.stats_save.default, (xb, y.float())),
        (torch.ops.hytver.stats_backward_saved_.default, (torch.rand(2, 5), saved, xb, y.bool())),
        (torch.ops.hytver.exp_stats_save.default, (x32, y, 2.0, 1e-7)),
        (torch.ops.hytver.exp_stats_save.default, (x32, y.bool(), 0.5, 0.0)),
        (torch.ops.hytver.exp_stats_save.default, (x32, y, 2.0, 1e-7, False)),
        (ebwd, (no_focal, esaved, x32, y, 2.0, 1e-7)),
        (ebwd, (g9, esaved.clone(), x32, y, 2.0, 1e-7)),
        (ebwd, (no_focal, esaved.clone(), x32, y.float(), 2.5, 0.0)),
    ]


@requires_ext
def test_opcheck():
    for op, args in opcheck_cases() + opcheck_saving_cases():
        torch.library.opcheck(op, args)
        if args[0].dtype.is_floating_point and op in (
            torch.ops.hytver.stats.default,
            torch.ops.hytver.exp_stats.default,
            torch.ops.hytver.stats_save.default,
            torch.ops.hytver.exp_stats_save.default,
        ):
            a = (args[0].detach().clone().requires_grad_(True),) + args[1:]
            torch.library.opcheck(op, a)


@requires_ext
@pytest.mark.parametrize("xdtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tdtype", [torch.uint8, torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_saving_variants_match_plain_ops(xdtype, tdtype, shape):
    """The training path of stats (the forward keeps per-voxel values, the backward reads them
    and writes the float32 gradient over them) gives the plain op's sums bit for bit and its
    gradient to float32 rounding, extremes included."""
    x, y = make_inputs(shape, tdtype=tdtype, seed=41)
    x = x.to(xdtype)
    g5 = weights(torch.zeros(shape[0], 5, dtype=torch.float32), seed=3) - 0.5
    sums, saved = torch.ops.hytver.stats_save(x, y)
    assert saved.shape == x.shape and saved.dtype == torch.float32
    assert torch.equal(sums, torch.ops.hytver.stats(x, y))
    torch.ops.hytver.stats_backward_saved_(g5, saved, x, y)
    want = torch.ops.hytver.stats_backward(g5, x, y)
    assert_grad_close(saved, want.float(), 2e-6 if xdtype == torch.float32 else 2.0**-7)


@requires_ext
@pytest.mark.parametrize("tdtype", [torch.uint8, torch.bool, torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("eps", EPSS)
def test_exp_saving_variant_matches_plain_ops(tdtype, shape, eps):
    """exp_stats' training path: sums bit for bit; the gradient from the saved values (gamma == 2
    without focal gradients, DSC++) and the recomputed one written over them (a focal
    gradient, or gamma != 2) both match the plain backward."""
    x, y = make_inputs(shape, tdtype=tdtype, seed=47)
    x = x.float()
    g9 = weights(torch.zeros(shape[0], 9, dtype=torch.float32), seed=5) - 0.5
    no_focal = g9.clone()
    no_focal[:, 7:] = 0
    for gamma, grad in ((2.0, no_focal), (2.0, g9), (2.5, no_focal), (0.5, g9)):
        sums, saved = torch.ops.hytver.exp_stats_save(x, y, gamma, eps)
        assert saved.shape == x.shape and saved.dtype == torch.float32
        assert torch.equal(sums, torch.ops.hytver.exp_stats(x, y, gamma, eps))
        torch.ops.hytver.exp_stats_backward_saved_(grad, saved, x, y, gamma, eps)
        want = torch.ops.hytver.exp_stats_backward(grad, x, y, gamma, eps)
        rel = 2e-6 if grad is g9 or gamma != 2.0 else 1e-5  # from m: p and q rounded once more
        assert_grad_close(saved, want, rel)


@requires_ext
@pytest.mark.parametrize("xdtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gamma", [2.0, 2.5])
def test_exp_stats_without_logs(xdtype, gamma):
    """logs=False: the log columns are constant zeros (no gradient through them, whatever their
    weight), the rest as with logs; float32 with gamma == 2 runs the saving path, the other
    cases the plain op."""
    x, y = make_inputs((3, 1, 9, 8, 7), seed=59)
    x = x.to(xdtype)
    ref, gref = value_and_grad(lambda a, b: ops.reference_exp_stats(a, b, gamma, 1e-7) * NO_LOGS,
                               x.double(), y)
    out, g = value_and_grad(lambda a, b: ops.exp_stats(a, b, gamma, 1e-7, logs=False), x, y)
    assert torch.all(out[:, NO_LOGS == 0] == 0)
    rel = 1e-12 if xdtype == torch.float64 else 5e-6
    assert_sums_close(out, ref, rel)
    assert_grad_close(g, gref, 1e-10 if xdtype == torch.float64 else 2e-5)


@requires_ext
def test_saving_path_survives_retain_graph():
    """The first backward turns the saved values into the gradient; a second backward of the
    same graph recomputes from the logits and gives the same gradient."""
    x, y = make_inputs((2, 1, 9, 7), seed=53)
    x = x.float().requires_grad_(True)
    for fn in (ops.stats, lambda a, b: ops.exp_stats(a, b, 2.0, 1e-7, logs=False)):
        out = fn(x, y)
        loss = (out * weights(out)).sum()
        (first,) = torch.autograd.grad(loss, x, retain_graph=True)
        (second,) = torch.autograd.grad(loss, x)
        assert_grad_close(second, first, 1e-5)
        assert first.data_ptr() != second.data_ptr()


@requires_ext
@pytest.mark.parametrize("xdtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_exp_stats_gamma_two_matches_general_path(xdtype, shape):
    """gamma == 2 kernels (powers as products) agree with the exp path (gamma just above 2)."""
    x, y = make_inputs(shape, seed=43)
    x = x.to(xdtype)
    g9 = weights(torch.zeros(shape[0], 9, dtype=torch.float32), seed=4) - 0.5
    rel = 2e-5 if xdtype == torch.float32 else 2.0**-7
    near = 2.0 * (1 + 1e-15)  # not == 2: the general exp path
    for eps in (0.0, 1e-7):
        assert_sums_close(torch.ops.hytver.exp_stats(x, y, 2.0, eps),
                          torch.ops.hytver.exp_stats(x, y, near, eps), 2e-6)
        assert_grad_close(torch.ops.hytver.exp_stats_backward(g9, x, y, 2.0, eps).float(),
                          torch.ops.hytver.exp_stats_backward(g9, x, y, near, eps).float(), rel)


@requires_ext
def test_training_path_uses_saving_variants():
    """ops.stats / ops.exp_stats pick the saving ops exactly when a CPU backward will follow
    (exp_stats: only where the backward can use them, float32 logits, gamma == 2, logs=False)."""
    x, y = make_inputs((2, 1, 6, 5))
    x32 = x.float().requires_grad_(True)
    with torch.profiler.profile() as prof:
        ops.stats(x32, y).sum().backward()
        ops.exp_stats(x32, y, 2.0, 1e-7, logs=False).sum().backward()
        ops.exp_stats(x32, y, 2.0, 1e-7).sum().backward()  # logs: plain
        ops.exp_stats(x32, y, 2.5, 1e-7, logs=False).sum().backward()  # gamma != 2: plain
        xb = x32.detach().bfloat16().requires_grad_(True)
        ops.exp_stats(xb, y, 2.0, 0.0, logs=False).sum().backward()  # bfloat16: plain
        with torch.no_grad():
            ops.stats(x32, y)
        ops.stats(x.requires_grad_(True), y).sum().backward()  # float64: plain ops
    names = [e.name for e in prof.events()]
    counts = {"stats_save": 1, "stats_backward_saved_": 1, "exp_stats_save": 1,
              "exp_stats_backward_saved_": 1, "exp_stats": 3, "exp_stats_backward": 3,
              "stats": 2, "stats_backward": 1}  # no_grad, float64 stats
    for name, count in counts.items():
        assert names.count(f"hytver::{name}") == count, name


@requires_ext
@pytest.mark.parametrize("eps", EPSS)
def test_gradcheck_float64(eps):
    x, y = make_inputs((2, 1, 3, 5), scale=2.0, extremes=False, seed=31)
    x[0, 0, 0, :2] = torch.tensor([25.0, -25.0], dtype=torch.float64)  # clamped when eps > 0
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(ops.stats, (x, y))
    for gamma in (0.0, 0.5, 2.5):
        assert torch.autograd.gradcheck(
            lambda t, gamma=gamma: ops.exp_stats(t, y, gamma, eps), (x,)
        )
    ys = torch.rand(2, 1, 3, 5, dtype=torch.float64)
    assert torch.autograd.gradcheck(ops.stats, (x, ys))


def _compiled_loss(x, y):
    s = ops.stats(x, y)
    e = ops.exp_stats(x, y, 2.0, 1e-7)
    d = ops.exp_stats(x, y, 2.0, 1e-7, logs=False)
    tp, fp, fn = s[:, 0], s[:, 1], s[:, 2]
    tversky = 1 - (tp + 1) / (tp + 0.7 * fn + 0.3 * fp + 1)
    return tversky.mean() + (s[:, 3:].sum() + e[:, 7:].sum() + d.sum()) / x.numel()


@requires_ext
def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    x, y = make_inputs((2, 1, 9, 11, 7), tdtype=torch.uint8, seed=37)
    x = x.float()
    compiled = torch.compile(_compiled_loss, fullgraph=True)
    xe = x.clone().requires_grad_(True)
    xc = x.clone().requires_grad_(True)
    le = _compiled_loss(xe, y)
    le.backward()
    lc = compiled(xc, y)
    lc.backward()
    torch.testing.assert_close(lc, le, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-5, atol=1e-8)


def test_import_without_extension():
    code = (
        "import sys; sys.modules['hytver_dist._C'] = None\n"
        "import torch\n"
        "from hytver_dist import ops\n"
        "assert not ops.is_available() and not ops.supports('cpu')\n"
        "x = torch.randn(2, 1, 5, requires_grad=True); y = (torch.rand(2, 1, 5) > 0.5).float()\n"
        "s = ops.stats(x, y); s.sum().backward()\n"
        "torch.testing.assert_close(s, ops.reference_stats(x, y))\n"
        "e = ops.exp_stats(x, y, 2.0, 1e-7); assert e.shape == (2, 9)\n"
        "print('ok')\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


# ------------------------------------------------------------------------------------------
# CUDA (run on a GPU machine)


@cuda
@requires_cuda
def test_cuda_kernels_are_built():
    assert ops.has_cuda(), "hytver_dist._C was built without its CUDA kernels (HYTVER_CUDA=1)"


CUDA_DTYPES = [
    (torch.float32, torch.float32, 2e-6, 1e-5),
    (torch.float32, torch.uint8, 2e-6, 1e-5),
    (torch.float32, torch.bool, 2e-6, 1e-5),
    (torch.float64, torch.float64, 1e-10, 1e-10),
    (torch.bfloat16, torch.uint8, 2e-6, 2.0**-7),
    (torch.float16, torch.float32, 2e-6, 2.0**-10),
]


@cuda
@requires_cuda
@pytest.mark.parametrize("xdtype,tdtype,rel,grel", CUDA_DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 5, 7, 3), (3, 1, 17, 19, 23), (2, 1, 64, 64, 32)])
@pytest.mark.parametrize("offset", [0, 1])
def test_cuda_matches_reference(xdtype, tdtype, rel, grel, shape, offset):
    if not ops.has_cuda():
        pytest.skip("built without CUDA kernels")
    x, y = make_inputs(shape, tdtype=tdtype, seed=41)
    n = x.numel()
    # offset > 0: unaligned storage, so the scalar (non-packed) path runs
    xbuf = torch.zeros(n + offset, dtype=xdtype, device="cuda")
    ybuf = torch.zeros(n + offset, dtype=tdtype, device="cuda")
    xbuf[offset:] = x.reshape(-1).to(xdtype).cuda()
    ybuf[offset:] = y.reshape(-1).cuda()
    xc = xbuf[offset:].view(shape)
    yc = ybuf[offset:].view(shape)
    xr = xc.double().cpu()
    yr = yc.cpu()
    out, gx = value_and_grad(ops.stats, xc, yc)
    ref, gref = value_and_grad(ops.reference_stats, xr, yr)
    assert out.is_cuda and gx.dtype == xdtype
    assert_sums_close(out, ref, rel)
    assert_grad_close(gx, gref, grel)
    for gamma, eps in ((0.0, 0.0), (2.0, 0.0), (0.5, 1e-7), (2.5, 1e-7)):
        out, gx = value_and_grad(ops.exp_stats, xc, yc, gamma, eps)
        ref, gref = value_and_grad(ops.reference_exp_stats, xr, yr, gamma, eps)
        assert_sums_close(out, ref, max(rel, 5e-6) if xdtype != torch.float64 else rel)
        assert_grad_close(gx, gref, max(grel, 2e-5) if xdtype != torch.float64 else grel)


@cuda
@requires_cuda
def test_cuda_deterministic_and_matches_cpu():
    if not ops.has_cuda():
        pytest.skip("built without CUDA kernels")
    x, y = make_inputs((2, 1, 96, 96, 64), tdtype=torch.uint8, seed=43)
    xc, yc = x.float().cuda(), y.cuda()
    a = ops.stats(xc, yc)
    b = ops.stats(xc, yc)
    assert torch.equal(a, b)
    e1 = ops.exp_stats(xc, yc, 2.0, 1e-7)
    e2 = ops.exp_stats(xc, yc, 2.0, 1e-7)
    assert torch.equal(e1, e2)
    assert_sums_close(a.cpu(), ops.stats(x.float(), y), 2e-6)
    assert_sums_close(e1.cpu(), ops.exp_stats(x.float(), y, 2.0, 1e-7), 5e-6)


@cuda
@requires_cuda
def test_cuda_opcheck_and_gradcheck():
    if not ops.has_cuda():
        pytest.skip("built without CUDA kernels")
    for op, args in opcheck_cases("cuda"):
        torch.library.opcheck(op, args)
    x, y = make_inputs((2, 1, 3, 5), scale=2.0, extremes=False, device="cuda", seed=47)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(ops.stats, (x, y))
    assert torch.autograd.gradcheck(lambda t: ops.exp_stats(t, y, 2.5, 1e-7), (x,))


@cuda
@requires_cuda
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_cuda_torch_compile(mode):
    if not ops.has_cuda():
        pytest.skip("built without CUDA kernels")
    torch._dynamo.reset()
    x, y = make_inputs((2, 1, 32, 32, 16), tdtype=torch.uint8, device="cuda", seed=53)
    x = x.float()
    compiled = torch.compile(_compiled_loss, fullgraph=True, mode=mode)
    ref = None
    for _ in range(3):  # several steps: CUDA-graph replays on a side stream
        xc = x.clone().requires_grad_(True)
        loss = compiled(xc, y)
        loss.backward()
        if ref is None:
            xe = x.clone().requires_grad_(True)
            ref = _compiled_loss(xe, y)
            ref.backward()
        torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-5, atol=1e-8)
    assert math.isfinite(loss.item())
