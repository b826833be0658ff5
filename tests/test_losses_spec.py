"""Every loss against an independent float64 implementation written here from the loss
contract (docs/losses.md), values and autograd gradients, 1e-10 relative: both backends
(the reference and the fused op), one and three channels, hard and soft labels, global and
per-sample.

The oracles below are single-channel; C channels are, by definition, the mean over channels
of the single-channel loss of each channel (:func:`channel_mean`)."""

from __future__ import annotations

import itertools
import zlib

import pytest
import torch
from loss_helpers import BACKENDS, needs_ext

from hytver_dist import ops
from hytver_dist.losses import LOSSES, get_loss

EPS = 1e-7
RTOL = 1e-10


# ---------------------------------------------------------------- the spec, written out again
def sig(x):
    return 1 / (1 + torch.exp(-x))


def softplus(t):
    return torch.log1p(torch.exp(t))


def region_sums(x, y, per_sample):
    """S_py, S_p, S_y per group: one per sample, or one over the whole batch."""
    p = sig(x)
    flat = lambda t: t.reshape(t.shape[0], -1).sum(1)  # noqa: E731
    s_py, s_p, s_y = flat(p * y), flat(p), flat(y)
    if not per_sample:
        s_py, s_p, s_y = s_py.sum()[None], s_p.sum()[None], s_y.sum()[None]
    return s_py, s_p, s_y


def o_dice(x, y, smooth=1.0, per_sample=False):
    s_py, s_p, s_y = region_sums(x, y, per_sample)
    return (1 - (2 * s_py + smooth) / (s_p + s_y + smooth)).mean()


def o_ti(x, y, alpha, smooth, per_sample):
    s_py, s_p, s_y = region_sums(x, y, per_sample)
    tp, fp, fn = s_py, s_p - s_py, s_y - s_py
    return (tp + smooth) / (tp + alpha * fn + (1 - alpha) * fp + smooth)


def o_tversky(x, y, alpha=0.7, smooth=1.0, per_sample=False):
    return (1 - o_ti(x, y, alpha, smooth, per_sample)).mean()


def o_focal_tversky(x, y, alpha=0.7, gamma=0.75, smooth=1.0, per_sample=False):
    return ((1 - o_ti(x, y, alpha, smooth, per_sample)) ** gamma).mean()


def o_logcosh_dice(x, y, smooth=1.0, per_sample=False):
    s_py, s_p, s_y = region_sums(x, y, per_sample)
    l_dice = 1 - (2 * s_py + smooth) / (s_p + s_y + smooth)
    return torch.log((torch.exp(l_dice) + torch.exp(-l_dice)) / 2).mean()


def o_ce(x, y):
    return (softplus(x) - x * y).mean()


def o_weighted_ce(x, y, w_bg=0.1, w_fg=0.9):
    wl = w_fg * y * softplus(-x) + w_bg * (1 - y) * softplus(x)
    w = w_fg * y + w_bg * (1 - y)
    return wl.sum() / w.sum()


def o_focal(x, y, alpha=0.25, gamma=2.0):
    mod = sig(-x * (2 * y - 1)) ** gamma
    a_t = 1.0 if alpha is None else alpha * y + (1 - alpha) * (1 - y)
    return (a_t * mod * (softplus(x) - x * y)).mean()


def o_focal_pt(x, y, alpha=0.25, gamma=2.0):
    """Lin et al.'s p_t form, valid for hard labels only."""
    p = sig(x)
    p_t = torch.where(y == 1, p, 1 - p)
    a_t = alpha * y + (1 - alpha) * (1 - y)
    return (-a_t * (1 - p_t) ** gamma * torch.log(p_t)).mean()


def o_mce(x, y, beta):
    return (beta * y * softplus(-x) + (1 - beta) * (1 - y) * softplus(x)).mean()


def o_dice_ce(x, y, lambda_dice=1.0, lambda_ce=1.0, smooth=1.0, per_sample=False):
    return lambda_dice * o_dice(x, y, smooth, per_sample) + lambda_ce * o_ce(x, y)


def o_focal_dice(x, y, lambda_dice=1.0, lambda_focal=1.0, alpha=0.25, gamma=2.0, smooth=1.0,
                 per_sample=False):
    return (lambda_dice * o_dice(x, y, smooth, per_sample)
            + lambda_focal * o_focal(x, y, alpha, gamma))


def o_combo(x, y, beta=0.5, gamma=0.5, smooth=1.0, per_sample=False):
    return gamma * o_mce(x, y, beta) + (1 - gamma) * o_dice(x, y, smooth, per_sample)


def o_hytver(x, y, alpha=0.7, beta=0.7, gamma=0.5, smooth=1.0, per_sample=False):
    return gamma * o_mce(x, y, beta) + (1 - gamma) * o_tversky(x, y, alpha, smooth, per_sample)


def two_class(x, y):
    """Clamped probabilities and labels stacked as [bg, fg] on a new axis 1: (B, 2, N)."""
    p = sig(x).clamp(EPS, 1 - EPS).reshape(x.shape[0], -1)
    y = y.reshape(y.shape[0], -1)
    return torch.stack([1 - p, p], 1), torch.stack([1 - y, y], 1)


def o_mti(P, Y, delta):
    tp = (Y * P).sum(-1)
    fn = (Y * (1 - P)).sum(-1)
    fp = ((1 - Y) * P).sum(-1)
    return (tp + EPS) / (tp + delta * fn + (1 - delta) * fp + EPS)  # (B, 2)


def o_focal_terms(P, Y, delta, gamma, fg_focal):
    bg = (1 - delta) * (1 - P[:, 0]) ** gamma * (-Y[:, 0] * torch.log(P[:, 0]))
    fg_mod = (1 - P[:, 1]) ** gamma if fg_focal else 1.0
    fg = delta * fg_mod * (-Y[:, 1] * torch.log(P[:, 1]))
    return (bg + fg).mean()


def o_symmetric_unified_focal(x, y, weight=0.5, delta=0.6, gamma=0.5):
    P, Y = two_class(x, y)
    l_ft = ((1 - o_mti(P, Y, delta)) ** (1 - gamma)).mean()
    return weight * l_ft + (1 - weight) * o_focal_terms(P, Y, delta, gamma, fg_focal=True)


def o_asymmetric_unified_focal(x, y, weight=0.5, delta=0.6, gamma=0.5):
    P, Y = two_class(x, y)
    mti = o_mti(P, Y, delta)
    l_ft = ((1 - mti[:, 0]) + (1 - mti[:, 1]) ** (1 - gamma)).mean() / 2
    return weight * l_ft + (1 - weight) * o_focal_terms(P, Y, delta, gamma, fg_focal=False)


def o_dice_pp(x, y, gamma=2.0):
    P, Y = two_class(x, y)
    tp = (Y * P).sum(-1)
    fn = ((Y * (1 - P)) ** gamma).sum(-1)
    fp = (((1 - Y) * P) ** gamma).sum(-1)
    return (1 - (2 * tp + EPS) / (2 * tp + fn + fp + EPS)).mean()


ORACLES = {
    "dice": o_dice, "tversky": o_tversky, "focal_tversky": o_focal_tversky,
    "logcosh_dice": o_logcosh_dice, "ce": o_ce, "weighted_ce": o_weighted_ce, "focal": o_focal,
    "dice_ce": o_dice_ce, "focal_dice": o_focal_dice, "combo": o_combo, "hytver": o_hytver,
    "symmetric_unified_focal": o_symmetric_unified_focal,
    "asymmetric_unified_focal": o_asymmetric_unified_focal, "dice_pp": o_dice_pp,
}
# Non-default hyperparameters chosen so that a swapped or ignored parameter changes the value.
NON_DEFAULT = {
    "dice": dict(smooth=0.5), "tversky": dict(alpha=0.2, smooth=2.0),
    "focal_tversky": dict(alpha=0.85, gamma=1.6, smooth=0.3), "logcosh_dice": dict(smooth=0.1),
    "ce": {}, "weighted_ce": dict(w_bg=0.35, w_fg=2.0), "focal": dict(alpha=0.8, gamma=1.3),
    "dice_ce": dict(lambda_dice=0.3, lambda_ce=1.7, smooth=0.2),
    "focal_dice": dict(lambda_dice=0.6, lambda_focal=1.4, alpha=0.65, gamma=0.7, smooth=2.0),
    "combo": dict(beta=0.8, gamma=0.3, smooth=0.4),
    "hytver": dict(alpha=0.8, beta=0.3, gamma=0.4, smooth=0.25),
    "symmetric_unified_focal": dict(weight=0.3, delta=0.75, gamma=0.2),
    "asymmetric_unified_focal": dict(weight=0.7, delta=0.35, gamma=0.8),
    "dice_pp": dict(gamma=2.5),
}
SCOPED = {"dice", "tversky", "focal_tversky", "logcosh_dice", "dice_ce", "focal_dice", "combo",
          "hytver"}


def channel_mean(oracle, x, y, **kwargs):
    """The loss of C channels: the mean over channels of the single-channel loss."""
    c = x.shape[1]
    return sum(oracle(x[:, i:i + 1], y[:, i:i + 1], **kwargs) for i in range(c)) / c


def make_inputs(batch, dims, soft, seed=0, channels=1):
    g = torch.Generator().manual_seed(seed)
    spatial = (5, 6) if dims == 2 else (4, 5, 3)
    shape = (batch, channels, *spatial)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2.5)
    if soft:
        y = torch.rand(shape, generator=g, dtype=torch.float64)
    else:
        y = (torch.rand(shape, generator=g, dtype=torch.float64) < 0.3).double()
    return x, y


def check_against_oracle(name, kwargs, x, y, backend="reference"):
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    got = get_loss(name, backend=backend, **kwargs)(x1, y)
    want = channel_mean(ORACLES[name], x2, y, **kwargs)
    assert got.dim() == 0 and got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=RTOL, atol=0)
    got.backward()
    want.backward()
    scale = x2.grad.abs().max()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=RTOL, atol=RTOL * float(scale))


CASES = [
    (name, defaults, dims, soft, batch, per_sample)
    for name in ORACLES
    for defaults, dims, soft, batch in itertools.product((True, False), (2, 3), (False, True),
                                                          (1, 3))
    for per_sample in ((False, True) if name in SCOPED else (False,))
]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,defaults,dims,soft,batch,per_sample", CASES)
def test_matches_spec(name, defaults, dims, soft, batch, per_sample, backend, channels):
    kwargs = {} if defaults else dict(NON_DEFAULT[name])
    if per_sample:
        kwargs["per_sample"] = True
    seed = zlib.crc32(f"{name}{dims}{soft}{batch}{channels}".encode())
    x, y = make_inputs(batch, dims, soft, seed=seed, channels=channels)
    check_against_oracle(name, kwargs, x, y, backend)


@needs_ext
@pytest.mark.parametrize("name", sorted(ORACLES))
def test_fused_op_matches_spec_without_the_fallbacks(name):
    """The raw op, called directly (hard labels, float64, C = 3, per_sample where it exists):
    value and gradient against the oracle, so that no reference fallback can hide in the
    comparison above."""
    x, y = make_inputs(2, 3, soft=False, seed=7, channels=3)
    kwargs = dict(NON_DEFAULT[name])
    if name in SCOPED:
        kwargs["per_sample"] = True
    loss = get_loss(name, **kwargs)
    x1 = x.clone().requires_grad_()
    got = ops.loss(x1, y, name, loss.fused_params(), kwargs.get("per_sample", False))
    x2 = x.clone().requires_grad_()
    want = channel_mean(ORACLES[name], x2, y, **kwargs)
    torch.testing.assert_close(got, want, rtol=RTOL, atol=0)
    got.backward()
    want.backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=RTOL,
                               atol=RTOL * float(x2.grad.abs().max()))


def test_registry_is_the_spec():
    assert sorted(LOSSES) == sorted(ORACLES)


@pytest.mark.parametrize("kwargs", [dict(), dict(alpha=0.6, gamma=0.5)])
def test_focal_hard_labels_equal_lin_pt_form(kwargs):
    x, y = make_inputs(3, 3, soft=False)
    got = get_loss("focal", backend="reference", **kwargs)(x, y)
    torch.testing.assert_close(got, o_focal_pt(x, y, **kwargs), rtol=RTOL, atol=0)


def test_combo_is_hytver_with_alpha_half():
    # TI(0.5) = (2TP + 2s) / (2TP + FN + FP + 2s): Dice with smoothing 2s.
    x, y = make_inputs(3, 3, soft=True)
    combo = get_loss("combo", beta=0.7, gamma=0.4, smooth=1.0, backend="reference")(x, y)
    hytver = get_loss("hytver", alpha=0.5, beta=0.7, gamma=0.4, smooth=0.5,
                      backend="reference")(x, y)
    torch.testing.assert_close(combo, hytver, rtol=1e-14, atol=0)


def test_mce_with_half_beta_is_half_bce():
    x, y = make_inputs(2, 3, soft=True)
    hyt = get_loss("hytver", beta=0.5, gamma=1.0, backend="reference")(x, y)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(x, y)
    torch.testing.assert_close(hyt, 0.5 * bce, rtol=1e-13, atol=0)


def test_weighted_ce_equals_torch_weighted_cross_entropy():
    x, y = make_inputs(3, 3, soft=False)
    got = get_loss("weighted_ce", w_bg=0.1, w_fg=0.9, backend="reference")(x, y)
    two = torch.cat([torch.zeros_like(x), x], 1)  # softmax([0, x])[1] = sigmoid(x)
    want = torch.nn.functional.cross_entropy(two, y[:, 0].long(),
                                             weight=torch.tensor([0.1, 0.9], dtype=torch.float64))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
