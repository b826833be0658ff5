"""Loss library behaviour: MONAI agreement, gradcheck, empty foreground, extreme logits,
accepted target forms and the errors of the spec."""

from __future__ import annotations

import monai.losses as monai_losses
import pytest
import torch

from hytver_dist.losses import LOSSES, get_loss

CLAMPED = {"symmetric_unified_focal", "asymmetric_unified_focal", "dice_pp"}


def inputs(shape=(3, 1, 6, 7, 5), soft=False, dtype=torch.float64, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    y = torch.rand(shape, generator=g, dtype=torch.float64)
    y = (y if soft else (y < 0.3).double()).to(dtype)
    return x, y


# --------------------------------------------------------------------------- MONAI agreement
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("soft", [False, True])
def test_tversky_matches_monai_with_alpha_mapping(per_sample, soft):
    x, y = inputs(soft=soft)
    a, s = 0.7, 1.0
    ref = monai_losses.TverskyLoss(sigmoid=True, alpha=1 - a, beta=a, smooth_nr=s, smooth_dr=s,
                                   batch=not per_sample)(x, y)
    got = get_loss("tversky", alpha=a, smooth=s, per_sample=per_sample, backend="reference")(x, y)
    torch.testing.assert_close(got, ref.to(got.dtype), rtol=1e-10, atol=0)


@pytest.mark.parametrize("per_sample", [False, True])
def test_dice_matches_monai(per_sample):
    x, y = inputs()
    ref = monai_losses.DiceLoss(sigmoid=True, smooth_nr=1.0, smooth_dr=1.0,
                                batch=not per_sample)(x, y)
    got = get_loss("dice", per_sample=per_sample, backend="reference")(x, y)
    torch.testing.assert_close(got, ref.to(got.dtype), rtol=1e-10, atol=0)


@pytest.mark.parametrize("alpha", [None, 0.25, 0.6])
@pytest.mark.parametrize("soft", [False, True])
def test_focal_matches_monai(alpha, soft):
    x, y = inputs(soft=soft)
    ref = monai_losses.FocalLoss(gamma=2.0, alpha=alpha, use_softmax=False)(x, y)
    got = get_loss("focal", alpha=alpha, gamma=2.0, backend="reference")(x, y)
    # MONAI computes the focal loss in float32.
    torch.testing.assert_close(got, ref.to(got.dtype), rtol=2e-6, atol=0)


@pytest.mark.parametrize("per_sample", [False, True])
def test_dice_ce_matches_monai(per_sample):
    x, y = inputs()
    ref = monai_losses.DiceCELoss(sigmoid=True, smooth_nr=1.0, smooth_dr=1.0,
                                  batch=not per_sample, lambda_dice=0.7, lambda_ce=1.3)(x, y)
    got = get_loss("dice_ce", lambda_dice=0.7, lambda_ce=1.3, per_sample=per_sample,
                   backend="reference")(x, y)
    torch.testing.assert_close(got, ref.to(got.dtype), rtol=1e-10, atol=0)


@pytest.mark.parametrize("per_sample", [False, True])
def test_focal_dice_matches_monai(per_sample):
    x, y = inputs()
    ref = monai_losses.DiceFocalLoss(sigmoid=True, smooth_nr=1.0, smooth_dr=1.0,
                                     batch=not per_sample, gamma=2.0, alpha=None,
                                     lambda_dice=0.8, lambda_focal=1.2)(x, y)
    got = get_loss("focal_dice", alpha=None, gamma=2.0, lambda_dice=0.8, lambda_focal=1.2,
                   per_sample=per_sample, backend="reference")(x, y)
    torch.testing.assert_close(got, ref.to(got.dtype), rtol=2e-6, atol=0)


# ------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("soft", [False, True])
def test_gradcheck_float64(name, soft):
    x, y = inputs(shape=(2, 1, 3, 4, 3), soft=soft, seed=3, scale=1.5)
    kwargs = {"per_sample": True} if "per_sample" in LOSSES[name].hyperparameters() else {}
    loss = get_loss(name, backend="reference", **kwargs)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: loss(t, y), (x,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_empty_foreground_is_finite_and_pushes_p_down(name):
    x, _ = inputs(shape=(2, 1, 6, 6, 6), scale=1.0)
    y = torch.zeros_like(x)
    x.requires_grad_()
    value = get_loss(name, backend="reference")(x, y)
    value.backward()
    assert torch.isfinite(value) and value > 0
    assert torch.isfinite(x.grad).all()
    # Descent (x -= lr * grad) lowers every p: the gradient is >= 0 everywhere, > 0 somewhere.
    assert (x.grad >= 0).all() and x.grad.sum() > 0


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("how", ["random", "perfect", "wrong"])
def test_extreme_logits_float32_are_finite(name, how):
    _, y = inputs(shape=(2, 1, 5, 6, 7), dtype=torch.float32)
    sign = {"random": torch.sign(torch.randn_like(y)), "perfect": 2 * y - 1,
            "wrong": 1 - 2 * y}[how]
    x = (100.0 * sign).requires_grad_()
    value = get_loss(name, backend="reference")(x, y)
    value.backward()
    assert torch.isfinite(value), value
    assert torch.isfinite(x.grad).all()
    # Logs come from the logits: float32 agrees with float64. The clamped losses agree up to
    # float32's resolution of 1 - 1e-7 (spacing 6e-8 near 1: log(1 - eps) is off by ~20 %).
    ref = get_loss(name, backend="reference")(x.detach().double(), y.double())
    atol = 1e-4 if name in CLAMPED else 1e-6
    torch.testing.assert_close(value.double(), ref, rtol=1e-5, atol=atol)
    if how == "wrong" and name not in CLAMPED | {"dice", "tversky", "focal_tversky",
                                                 "logcosh_dice"}:
        # A CE term on logits keeps a gradient on confidently wrong voxels (a clamp would not).
        assert (x.grad.abs() > 0).all()


# ---------------------------------------------------------------------- accepted target forms
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_target_forms_agree(name):
    x, y = inputs(shape=(2, 1, 4, 5, 6), dtype=torch.float32)
    loss = get_loss(name, backend="reference")
    want = loss(x, y)
    for target in (y[:, 0], y.to(torch.uint8), y.bool(), y.long()):
        torch.testing.assert_close(loss(x, target), want, rtol=0, atol=0)


def test_half_logits_are_computed_in_float32():
    x, y = inputs(dtype=torch.float32)
    for dtype in (torch.float16, torch.bfloat16):
        got = get_loss("hytver", backend="reference")(x.to(dtype), y)
        assert got.dtype == torch.float32
        # The same rounded logits in float64: a float32 computation agrees to ~1e-7, one in the
        # half dtype (cast up at the end) misses by 2e-4 (float16) to 1e-3 (bfloat16) here.
        exact = get_loss("hytver", backend="reference")(x.to(dtype).double(), y.double())
        torch.testing.assert_close(got.double(), exact, rtol=1e-5, atol=0)


# --------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("x,y,match", [
    (torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5), "does not match logits shape"),
    (torch.zeros(2, 1, 4, 4), torch.zeros(3, 4, 4), "does not match logits shape"),
    (torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 1.5), r"must lie in \[0, 1\]"),
    (torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), -0.1), r"must lie in \[0, 1\]"),
    (torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), float("nan")), "NaN"),
    (torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 2, dtype=torch.uint8), r"\[0, 1\]"),
    (torch.zeros(2, 1, 4, 4, dtype=torch.long), torch.zeros(2, 1, 4, 4), "floating-point"),
    (torch.zeros(2, 1, 4, 4, dtype=torch.bool), torch.zeros(2, 1, 4, 4), "floating-point"),
    (torch.zeros(0, 1, 4, 4), torch.zeros(0, 1, 4, 4), "empty"),
    (torch.zeros(2, 1, 0, 4), torch.zeros(2, 1, 0, 4), "empty"),
    (torch.zeros(2, 2, 4, 4), torch.zeros(2, 4, 4), "without the channel axis when there is "
     "one channel"),
    (torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 4, 4), "does not match logits shape"),
    (torch.zeros(2, 1), torch.zeros(2, 1), r"\(B, C, \*spatial\)"),
])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_bad_inputs_raise_value_error(name, x, y, match):
    with pytest.raises(ValueError, match=match):
        get_loss(name)(x, y)


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ValueError, match="unknown loss 'hytvr'.*combo.*hytver"):
        get_loss("hytvr")


def test_unknown_hyperparameter_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) \['delta'\].*alpha, beta"):
        get_loss("hytver", delta=0.3)


@pytest.mark.parametrize("name,kwargs,match", [
    ("tversky", dict(alpha=1.2), "alpha"), ("hytver", dict(beta=-0.1), "beta"),
    ("hytver", dict(gamma=1.5), "gamma"), ("combo", dict(gamma=float("nan")), "gamma"),
    ("focal", dict(gamma=-1.0), "gamma"), ("focal", dict(alpha=2.0), "alpha"),
    ("focal_tversky", dict(gamma=0.0), "gamma"), ("dice", dict(smooth=-1.0), "smooth"),
    ("symmetric_unified_focal", dict(delta=1.1), "delta"),
    ("asymmetric_unified_focal", dict(weight=-0.5), "weight"),
    ("asymmetric_unified_focal", dict(gamma=1.5), "gamma"),
    ("dice_pp", dict(gamma=0.0), "gamma"), ("weighted_ce", dict(w_bg=0.0, w_fg=0.0), "w_bg"),
    ("dice_ce", dict(lambda_ce=-1.0), "lambda_ce"), ("hytver", dict(alpha="0.7"), "alpha"),
    ("hytver", dict(backend="cuda"), "backend"),
])
def test_out_of_range_hyperparameters(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_loss(name, **kwargs)


@pytest.mark.parametrize("name", ["symmetric_unified_focal", "asymmetric_unified_focal"])
@pytest.mark.parametrize("delta", [0.0, 1.0])
def test_unified_focal_gradients_finite_at_delta_extremes(name, delta):
    # A sample without lesions gives mTI = 1 exactly at delta 0 or 1 (power at 0).
    x, _ = inputs(shape=(2, 1, 4, 4, 4))
    y = torch.zeros_like(x)
    y[0, 0, 1, 1, 1] = 1
    x.requires_grad_()
    get_loss(name, delta=delta, backend="reference")(x, y).backward()
    assert torch.isfinite(x.grad).all()
