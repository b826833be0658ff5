"""The softmax (several classes) form of every loss, against an oracle written from the spec.

docs/losses.md, "Several classes (softmax)": p_c = softmax over the channels, targets a label
map or one-hot / soft, region terms per class averaged over the included classes, voxel terms
categorical (class 0 the background). The oracle below is a separate transcription (flattened
voxels, explicit per-class loops); both backends are checked against it in float64, values and
gradients to 1e-10 relative, and against MONAI / torch where they compute the same thing.
CUDA tests are marked ``cuda`` and run only where a GPU is visible.
"""

from __future__ import annotations

import math

import monai.losses as monai
import pytest
import torch
import torch.nn.functional as F
from loss_helpers import (
    BACKENDS,
    assert_device_assert,
    capture_loss_step,
    cuda_ready,
    needs_ext,
    step_kernels,
)

from hytver_dist.losses import LOSSES, get_loss

cuda = pytest.mark.cuda
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
EPS = 1e-7

# Non-default hyperparameters (a swapped pair changes the value).
KWARGS = {
    "dice": {"smooth": 0.5}, "tversky": {"alpha": 0.8, "smooth": 0.3},
    "focal_tversky": {"alpha": 0.35, "gamma": 1.6, "smooth": 0.2},
    "logcosh_dice": {"smooth": 0.7}, "ce": {}, "weighted_ce": {"w_bg": 0.3, "w_fg": 1.7},
    "focal": {"alpha": 0.8, "gamma": 1.5},
    "dice_ce": {"lambda_dice": 0.6, "lambda_ce": 1.4, "smooth": 0.4},
    "focal_dice": {"lambda_dice": 0.7, "lambda_focal": 1.3, "alpha": 0.3, "gamma": 2.5,
                   "smooth": 0.8},
    "combo": {"beta": 0.8, "gamma": 0.3, "smooth": 0.6},
    "hytver": {"alpha": 0.75, "beta": 0.35, "gamma": 0.4, "smooth": 0.9},
    "symmetric_unified_focal": {"weight": 0.3, "delta": 0.75, "gamma": 0.2},
    "asymmetric_unified_focal": {"weight": 0.7, "delta": 0.35, "gamma": 0.8},
    "dice_pp": {"gamma": 2.5},
}
SCOPED = [n for n in LOSSES if "per_sample" in LOSSES[n].hyperparameters()]
HARD = [n for n in LOSSES if LOSSES[n].needs_hard_labels]


# ------------------------------------------------------------------------------------------
# the oracle


def oracle(name, kw, x, y, per_sample=False, include_background=True):
    """The spec's softmax loss on logits x and a one-hot / soft target y, both (B, C, ...)."""
    b, c = x.shape[:2]
    x = x.reshape(b, c, -1)
    y = y.reshape(b, c, -1)
    logp = x - torch.logsumexp(x, 1, keepdim=True)
    p = logp.exp()
    first = 0 if include_background else 1
    voxels = b * x.shape[-1]

    def per_class(pc, index):
        """The mean over groups and included classes of index(tp, fp, fn)."""
        tp, fp, fn = (pc * y).sum(-1), (pc * (1 - y)).sum(-1), ((1 - pc) * y).sum(-1)
        if not per_sample:
            tp, fp, fn = tp.sum(0, keepdim=True), fp.sum(0, keepdim=True), fn.sum(0, keepdim=True)
        values = [index(tp[:, k], fp[:, k], fn[:, k]) for k in range(first, c)]
        return torch.stack(values, 1).mean()

    def voxel(term):
        """sum over voxels and classes of y_c * term(c, q = p_c), over B * voxels."""
        return sum((y[:, k] * term(k)).sum() for k in range(c)) / voxels

    def fg_bg(k, fg, bg):
        return fg if k >= 1 else bg

    def dice(s):
        return per_class(p, lambda tp, fp, fn: 1 - (2 * tp + s) / (2 * tp + fp + fn + s))

    def tversky(a, s):
        return per_class(p, lambda tp, fp, fn: 1 - (tp + s) / (tp + a * fn + (1 - a) * fp + s))

    def mce(beta):
        return voxel(lambda k: -fg_bg(k, beta, 1 - beta) * logp[:, k])

    def focal(alpha, gamma):
        def term(k):
            w = 1.0 if alpha is None else fg_bg(k, alpha, 1 - alpha)
            return -w * (1 - p[:, k]) ** gamma * logp[:, k]
        return voxel(term)

    if name == "dice":
        return dice(kw["smooth"])
    if name == "tversky":
        return tversky(kw["alpha"], kw["smooth"])
    if name == "focal_tversky":
        a, s, g = kw["alpha"], kw["smooth"], kw["gamma"]
        return per_class(p, lambda tp, fp, fn: (1 - (tp + s) / (tp + a * fn + (1 - a) * fp + s))
                         ** g)
    if name == "logcosh_dice":
        s = kw["smooth"]
        return per_class(p, lambda tp, fp, fn: torch.log(torch.cosh(
            1 - (2 * tp + s) / (2 * tp + fp + fn + s))))
    if name == "ce":
        return mce(0.5) * 2
    if name == "weighted_ce":
        w = [kw["w_bg"]] + [kw["w_fg"]] * (c - 1)
        num = sum((w[k] * y[:, k] * -logp[:, k]).sum() for k in range(c))
        return num / sum((w[k] * y[:, k]).sum() for k in range(c))
    if name == "focal":
        return focal(kw["alpha"], kw["gamma"])
    if name == "dice_ce":
        return kw["lambda_dice"] * dice(kw["smooth"]) + kw["lambda_ce"] * mce(0.5) * 2
    if name == "focal_dice":
        return (kw["lambda_dice"] * dice(kw["smooth"])
                + kw["lambda_focal"] * focal(kw["alpha"], kw["gamma"]))
    if name == "combo":
        return kw["gamma"] * mce(kw["beta"]) + (1 - kw["gamma"]) * dice(kw["smooth"])
    if name == "hytver":
        return kw["gamma"] * mce(kw["beta"]) + (1 - kw["gamma"]) * tversky(kw["alpha"],
                                                                           kw["smooth"])
    pc = p.clamp(EPS, 1 - EPS)
    tp = (y * pc).sum(-1)  # (B, C): these three are per sample and class
    if name == "dice_pp":
        g = kw["gamma"]
        fn = ((y * (1 - pc)) ** g).sum(-1)
        fp = (((1 - y) * pc) ** g).sum(-1)
        dsc = (2 * tp + EPS) / (2 * tp + fn + fp + EPS)
        return (1 - dsc[:, first:]).mean()
    delta, gamma, weight = kw["delta"], kw["gamma"], kw["weight"]
    fn, fp = (y * (1 - pc)).sum(-1), ((1 - y) * pc).sum(-1)
    mti = (tp + EPS) / (tp + delta * fn + (1 - delta) * fp + EPS)
    symmetric = name == "symmetric_unified_focal"
    terms = [(1 - mti[:, k]) ** (1 - gamma) if symmetric or k >= 1 else 1 - mti[:, k]
             for k in range(first, c)]
    region = torch.stack(terms, 1).mean()

    def uf_term(k):
        modulated = symmetric or k == 0
        factor = (1 - pc[:, k]) ** gamma if modulated else 1.0
        return -fg_bg(k, delta, 1 - delta) * factor * torch.log(pc[:, k])

    return weight * region + (1 - weight) * voxel(uf_term)


# ------------------------------------------------------------------------------------------
# inputs


def logits(shape, seed=0, device="cpu", scale=2.5):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(device)


def labels(shape, seed=0, device="cpu", dtype=torch.int64):
    g = torch.Generator().manual_seed(seed + 100)
    return torch.randint(0, shape[1], (shape[0], 1, *shape[2:]), generator=g).to(dtype).to(device)


def one_hot(lab, classes):
    return F.one_hot(lab[:, 0].long(), classes).movedim(-1, 1).to(torch.float64)


def soft(shape, seed=0):
    g = torch.Generator().manual_seed(seed + 200)
    return torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64) * 2, 1)


def value_and_grad(loss, x, y):
    xg = x.detach().clone().requires_grad_(True)
    value = loss(xg, y)
    value.backward()
    return value.detach(), xg.grad


def assert_close(got, want, rel=1e-10):
    (v, g), (wv, wg) = got, want
    torch.testing.assert_close(v, wv, rtol=rel, atol=0)
    torch.testing.assert_close(g, wg, rtol=rel, atol=rel * float(wg.abs().max()))


# ------------------------------------------------------------------------------------------
# the spec


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", ["labels", "one-hot", "soft"])
@pytest.mark.parametrize("classes,spatial", [(3, (5, 4, 3)), (4, (6, 5))])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_matches_the_spec_oracle(name, classes, spatial, form, backend):
    """Every loss, C = 3 and 4, label map / one-hot / soft targets (soft: the losses that take
    them), include_background both ways, per_sample both ways: value and gradient to 1e-10."""
    if form == "soft" and name in HARD:
        return
    shape = (2, classes, *spatial)
    x = logits(shape, seed=classes)
    lab = labels(shape, seed=classes)
    dense = {"labels": one_hot(lab, classes), "one-hot": one_hot(lab, classes),
             "soft": soft(shape)}[form]
    target = {"labels": lab, "one-hot": dense.to(torch.uint8), "soft": dense}[form]
    for per_sample in ([False, True] if name in SCOPED else [False]):
        scope = {"per_sample": True} if per_sample else {}
        for include_background in (True, False):
            loss = get_loss(name, backend=backend, activation="softmax",
                            include_background=include_background, **KWARGS[name], **scope)
            want = value_and_grad(
                lambda t, d, ib=include_background, ps=per_sample: oracle(
                    name, KWARGS[name], t, d, ps, ib), x, dense)
            assert_close(value_and_grad(loss, x, target), want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_two_classes_equal_the_sigmoid_form(name, backend):
    """C = 2: softmax on (x0, x1) with target y equals sigmoid on x1 - x0 with target y_1
    (include_background=False for the foreground-only region terms, True for the unified
    focals and DSC++); the logit gradients are g and -g."""
    x = logits((3, 2, 7, 6), seed=5)
    lab = labels((3, 2, 7, 6), seed=5)
    include_background = name in ("symmetric_unified_focal", "asymmetric_unified_focal",
                                  "dice_pp")
    for per_sample in ([False, True] if name in SCOPED else [False]):
        scope = {"per_sample": True} if per_sample else {}
        soft_max = get_loss(name, backend=backend, activation="softmax",
                            include_background=include_background, **KWARGS[name], **scope)
        sig = get_loss(name, backend=backend, **KWARGS[name], **scope)
        value, grad = value_and_grad(soft_max, x, lab)
        want, gsig = value_and_grad(sig, x[:, 1:] - x[:, :1], lab.double())
        torch.testing.assert_close(value, want, rtol=1e-10, atol=0)
        scale = 1e-10 * float(gsig.abs().max())
        torch.testing.assert_close(grad[:, 1:], gsig, rtol=1e-10, atol=scale)
        torch.testing.assert_close(grad[:, :1], -gsig, rtol=1e-10, atol=scale)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ce_is_torch_cross_entropy(backend):
    x = logits((2, 4, 6, 5, 3), seed=8)
    lab = labels((2, 4, 6, 5, 3), seed=8)
    loss = get_loss("ce", backend=backend, activation="softmax")
    torch.testing.assert_close(loss(x, lab), F.cross_entropy(x, lab[:, 0]), rtol=1e-12, atol=0)
    probs = soft(x.shape, seed=8)
    torch.testing.assert_close(loss(x, probs), F.cross_entropy(x, probs), rtol=1e-12, atol=0)
    w = get_loss("weighted_ce", backend=backend, activation="softmax", w_bg=0.2, w_fg=1.5)
    weight = torch.tensor([0.2, 1.5, 1.5, 1.5], dtype=torch.float64)
    torch.testing.assert_close(w(x, lab), F.cross_entropy(x, lab[:, 0], weight=weight),
                               rtol=1e-12, atol=0)


# ------------------------------------------------------------------------------------------
# MONAI


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("include_background", [True, False])
def test_dice_tversky_dice_ce_equal_monai(backend, per_sample, include_background):
    """DiceLoss, TverskyLoss(alpha=1-a, beta=a) and DiceCELoss with softmax=True,
    to_onehot_y=True, smooth_nr=smooth_dr=s, batch=not per_sample (DiceCE's CE term is the
    categorical CE on the label map)."""
    x = logits((2, 4, 6, 5, 4), seed=11)
    lab = labels((2, 4, 6, 5, 4), seed=11)
    flags = dict(softmax=True, to_onehot_y=True, include_background=include_background,
                 batch=not per_sample, smooth_nr=0.5, smooth_dr=0.5)
    ours = dict(backend=backend, activation="softmax", include_background=include_background,
                per_sample=per_sample, smooth=0.5)
    cases = [
        (monai.DiceLoss(**flags), get_loss("dice", **ours)),
        (monai.TverskyLoss(alpha=0.3, beta=0.7, **flags), get_loss("tversky", alpha=0.7, **ours)),
        (monai.DiceCELoss(lambda_dice=0.7, lambda_ce=1.3, **flags),
         get_loss("dice_ce", lambda_dice=0.7, lambda_ce=1.3, **ours)),
    ]
    for theirs, mine in cases:
        torch.testing.assert_close(mine(x, lab), theirs(x, lab), rtol=1e-10, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alpha", [None, 0.25])
def test_focal_is_c_times_monai(backend, alpha):
    """MONAI's FocalLoss(use_softmax=True) averages over B*C*voxels (its class weights are
    [1 - alpha, alpha, ...], as ours); ours sums the classes per voxel: C times MONAI's (MONAI
    computes in float32)."""
    x = logits((2, 3, 6, 5, 4), seed=12)
    lab = labels((2, 3, 6, 5, 4), seed=12)
    want = monai.FocalLoss(use_softmax=True, to_onehot_y=True, gamma=2.0, alpha=alpha)(x, lab)
    got = get_loss("focal", backend=backend, activation="softmax", alpha=alpha, gamma=2.0)(x, lab)
    torch.testing.assert_close(got, 3 * want.double(), rtol=1e-6, atol=0)


# ------------------------------------------------------------------------------------------
# inputs and errors


@pytest.mark.parametrize("backend", BACKENDS)
def test_target_forms_agree(backend):
    """A label map (B, 1, ...) of any integer dtype, (B, ...) without the channel axis, and the
    same one-hot as uint8 / bool / float give the same loss."""
    x = logits((2, 3, 5, 6), seed=14)
    lab = labels((2, 3, 5, 6), seed=14)
    loss = get_loss("hytver", backend=backend, activation="softmax")
    want = loss(x, lab)
    dense = one_hot(lab, 3)
    for target in (lab.to(torch.uint8), lab.to(torch.int16), lab.to(torch.int32), lab[:, 0],
                   dense, dense.bool(), dense.to(torch.uint8), dense.float()):
        torch.testing.assert_close(loss(x, target), want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["hytver", "dice_pp"])
def test_bad_inputs_raise_value_errors_naming_the_problem(backend, name):
    x = logits((2, 3, 4, 5), seed=15)
    lab = labels((2, 3, 4, 5), seed=15)
    loss = get_loss(name, backend=backend, activation="softmax")
    out_of_range = lab.clone()
    out_of_range[1, 0, 2, 3] = 3
    negative = lab.clone()
    negative[0, 0, 0, 0] = -1
    unnormalised = one_hot(lab, 3)
    unnormalised[1, :, 1, 1] = 1.0  # hard values, but three classes at one voxel
    cases = [
        (x, out_of_range, r"labels must lie in \[0, C\) = \[0, 3\)"),
        (x, negative, r"labels must lie in \[0, C\)"),
        (x, unnormalised, "must sum to 1"),
        (x[:, :1], lab, "C >= 2"),
        (x, lab[:, :, :3], "fits neither a label map"),
        (x, one_hot(lab, 3)[:, :2], "fits neither a label map"),
        (x, lab.double(), "label map must have an integer dtype"),
    ]
    for xi, yi, match in cases:
        with pytest.raises(ValueError, match=match):
            loss(xi, yi)
    soft_target = soft(x.shape)
    if name == "dice_pp":
        with pytest.raises(ValueError, match="needs hard labels"):
            loss(x, soft_target)
    else:
        assert math.isfinite(loss(x, soft_target).item())
    with pytest.raises(ValueError, match="activation must be one of"):
        get_loss(name, activation="relu")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["hytver", "dice_ce", "asymmetric_unified_focal"])
def test_half_logits_are_computed_in_float32(name, backend):
    x = logits((2, 3, 8, 7), seed=16)
    lab = labels((2, 3, 8, 7), seed=16)
    for dtype in (torch.bfloat16, torch.float16):
        xh = x.to(dtype)
        loss = get_loss(name, backend=backend, activation="softmax")
        value, grad = value_and_grad(loss, xh, lab)
        want, gwant = value_and_grad(loss, xh.double(), lab)
        assert value.dtype == torch.float32 and grad.dtype == dtype
        torch.testing.assert_close(value.double(), want, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(grad.double(), gwant, rtol=2e-2, atol=2e-3 * float(
            gwant.abs().max()))


@needs_ext
@pytest.mark.parametrize("name", ["hytver", "dice_pp", "weighted_ce"])
def test_fused_softmax_compiles_fullgraph(name):
    """torch.compile(fullgraph=True) traces the fused softmax op (a label map and one-hot),
    forward and backward, with the eager values."""
    torch._dynamo.reset()
    x = logits((2, 3, 6, 7, 5), seed=17).float()
    lab = labels((2, 3, 6, 7, 5), seed=17, dtype=torch.uint8)
    loss = get_loss(name, backend="fused", activation="softmax", include_background=False)
    compiled = torch.compile(loss, fullgraph=True)
    for target in (lab, one_hot(lab, 3).float()):
        value, grad = value_and_grad(compiled, x, target)
        want, gwant = value_and_grad(loss, x, target)
        torch.testing.assert_close(value, want, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(grad, gwant, rtol=1e-5, atol=1e-8)


@needs_ext
def test_fused_softmax_is_one_op_call(monkeypatch):
    """A label map goes to the op as it is (no one-hot tensor is made)."""
    calls = []
    real = torch.ops.hytver.loss
    monkeypatch.setattr(torch.ops.hytver, "loss",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    x = logits((2, 4, 5, 6), seed=18).float()
    lab = labels((2, 4, 5, 6), seed=18, dtype=torch.uint8)
    get_loss("dice_ce", activation="softmax")(x, lab)
    assert len(calls) == 1 and calls[0][1].shape == (2, 1, 5, 6) and calls[0][6] == "softmax"


# ------------------------------------------------------------------------------------------
# CUDA (run on a GPU machine)


@cuda
@requires_cuda
@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cuda_matches_the_oracle(name, dtype):
    cuda_ready()
    shape = (2, 4, 17, 19, 23)
    x = logits(shape, seed=21)
    lab = labels(shape, seed=21)
    rel = {torch.float32: 5e-5, torch.float64: 1e-10, torch.bfloat16: 2.0**-6}[dtype]
    for target, dense in ((lab.to(torch.uint8), one_hot(lab, 4)),
                          (one_hot(lab, 4).float(), one_hot(lab, 4))):
        for include_background in (True, False):
            loss = get_loss(name, backend="fused", activation="softmax",
                            include_background=include_background, **KWARGS[name])
            value, grad = value_and_grad(loss, x.to(dtype).cuda(), target.cuda())
            want, gwant = value_and_grad(
                lambda t, d, ib=include_background: oracle(name, KWARGS[name], t, d, False, ib),
                x.to(dtype).double(), dense)
            assert grad.dtype == dtype
            torch.testing.assert_close(value.double().cpu(), want, rtol=max(rel, 1e-6),
                                       atol=1e-7)
            torch.testing.assert_close(grad.double().cpu(), gwant, rtol=rel,
                                       atol=rel * float(gwant.abs().max()))


@cuda
@requires_cuda
@pytest.mark.parametrize("name", ["hytver", "dice_pp", "focal_dice", "weighted_ce"])
def test_cuda_step_no_sync_few_launches_graph_capture(name):
    """The softmax step on CUDA: no host synchronisation, <= 2 kernels forward and 1 backward
    (counted from the profiler's kernel events, CPU and CUDA activities), deterministic, and
    capturable in a CUDA graph (replayed on new data: the eager values)."""
    cuda_ready()
    shape = (2, 4, 24, 24, 16)
    x = logits(shape, seed=22).float().cuda()
    lab = labels(shape, seed=22, dtype=torch.uint8).cuda()
    loss = get_loss(name, backend="fused", activation="softmax", include_background=False)
    one = torch.ones((), device="cuda")

    def step(xi, yi):
        xg = xi.clone().requires_grad_(True)
        value = loss(xg, yi)
        value.backward(one)
        return value, xg.grad

    step(x, lab)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        first, second = step(x, lab), step(x, lab)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])

    fwd, bwd = step_kernels(loss, x, lab)
    assert 1 <= len(fwd) <= 2, fwd
    assert len(bwd) == 1, bwd

    static_x = x.clone().requires_grad_(True)
    static_y = lab.clone()
    graph, static_value, static_grad = capture_loss_step(loss, static_x, static_y)
    x2 = logits(shape, seed=23).float().cuda()
    y2 = labels(shape, seed=23, dtype=torch.uint8).cuda()
    with torch.no_grad():
        static_x.copy_(x2)
    static_y.copy_(y2)
    graph.replay()
    want, gwant = step(x2, y2)
    torch.testing.assert_close(static_value, want)
    torch.testing.assert_close(static_grad, gwant)


@cuda
@requires_cuda
@pytest.mark.parametrize("target,message", [
    ("labels(x.shape, dtype=torch.uint8).cuda().index_fill_(2, torch.tensor([1], "
     "device='cuda'), 7)", "labels must lie in [0, C)"),
    ("torch.full(x.shape, 0.5, device='cuda')", "must sum to 1"),
])
def test_cuda_invalid_target_is_a_device_assert_in_a_subprocess(target, message):
    """A bad target stops the kernel with a device-side assertion (cudaErrorAssert) whose
    message names the problem; run in a fresh interpreter (it poisons the CUDA context)."""
    cuda_ready()
    code = (
        "import sys; sys.path.insert(0, 'tests')\n"
        "import torch\n"
        "from test_losses_softmax import labels\n"
        "from hytver_dist.losses import get_loss\n"
        "x = torch.zeros(2, 3, 4, 64, device='cuda')\n"
        f"y = {target}\n"
        "value = get_loss('dice', backend='fused', activation='softmax')(x, y)"
    )
    assert_device_assert(code, message)
