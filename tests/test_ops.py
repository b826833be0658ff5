"""Tests of the fused loss op (hytver_dist.ops, torch.ops.hytver.*), sigmoid and softmax.

The float64 op's values are checked against the spec's oracles in test_losses_spec.py and
test_losses_softmax.py; here the other dtypes, ISA paths, threads, layouts, errors and the
registration (opcheck, gradcheck, torch.compile) are checked against the float64 op.
CUDA tests are marked ``cuda`` and run only where a GPU is visible.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from loss_helpers import (
    assert_device_assert,
    capture_loss_step,
    cuda_ready,
    needs_ext,
    run_cuda_subprocess,
    step_kernels,
)

from hytver_dist import ops

cuda = pytest.mark.cuda
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

# Every loss kind with non-default hyperparameters (a swapped one changes the value), and the
# hyperparameters of the saving path's kinds.
KIND_PARAMS = {
    "dice": [0.5], "tversky": [0.2, 2.0], "focal_tversky": [0.85, 1.6, 0.3],
    "logcosh_dice": [0.1], "ce": [], "weighted_ce": [0.35, 2.0], "focal": [0.8, 1.3],
    "dice_ce": [0.3, 1.7, 0.2], "focal_dice": [0.6, 1.4, -1.0, 2.0, 2.0],
    "combo": [0.8, 0.3, 0.4], "hytver": [0.8, 0.3, 0.4, 0.25],
    "symmetric_unified_focal": [0.3, 0.75, 0.2], "asymmetric_unified_focal": [0.7, 0.35, 0.8],
    "dice_pp": [2.0],
}


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


def below_autograd():
    """Call the raw kernels (the op's saving variant returns its saved values only there)."""
    return torch._C._AutoDispatchBelowAutograd()


def loss_value_and_grad(kind, params, x, y, per_sample=False, save=None,
                        activation="sigmoid", include_background=True):
    """The loss op's value and logit gradient (upstream gradient 0.7) via ops.loss (save=None:
    its own choice) or the raw op with the given save flag and the matching backward."""
    x = x.detach().clone()
    if save is None:
        x.requires_grad_(True)
        value = ops.loss(x, y, kind, params, per_sample, activation, include_background)
        (value * 0.7).backward()
        return value.detach(), x.grad
    with below_autograd():  # above it the saved values belong to the autograd node
        value, coef, saved = torch.ops.hytver.loss(x, y, kind, params, per_sample, save,
                                                   activation, include_background)
    grad = torch.tensor(0.7, dtype=value.dtype)
    if save:
        torch.ops.hytver.loss_backward_saved_(grad, coef, saved, x, y, kind, params, activation)
        return value, saved
    return value, torch.ops.hytver.loss_backward(grad, coef, x, y, kind, params, activation)


def assert_loss_op_close(kind, params, x, y, per_sample, grel, activation="sigmoid", vrel=2e-5):
    """ops.loss (float32 / half logits) against the float64 op on the same values."""
    ref, gref = loss_value_and_grad(kind, params, x.double(), y, per_sample,
                                    activation=activation)
    out, g = loss_value_and_grad(kind, params, x, y, per_sample, activation=activation)
    torch.testing.assert_close(out.double(), ref, rtol=vrel, atol=1e-7)
    assert_grad_close(g, gref, grel)


def make_labels(shape, classes, seed=0, device="cpu", dtype=torch.uint8):
    """Logits (B, C, *spatial) (float64, scale 3, a few extremes) and a label map (B, 1, ...)."""
    x, _ = make_inputs(shape, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    labels = torch.randint(0, classes, (shape[0], 1, *shape[2:]), generator=g)
    return x.to(device), labels.to(dtype).to(device)


# ------------------------------------------------------------------------------------------
# the kernel table


@needs_ext
def test_kernel_table_matches_the_loss_classes():
    """The C++ table of loss kinds (names, hyperparameter counts, sums, hard-label flag) is the
    loss classes' metadata: the one place a loss declares what the kernels need."""
    from hytver_dist.losses import LOSSES

    table = ops.loss_kinds()
    assert list(table) == list(LOSSES)
    for name, cls in LOSSES.items():
        assert cls.kind == name
        want = ops.LossKind(len(cls.fused_param_names), 9 if cls.needs_hard_labels else 5,
                            cls.needs_hard_labels)
        assert table[name] == want, name
        assert len(cls().fused_params()) == want.params


# ------------------------------------------------------------------------------------------
# dtypes, extremes, layouts


@needs_ext
@pytest.mark.parametrize("xdtype,rel", [(torch.bfloat16, 2.0**-7), (torch.float16, 2.0**-10)])
@pytest.mark.parametrize("tdtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize("kind", ["hytver", "dice_pp"])
def test_low_precision_logits(xdtype, rel, tdtype, kind):
    """Half logits: the loss in float32 from the rounded values, the gradient rounded once."""
    x, y = make_inputs((3, 2, 17, 9, 5), tdtype=tdtype, seed=19)
    xl = x.to(xdtype)
    out, gx = loss_value_and_grad(kind, KIND_PARAMS[kind], xl, y, save=False)
    ref, gref = loss_value_and_grad(kind, KIND_PARAMS[kind], xl.double(), y, save=False)
    assert gx.dtype == xdtype
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-7)
    assert_grad_close(gx, gref, rel, floor=1e-3)


@needs_ext
@pytest.mark.parametrize("big", [100.0, 1000.0])
@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_extreme_logits_are_exact(big, activation):
    """Saturated logits: finite values and gradients equal to the float64 op's."""
    vals = torch.tensor([big, -big, big / 2, -big / 2, 0.0, 30.0, -30.0])
    x = vals.repeat(2, 6).reshape(2, 2, 21)
    y = torch.tensor([1, 0] * 10 + [1], dtype=torch.uint8).repeat(2, 2).reshape(2, 2, 21)
    y[:, 1] = 1 - y[:, 0]
    if activation == "softmax":
        y = y[:, 1:]  # the label map of the two classes
    for kind in ("hytver", "focal", "dice_pp", "symmetric_unified_focal"):
        out, gx = loss_value_and_grad(kind, KIND_PARAMS[kind], x, y, activation=activation)
        ref, gref = loss_value_and_grad(kind, KIND_PARAMS[kind], x.double(), y,
                                        activation=activation)
        assert torch.isfinite(out).all() and torch.isfinite(gx).all(), kind
        torch.testing.assert_close(out.double(), ref, rtol=2e-6, atol=1e-7)
        torch.testing.assert_close(gx.double(), gref, rtol=1e-5, atol=1e-7)


@needs_ext
def test_noncontiguous_inputs():
    x, y = make_inputs((3, 2, 9, 14), tdtype=torch.float32)
    xt, yt = x.transpose(2, 3), y.transpose(2, 3)
    assert not xt.is_contiguous()
    for kind in ("hytver", "dice_pp"):
        got = loss_value_and_grad(kind, KIND_PARAMS[kind], xt, yt)
        want = loss_value_and_grad(kind, KIND_PARAMS[kind], xt.contiguous(), yt.contiguous())
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    x, lab = make_labels((2, 3, 9, 14), 3)
    got = loss_value_and_grad("dice", [1.0], x.transpose(2, 3), lab.transpose(2, 3),
                              activation="softmax")
    want = loss_value_and_grad("dice", [1.0], x.transpose(2, 3).contiguous(),
                               lab.transpose(2, 3).contiguous(), activation="softmax")
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@needs_ext
@pytest.mark.parametrize("kind", ["hytver", "dice_pp", "focal"])
def test_gamma_two_matches_general_path(kind):
    """The gamma == 2 kernels (powers as products) agree with the exp path (gamma just above
    2), sigmoid and softmax."""
    near = 2.0 * (1 + 1e-15)  # not == 2: the general exp path
    params = {"hytver": ([0.7, 0.7, 0.5, 1.0], None), "dice_pp": ([2.0], [near]),
              "focal": ([0.25, 2.0], [0.25, near])}[kind]
    if params[1] is None:
        return
    x, y = make_inputs((2, 3, 11, 13), seed=43)
    xl, lab = make_labels((2, 3, 11, 13), 3, seed=44)
    for xi, yi, act in ((x.float(), y, "sigmoid"), (xl.float(), lab, "softmax")):
        a = loss_value_and_grad(kind, params[0], xi, yi, save=False, activation=act)
        b = loss_value_and_grad(kind, params[1], xi, yi, save=False, activation=act)
        torch.testing.assert_close(a[0], b[0], rtol=2e-6, atol=1e-8)
        assert_grad_close(a[1], b[1], 2e-5)


# ------------------------------------------------------------------------------------------
# ISA paths, threads


@needs_ext
def test_every_cpu_isa_path():
    isas = ops.supported_cpu_isas()
    assert isas[0] == "base"
    x, y = make_inputs((2, 1, 40, 41, 19), tdtype=torch.uint8, seed=23)  # 31160 per sample
    x32 = x.float()
    xs, lab = make_labels((2, 3, 17, 21, 19), 3, seed=24)
    for isa in isas:
        with ops.use_cpu_isa(isa):
            assert ops.cpu_isa() == isa
            # the loss op on this path, saving (CPU training) and plain: DSC++ from the saved
            # values without logs, HyTver from the saved values, a focal kind recomputing
            for kind in ("dice_pp", "hytver", "focal"):
                assert_loss_op_close(kind, KIND_PARAMS[kind], x32, y, True, 2e-5)
                assert_loss_op_close(kind, KIND_PARAMS[kind], xs.float(), lab, False, 5e-5,
                                     activation="softmax")
            assert_loss_op_close("combo", KIND_PARAMS["combo"], x.to(torch.bfloat16), y, False,
                                 2.0**-7)


@needs_ext
def test_cpu_isa_env_errors():
    x, y = torch.zeros(1, 1, 3), torch.zeros(1, 1, 3)
    with ops.use_cpu_isa("sse9"):
        with pytest.raises(ValueError, match="HYTVER_CPU_ISA"):
            ops.loss(x, y, "dice", [1.0])
    for isa in ("avx2", "avx512"):
        if isa not in ops.supported_cpu_isas():
            with ops.use_cpu_isa(isa):
                with pytest.raises(RuntimeError, match=isa):
                    ops.loss(x, y, "dice", [1.0])
    with ops.use_cpu_isa("auto"):
        assert ops.cpu_isa() == ops.supported_cpu_isas()[-1]


@needs_ext
@pytest.mark.parametrize("xdtype", [torch.float32, torch.float64, torch.bfloat16])
def test_bitwise_equal_for_1_and_2_threads(xdtype):
    """Fixed chunks and a fixed reduction order: the losses and their gradients are bitwise the
    same for 1 and 2 threads, sigmoid with C = 1 and C = 3, softmax with C = 3."""
    x, y = make_inputs((2, 1, 71, 67, 13), tdtype=torch.uint8, seed=29)  # 4 chunks per sample
    x = x.to(xdtype)
    x3, y3 = make_inputs((2, 3, 41, 37, 11), tdtype=torch.uint8, seed=30)
    x3 = x3.to(xdtype)
    xs, lab = make_labels((2, 3, 41, 37, 23), 3, seed=31)  # 3 chunks per sample
    xs = xs.to(xdtype)
    old = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            run = []
            for kind in ("hytver", "dice_pp", "asymmetric_unified_focal"):
                for xi, yi in ((x, y), (x3, y3)):
                    run += loss_value_and_grad(kind, KIND_PARAMS[kind], xi, yi)
                run += loss_value_and_grad(kind, KIND_PARAMS[kind], xs, lab,
                                           activation="softmax")
            results.append(run)
    finally:
        torch.set_num_threads(old)
    for a, b in zip(results[0], results[1], strict=True):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------
# the loss op


@needs_ext
@pytest.mark.parametrize("kind", sorted(KIND_PARAMS))
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("per_sample", [False, True])
def test_loss_op_float32_matches_float64(kind, channels, per_sample):
    """float32 logits with a uint8 target (the training case, saving path where it pays)
    against the float64 op, whose value and gradient test_losses_spec checks against the
    oracles."""
    x, y = make_inputs((3, channels, 9, 8, 7), seed=61)
    assert_loss_op_close(kind, KIND_PARAMS[kind], x.float(), y, per_sample, 5e-5)


@needs_ext
def test_loss_op_is_the_mean_over_channels():
    """C channels = the mean over channels of the single-channel op, value and gradient."""
    x, y = make_inputs((2, 3, 7, 6, 5), seed=67)
    for kind, params in KIND_PARAMS.items():
        for per_sample in (False, True):
            value, grad = loss_value_and_grad(kind, params, x, y, per_sample)
            parts = [loss_value_and_grad(kind, params, x[:, c:c + 1], y[:, c:c + 1], per_sample)
                     for c in range(3)]
            torch.testing.assert_close(value, sum(v for v, _ in parts) / 3, rtol=1e-12, atol=0)
            torch.testing.assert_close(grad, torch.cat([g for _, g in parts], 1) / 3,
                                       rtol=1e-10, atol=1e-15)


SAVING_CASES = [
    (xdtype, tdtype, kind)
    for xdtype in (torch.float32, torch.bfloat16, torch.float16)
    for tdtype in (torch.uint8, torch.bool, torch.float32)
    for kind in ("hytver", "dice", "dice_pp", "focal", "symmetric_unified_focal")
    if not ops.loss_kinds()[kind].hard or xdtype == torch.float32  # the op refuses the others
]


@needs_ext
@pytest.mark.parametrize("xdtype,tdtype,kind", SAVING_CASES)
def test_loss_saving_variant_matches_plain_op(xdtype, tdtype, kind):
    """The CPU training path (the forward keeps per-voxel values, the backward writes the float32
    gradient over them; exponent kinds other than DSC++ recompute into them) gives the plain
    op's loss bit for bit and its gradient to float32 rounding, extremes included."""
    x, y = make_inputs((3, 2, 11, 9, 5), tdtype=tdtype, seed=71)
    x = x.to(xdtype)
    params = KIND_PARAMS[kind]
    value, grad = loss_value_and_grad(kind, params, x, y, save=True)
    want, want_grad = loss_value_and_grad(kind, params, x, y, save=False)
    assert torch.equal(value, want)
    assert grad.dtype == torch.float32 and grad.shape == x.shape
    if xdtype == torch.float32:
        assert_grad_close(grad, want_grad, 2e-5)
    else:  # the plain op's half gradient rounds (and goes subnormal below 6e-5 in float16)
        assert_grad_close(grad, want_grad.float(), 2.0**-7, floor=1e-3)


@needs_ext
@pytest.mark.parametrize("kind", ["hytver", "dice_ce", "weighted_ce", "logcosh_dice"])
@pytest.mark.parametrize("target", ["labels", "one-hot"])
def test_softmax_saving_variant_matches_plain_op(kind, target):
    """Softmax training path (float32 logits, the kinds without per-voxel powers): the forward
    keeps p_c, the backward (no exp) writes the gradient over it: the plain op's loss bit for bit,
    its gradient to float32 rounding; a label map and one-hot targets."""
    x, lab = make_labels((2, 4, 11, 9, 5), 4, seed=72)
    y = lab if target == "labels" else torch.nn.functional.one_hot(
        lab[:, 0].long(), 4).movedim(-1, 1).to(torch.uint8)
    x = x.float()
    params = KIND_PARAMS[kind]
    value, grad = loss_value_and_grad(kind, params, x, y, save=True, activation="softmax")
    want, want_grad = loss_value_and_grad(kind, params, x, y, save=False, activation="softmax")
    assert torch.equal(value, want)
    assert grad.dtype == torch.float32 and grad.shape == x.shape
    assert_grad_close(grad, want_grad, 2e-5)
    auto = loss_value_and_grad(kind, params, x, y, activation="softmax")  # ops.loss: saving
    assert torch.equal(auto[0], want)
    assert_grad_close(auto[1], want_grad, 2e-5)
    with pytest.raises(ValueError, match="softmax saving variant takes float32 logits"):
        torch.ops.hytver.loss(x, y, "dice_pp", [2.0], False, True, "softmax")


@needs_ext
def test_saving_path_survives_retain_graph():
    """The first backward turns the saved values into the gradient; a second backward of the
    same graph recomputes from the logits and gives the same gradient."""
    x, y = make_inputs((2, 1, 9, 7), seed=53)
    x = x.float().requires_grad_(True)
    x2 = torch.cat([x, -x], 1).detach().requires_grad_(True)
    lab = (y > 0).to(torch.uint8)
    for kind, xi, yi, act in (("hytver", x, y, "sigmoid"), ("dice_pp", x, y, "sigmoid"),
                              ("hytver", x2, lab, "softmax")):
        loss = ops.loss(xi, yi, kind, KIND_PARAMS[kind], activation=act)
        (first,) = torch.autograd.grad(loss, xi, retain_graph=True)
        (second,) = torch.autograd.grad(loss, xi)
        assert_grad_close(second, first, 1e-5)
        assert first.data_ptr() != second.data_ptr()


@needs_ext
def test_training_path_uses_saving_variant():
    """ops.loss saves exactly when a CPU backward will follow (sigmoid; not for float64 logits,
    exponent kinds only on float32 logits): the backward then writes into the saved values."""
    x, y = make_inputs((2, 1, 6, 5))
    x32 = x.float().requires_grad_(True)
    with torch.profiler.profile() as prof:
        ops.loss(x32, y, "hytver", KIND_PARAMS["hytver"]).backward()  # saving
        ops.loss(x32, y, "dice_pp", [2.0]).backward()  # saving
        ops.loss(x32, y, "dice_pp", [2.5]).backward()  # saving, recomputes into them
        ops.loss(x32.bfloat16(), y, "focal", [0.25, 2.0]).backward()  # bfloat16 exp: plain
        with torch.no_grad():
            ops.loss(x32, y, "hytver", KIND_PARAMS["hytver"])  # no backward: plain
        ops.loss(x.requires_grad_(True), y, "dice", [1.0]).backward()  # float64: plain
        lab = (y > 0).to(torch.uint8)
        ops.loss(torch.cat([x32, -x32], 1), lab, "dice", [1.0], activation="softmax").backward()
    names = [e.name for e in prof.events()]
    assert names.count("hytver::loss") >= 7  # (a call may show at two dispatch levels)
    assert names.count("hytver::loss_backward_saved_") == 4  # the softmax dice too
    assert names.count("hytver::loss_backward") == 2


@needs_ext
def test_loss_op_zero_denominators_give_nan_not_an_exception():
    """IEEE semantics in the algebra: smooth = 0 with an empty group divides 0 by 0."""
    x = torch.full((2, 1, 3, 3), -2000.0, dtype=torch.float64)  # p == 0 exactly
    y = torch.zeros(2, 1, 3, 3, dtype=torch.float64)
    for kind, params in (("dice", [0.0]), ("tversky", [0.7, 0.0]), ("logcosh_dice", [0.0])):
        value, coef, _ = torch.ops.hytver.loss(x, y, kind, params, True)
        assert math.isnan(value.item()) and torch.isnan(coef).any()


@needs_ext
def test_loss_op_nonfinite_logits_propagate():
    x, y = make_inputs((2, 1, 4, 5), seed=3)
    x[0, 0, 0, 0] = float("nan")
    for kind, params in KIND_PARAMS.items():
        value, grad = loss_value_and_grad(kind, params, x, y)
        assert math.isnan(value.item()), kind


# ------------------------------------------------------------------------------------------
# errors


def loss_op_error_cases(device):
    """(callable, error regex) for the loss ops' argument checks on ``device``."""
    x = torch.zeros(2, 3, 4, 4, device=device)
    y = torch.zeros(2, 3, 4, 4, device=device)
    op = torch.ops.hytver
    coef = torch.zeros(6, 5, dtype=torch.float64, device=device)
    g = torch.tensor(1.0, device=device)
    return [
        (lambda: op.loss(x, y, "nope", []), "unknown loss kind 'nope'"),
        (lambda: op.loss(x, y, "hytver", [0.7]), "takes 4 hyperparameters, got 1"),
        (lambda: op.loss(x, y, "dice", [float("nan")]), "must be finite"),
        (lambda: op.loss(x, y, "dice_pp", [-1.0]), "gamma must be finite and >= 0"),
        (lambda: op.loss(x, y[:, :2], "dice", [1.0]), "does not match logits shape"),
        (lambda: op.loss(x[0, 0, 0], y[0, 0, 0], "dice", [1.0]), r"shape \(B, C, \*spatial\)"),
        (lambda: op.loss(x[:0], y[:0], "dice", [1.0]), "empty"),
        (lambda: op.loss_backward(g, coef[:, :2], x, y, "dice", [1.0]), "coef must be"),
        (lambda: op.loss_backward(g, coef.float(), x, y, "dice", [1.0]), "coef must be"),
        (lambda: op.loss_backward(torch.ones(2, device=device), coef, x, y, "dice", [1.0]),
         "grad must be one floating-point value"),
        (lambda: op.loss(x, y, "dice", [1.0], False, False, "relu"),
         "activation must be 'sigmoid' or 'softmax'"),
        (lambda: op.loss(x[:, :1], y[:, :1], "dice", [1.0], False, False, "softmax"),
         "softmax needs C >= 2"),
        (lambda: op.loss(x, y[:, :2], "dice", [1.0], False, False, "softmax"),
         "fits neither a label map"),
        (lambda: op.loss(x, y[:, :1], "dice", [1.0], False, False, "softmax"),
         "label map must have an integer dtype"),
        (lambda: op.loss(x, y.to(torch.int32), "dice", [1.0], False, False, "softmax"),
         "one-hot / soft target .* must be float32, float64, uint8 or bool"),
    ]


def softmax_target_error_cases(device):
    """(callable, error regex) for softmax targets with bad values on ``device``."""
    x = torch.zeros(2, 3, 4, 4, device=device)
    lab = torch.zeros(2, 1, 4, 4, dtype=torch.int64, device=device)
    lab[1, 0, 2, 3] = 3
    neg = torch.zeros_like(lab)
    neg[0, 0, 0, 0] = -1
    onehot = torch.zeros(2, 3, 4, 4, device=device)
    onehot[:, 0] = 1
    unnorm = onehot.clone()
    unnorm[1, 1, 1, 1] = 0.5
    soft = onehot.clone()
    soft[1, :2, 1, 1] = 0.5
    outside = onehot.clone()
    outside[0, 2, 0, 0] = 2.0
    op = torch.ops.hytver.loss
    return [
        (lambda: op(x, lab, "dice", [1.0], False, False, "softmax"),
         r"labels must lie in \[0, C\)"),
        (lambda: op(x, neg.to(torch.int32), "dice", [1.0], False, False, "softmax"),
         r"labels must lie in \[0, C\)"),
        (lambda: op(x, lab.to(torch.uint8), "dice_pp", [2.0], False, False, "softmax"),
         r"labels must lie in \[0, C\)"),
        (lambda: op(x, unnorm, "dice", [1.0], False, False, "softmax"), "must sum to 1"),
        (lambda: op(x, outside, "hytver", KIND_PARAMS["hytver"], False, False, "softmax"),
         r"must lie in \[0, 1\]"),
        (lambda: op(x, soft, "focal", [0.25, 2.0], False, False, "softmax"),
         "needs hard labels"),
    ]


@needs_ext
def test_loss_op_errors_name_the_problem():
    for fn, match in loss_op_error_cases("cpu") + softmax_target_error_cases("cpu"):
        with pytest.raises(ValueError, match=match):
            fn()
    x = torch.zeros(2, 1, 4, 4)
    y = torch.zeros(2, 1, 4, 4)
    # the target's values, checked in the kernels' own pass (every variant)
    for bad, dtype in ((1.5, torch.float32), (float("nan"), torch.float64), (2, torch.uint8)):
        yb = y.to(dtype, copy=True)
        yb[1, 0, 3, 2] = bad
        for kind, params in (("hytver", KIND_PARAMS["hytver"]), ("dice_pp", [2.0])):
            for save in (False, True):
                with pytest.raises(ValueError, match=r"target values must lie in \[0, 1\]"):
                    torch.ops.hytver.loss(x, yb, kind, params, False, save)
    soft = y.clone()
    soft[0, 0, 1, 1] = 0.5
    torch.ops.hytver.loss(x, soft, "hytver", KIND_PARAMS["hytver"])  # soft labels: fine
    for save in (False, True):  # the exponent kinds' sums need hard labels
        with pytest.raises(ValueError, match="need hard labels"):
            torch.ops.hytver.loss(x, soft, "dice_pp", [2.0], False, save)
    with pytest.raises(ValueError, match="float64 logits have no saving variant"):
        torch.ops.hytver.loss(x.double(), y, "dice", [1.0], False, True)
    with pytest.raises(ValueError, match="saving variant takes float32 logits"):
        torch.ops.hytver.loss(x.bfloat16(), y, "dice_pp", [2.0], False, True)
    with below_autograd():
        _, coef, saved = torch.ops.hytver.loss(x, y, "dice", [1.0], False, True)
    assert torch.ops.hytver.loss(x, y, "dice", [1.0], False, True)[2].numel() == 0
    with pytest.raises(ValueError, match="saved must be the contiguous float32"):
        torch.ops.hytver.loss_backward_saved_(torch.tensor(1.0), coef, saved[:, :, :2], x, y,
                                              "dice", [1.0])


# ------------------------------------------------------------------------------------------
# registration: opcheck, gradcheck, torch.compile


def opcheck_cases(device="cpu"):
    x, y = make_inputs((2, 1, 5, 7), device=device)
    x32 = x.float()
    yb = y.bool()
    yf = y.float()
    x3, y3 = make_inputs((2, 3, 5, 4), device=device, seed=5)
    coef5 = torch.rand(6, 5, dtype=torch.float64, device=device)
    coef9 = torch.rand(6, 9, dtype=torch.float64, device=device)
    g32 = torch.tensor(0.7, device=device)
    xs, lab = make_labels((2, 3, 5, 4), 3, device=device, seed=6)
    onehot = torch.nn.functional.one_hot(lab[:, 0].long(), 3).movedim(-1, 1).float()
    loss = torch.ops.hytver.loss.default
    return [
        (loss, (x32, y, "hytver", KIND_PARAMS["hytver"], False)),
        (loss, (x, yf, "tversky", KIND_PARAMS["tversky"], False)),
        (loss, (x32.to(torch.bfloat16), yb, "focal", [0.25, 2.0])),
        (loss, (xs.float(), lab, "hytver", KIND_PARAMS["hytver"], False, False, "softmax", False)),
        (loss, (xs, lab.long(), "dice_pp", [2.0], True, False, "softmax")),
        (loss, (xs.half(), onehot, "weighted_ce", [0.1, 0.9], False, False, "softmax")),
        (loss, (xs, onehot.double(), "asymmetric_unified_focal",
                KIND_PARAMS["asymmetric_unified_focal"], False, False, "softmax", False)),
        (torch.ops.hytver.loss_backward.default,
         (g32, coef5, xs.float(), lab, "hytver", KIND_PARAMS["hytver"], "softmax")),
        (torch.ops.hytver.loss.default, (x3, y3.float().double(), "dice", [1.0], True)),
        (torch.ops.hytver.loss.default, (x3.float(), y3.bool(), "dice_pp", [2.0])),
        (torch.ops.hytver.loss.default, (x3.half(), y3, "weighted_ce", [0.1, 0.9])),
        (torch.ops.hytver.loss_backward.default,
         (g32, coef5, x3.float(), y3, "hytver", KIND_PARAMS["hytver"])),
        (torch.ops.hytver.loss_backward.default,
         (g32.double(), coef9, x3, y3, "focal", KIND_PARAMS["focal"])),
    ]


def opcheck_saving_cases():
    """The CPU saving variant of the loss op and its in-place backward (from the saved values,
    and recomputing into them for an exponent kind)."""
    x, y = make_inputs((2, 3, 5, 4), seed=9)
    x32 = x.float()
    xb = x32.to(torch.bfloat16)
    g = torch.tensor(0.7)
    _, lab = make_labels((2, 3, 5, 4), 3, seed=10)
    with below_autograd():
        _, coef, saved = torch.ops.hytver.loss(xb, y, "combo", KIND_PARAMS["combo"], False, True)
        _, ecoef, esaved = torch.ops.hytver.loss(x32, y, "focal", [0.25, 2.0], False, True)
        _, scoef, ssaved = torch.ops.hytver.loss(x32, lab, "hytver", KIND_PARAMS["hytver"], False,
                                                 True, "softmax")
    bwd = torch.ops.hytver.loss_backward_saved_.default
    return [
        (torch.ops.hytver.loss.default, (x32, y, "hytver", KIND_PARAMS["hytver"], True, True)),
        (torch.ops.hytver.loss.default, (xb, y.float(), "ce", [], False, True)),
        (torch.ops.hytver.loss.default, (x32, y.bool(), "dice_pp", [2.0], False, True)),
        (bwd, (g, coef, saved, xb, y, "combo", KIND_PARAMS["combo"])),
        (bwd, (g, ecoef, esaved, x32, y, "focal", [0.25, 2.0])),
        (torch.ops.hytver.loss.default,
         (x32, lab, "dice_ce", [1.0, 1.0, 1.0], False, True, "softmax")),
        (bwd, (g, scoef, ssaved, x32, lab, "hytver", KIND_PARAMS["hytver"], "softmax")),
    ]


@needs_ext
def test_opcheck():
    for op, args in opcheck_cases() + opcheck_saving_cases():
        torch.library.opcheck(op, args)
        if op is torch.ops.hytver.loss.default:
            a = (args[0].detach().clone().requires_grad_(True),) + args[1:]
            torch.library.opcheck(op, a)


@needs_ext
@pytest.mark.parametrize("kind", sorted(KIND_PARAMS))
def test_gradcheck_loss_op(kind):
    """gradcheck of the loss op (forward, its coefficients and the backward) in float64, C = 3,
    global and per sample; soft labels for the non-exponent kinds; softmax with a label map
    (with and without the background) and with one-hot / soft targets."""
    x, y = make_inputs((2, 3, 3, 4), scale=2.0, extremes=False, seed=37)
    hard = ops.loss_kinds()[kind].hard
    g = torch.Generator().manual_seed(2)
    if not hard:
        y = torch.rand(y.shape, dtype=torch.float64, generator=g)
    _, lab = make_labels((2, 3, 3, 4), 3, seed=38)
    dense = torch.nn.functional.one_hot(lab[:, 0].long(), 3).movedim(-1, 1).double()
    if not hard:
        dense = torch.softmax(torch.randn(dense.shape, dtype=torch.float64, generator=g), 1)
    x.requires_grad_(True)
    for per_sample in (False, True):
        assert torch.autograd.gradcheck(
            lambda t, p=per_sample: ops.loss(t, y, kind, KIND_PARAMS[kind], p), (x,))
        for target, bg in ((lab, True), (lab, False), (dense, True)):
            assert torch.autograd.gradcheck(
                lambda t, p=per_sample, tg=target, b=bg: ops.loss(
                    t, tg, kind, KIND_PARAMS[kind], p, "softmax", b), (x,))


def _compiled_loss(x, y):
    fused = ops.loss(x, y, "hytver", KIND_PARAMS["hytver"]) + ops.loss(x, y, "dice_pp", [2.0])
    labels = y[:, :1].to(torch.uint8)
    softmax = ops.loss(x, labels, "dice_ce", [1.0, 1.0, 1.0], False, "softmax", False)
    return fused + softmax + ops.loss(x, labels, "focal", [0.25, 2.0], True, "softmax")


@needs_ext
def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    x, y = make_inputs((2, 2, 9, 11, 7), tdtype=torch.uint8, seed=37)
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
        "from hytver_dist.losses import get_loss\n"
        "assert not ops.is_available() and not ops.supports('cpu')\n"
        "x = torch.randn(2, 1, 5, requires_grad=True); y = (torch.rand(2, 1, 5) > 0.5).float()\n"
        "assert ops.loss_kinds() == {}\n"
        "get_loss('hytver')(x, y).backward()\n"
        "x3 = torch.randn(2, 3, 5, requires_grad=True); lab = torch.randint(0, 3, (2, 1, 5))\n"
        "get_loss('dice_ce', activation='softmax')(x3, lab).backward()\n"
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


@cuda
@requires_cuda
def test_cuda_deterministic_and_matches_cpu():
    cuda_ready()
    x, y = make_inputs((2, 3, 48, 48, 32), tdtype=torch.uint8, seed=43)
    xs, lab = make_labels((2, 4, 48, 48, 32), 4, seed=44)
    cases = [(x.float(), y, "sigmoid"), (xs.float(), lab, "softmax")]
    for xi, yi, act in cases:
        for kind in ("hytver", "dice_pp"):
            a = loss_value_and_grad(kind, KIND_PARAMS[kind], xi.cuda(), yi.cuda(), save=False,
                                    activation=act)
            b = loss_value_and_grad(kind, KIND_PARAMS[kind], xi.cuda(), yi.cuda(), save=False,
                                    activation=act)
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
            ref = loss_value_and_grad(kind, KIND_PARAMS[kind], xi, yi, save=False,
                                      activation=act)
            torch.testing.assert_close(a[0].cpu(), ref[0], rtol=2e-6, atol=1e-7)
            assert_grad_close(a[1], ref[1], 5e-5)


@cuda
@requires_cuda
def test_cuda_opcheck_and_gradcheck():
    cuda_ready()
    for op, args in opcheck_cases("cuda"):
        torch.library.opcheck(op, args)
    x3, y3 = make_inputs((2, 3, 3, 4), scale=2.0, extremes=False, device="cuda", seed=48)
    _, lab = make_labels((2, 3, 3, 4), 3, device="cuda", seed=49)
    x3.requires_grad_(True)
    for kind in ("hytver", "weighted_ce", "dice_pp", "asymmetric_unified_focal"):
        assert torch.autograd.gradcheck(
            lambda t, k=kind: ops.loss(t, y3, k, KIND_PARAMS[k], True), (x3,))
        assert torch.autograd.gradcheck(
            lambda t, k=kind: ops.loss(t, lab, k, KIND_PARAMS[k], True, "softmax", False), (x3,))


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


@cuda
@requires_cuda
@pytest.mark.parametrize("kind", sorted(KIND_PARAMS))
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("xdtype,tdtype", [(torch.float32, torch.uint8),
                                           (torch.float64, torch.float64),
                                           (torch.bfloat16, torch.bool)])
def test_cuda_loss_op_matches_cpu_float64(kind, channels, xdtype, tdtype):
    """The CUDA loss op (two launches, algebra on the device) against the CPU float64 op, whose
    values the spec oracles check; global and per sample; aligned and unaligned storage."""
    cuda_ready()
    x, y = make_inputs((2, channels, 17, 19, 23), tdtype=tdtype, seed=73)
    x = x.to(xdtype)
    rel = {torch.float32: 2e-5, torch.float64: 1e-10, torch.bfloat16: 2.0**-7}[xdtype]
    for per_sample in (False, True):
        ref, gref = loss_value_and_grad(kind, KIND_PARAMS[kind], x.double(), y, per_sample)
        for offset in (0, 1):
            xb = torch.zeros(x.numel() + offset, dtype=xdtype, device="cuda")
            xb[offset:] = x.reshape(-1).cuda()
            xc = xb[offset:].view(x.shape)
            value, grad = loss_value_and_grad(kind, KIND_PARAMS[kind], xc, y.cuda(), per_sample)
            assert value.is_cuda and grad.dtype == xdtype
            torch.testing.assert_close(value.double().cpu(), ref, rtol=max(rel, 1e-6), atol=1e-7)
            assert_grad_close(grad, gref, max(rel, 5e-5))


@cuda
@requires_cuda
@pytest.mark.parametrize("name", sorted(KIND_PARAMS))
def test_cuda_loss_step_has_no_host_sync_and_few_launches(name):
    """A whole fused loss step on CUDA: no host synchronisation (sync debug mode "error"), two
    kernel launches forward and one backward, deterministic."""
    from hytver_dist.losses import get_loss

    cuda_ready()
    x, y = make_inputs((2, 3, 32, 32, 16), device="cuda", seed=79)
    x = x.float()
    loss = get_loss(name, backend="fused")
    one = torch.ones((), device="cuda")

    def step():
        xg = x.clone().requires_grad_(True)
        value = loss(xg, y)
        value.backward(one)
        return value, xg.grad

    step()  # warm-up: allocator, lazy initialisation
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call now raises
    try:
        first = step()
        second = step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert first[0].item() == second[0].item() and torch.equal(first[1], second[1])

    # The launches, counted by the profiler (its exit synchronises: outside the check above).
    fwd, bwd = step_kernels(loss, x, y)
    assert len(fwd) <= 2, fwd
    assert len(bwd) == 1, bwd


@cuda
@requires_cuda
@pytest.mark.parametrize("name", ["hytver", "dice_pp", "focal_dice"])
def test_cuda_graph_captures_the_loss_step(name):
    """Forward and backward of the fused loss captured in a CUDA graph, replayed on new data,
    give the eager values."""
    from hytver_dist.losses import get_loss

    cuda_ready()
    loss = get_loss(name, backend="fused")
    x, y = make_inputs((2, 2, 24, 24, 16), device="cuda", seed=83)
    static_x = x.float().clone().requires_grad_(True)
    static_y = y.clone()
    graph, static_value, static_grad = capture_loss_step(loss, static_x, static_y)
    for seed in (1, 2):
        x2, y2 = make_inputs((2, 2, 24, 24, 16), device="cuda", seed=seed)
        with torch.no_grad():
            static_x.copy_(x2.float())
        static_y.copy_(y2)
        graph.replay()
        xe = x2.float().clone().requires_grad_(True)
        want = loss(xe, y2)
        want.backward()
        torch.testing.assert_close(static_value, want)
        torch.testing.assert_close(static_grad, xe.grad)


@cuda
@requires_cuda
def test_cuda_loss_op_errors_name_the_problem_in_a_subprocess():
    cuda_ready()
    code = (
        "import sys; sys.path.insert(0, 'tests')\n"
        "import pytest, torch\n"
        "from test_ops import loss_op_error_cases\n"
        "for fn, match in loss_op_error_cases('cuda'):\n"
        "    with pytest.raises(ValueError, match=match):\n"
        "        fn()\n"
        "with pytest.raises(ValueError, match='save=True is a CPU path'):\n"
        "    x = torch.zeros(2, 1, 4, device='cuda')\n"
        "    torch.ops.hytver.loss(x, x, 'dice', [1.0], False, True)\n"
        "print('errors ok')\n"
    )
    res = run_cuda_subprocess(code)
    assert res.returncode == 0 and "errors ok" in res.stdout, res.stdout + res.stderr


@cuda
@requires_cuda
@pytest.mark.parametrize("kind,target,message", [
    ("hytver", "2.0", "target values must lie in [0, 1]"),
    ("hytver", "float('nan')", "target values must lie in [0, 1]"),
    ("dice_pp", "0.5", "needs hard labels"),
])
def test_cuda_invalid_target_stops_on_the_device(kind, target, message):
    """The target check runs on the GPU (no host sync): an invalid value (for the exponent
    kinds, a soft label) stops the kernel with a device-side assertion (cudaErrorAssert) whose
    message names the problem; the next synchronisation raises."""
    cuda_ready()
    code = (
        "import torch\n"
        "from hytver_dist import ops\n"
        "x = torch.zeros(2, 1, 64, device='cuda')\n"
        f"y = torch.zeros(2, 1, 64, device='cuda'); y[1, 0, 7] = {target}\n"
        "params = [0.7, 0.7, 0.5, 1.0] if %r == 'hytver' else [2.0]\n"
        "value = ops.loss(x, y, %r, params)"
    ) % (kind, kind)
    assert_device_assert(code, message)
