"""Fused loss ops (``torch.ops.hytver.*``) and their pure-PyTorch references.

The C++/CUDA extension ``hytver_dist._C`` registers these custom operators (schemas in
``csrc/ops.cpp``)::

    hytver::loss(Tensor logits, Tensor target, str kind, float[] params, bool per_sample=False,
                 bool save=False) -> (Tensor loss, Tensor coef, Tensor saved)
    hytver::loss_backward(Tensor grad, Tensor coef, Tensor logits, Tensor target, str kind,
                          float[] params) -> Tensor
    hytver::loss_backward_saved_(Tensor grad, Tensor coef, Tensor(a!) saved, Tensor logits,
                                 Tensor target, str kind, float[] params) -> ()      # CPU only
    hytver::stats(Tensor logits, Tensor target) -> Tensor                       # (B, 5)
    hytver::stats_backward(Tensor grad_stats, Tensor logits, Tensor target) -> Tensor
    hytver::exp_stats(Tensor logits, Tensor target, float gamma, float eps) -> Tensor  # (B, 9)
    hytver::exp_stats_backward(Tensor grad, Tensor logits, Tensor target, float gamma,
                               float eps) -> Tensor

``loss`` is a whole loss of the registry (``kind`` = its name, ``params`` = its hyperparameters
in the order of :data:`LOSS_PARAMS`) on logits ``(B, C, *spatial)`` and a target of the same
shape, in one call per direction: the forward reduces the per-(sample, channel) sums and
evaluates the loss and its gradient w.r.t. the sums (``coef``, float64 ``(B*C, K)``) on the
device (on a GPU: two kernel launches, no host synchronisation); the backward is one elementwise
pass. ``save=True`` (CPU) also returns one float32 per voxel, m = x >= 0 ? -q : p, from which
``loss_backward_saved_`` gets the gradient without exp or division, writing it over m (so a
training step allocates no gradient buffer). :func:`loss` picks the variant.

``stats`` / ``exp_stats`` are the per-sample sums alone (the kernels' building block).

This module adds their fake (meta) kernels and autograd formulas, so that they work under
``torch.compile(fullgraph=True)`` and ``torch.library.opcheck``, and the Python API below. It
imports cleanly without the extension (``is_available()`` is then False and :func:`stats` /
:func:`exp_stats` use the references).

With p = sigmoid(x), q = 1 - p, softplus(t) = log(1 + exp(t)), per sample b (sums over the
sample's elements, accumulated in float64, returned as float32, or float64 for float64 logits):

``stats``: [TP, FP, FN, C1, C0] = [sum p*y, sum p*(1-y), sum q*y, sum y*softplus(-x),
sum (1-y)*softplus(x)] (linear in y: soft labels are fine).

``exp_stats`` (hard labels, y in {0, 1}): with p~ = clamp(p, eps, 1-eps) (p~ = p when eps == 0),
q~ = 1 - p~, lp = log p~, lq = log q~ (= -softplus(-x), -softplus(x) when eps == 0):
[TP, FP, FN, C1, C0, Eq, Ep, F1, F0] = [sum y*p~, sum (1-y)*p~, sum y*q~, -sum y*lp,
-sum (1-y)*lq, sum y*q~^gamma, sum (1-y)*p~^gamma, sum y*q~^gamma*(-lp),
sum (1-y)*p~^gamma*(-lq)]. Powers are exp(gamma*log): q~^0 == 1. The gradient through the clamp
follows torch.clamp (zero where p is outside [eps, 1-eps]). The kernels compute q and the logs
from the logits (no 1 - p cancellation); for float32 inputs the clamp bounds are float32(eps)
and float32(1 - eps), as in a float32 torch.clamp. The exponent losses (:data:`EXP_KINDS`) use
these sums, so their fused op is defined for hard labels only (on a GPU the op checks that on
the device).

Gradients flow to the logits only (the target gets none). Logits: float32, float64, bfloat16 or
float16; target: float32, float64, uint8 or bool. Non-finite logits give NaN, as the composite
does.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F

__all__ = [
    "LOSS_PARAMS",
    "EXP_KINDS",
    "loss",
    "STATS_FIELDS",
    "EXP_STATS_FIELDS",
    "is_available",
    "extension_error",
    "has_cuda",
    "supports",
    "cpu_isa",
    "supported_cpu_isas",
    "use_cpu_isa",
    "stats",
    "exp_stats",
    "reference_stats",
    "reference_exp_stats",
]

#: Column names of :func:`stats` and :func:`exp_stats`.
STATS_FIELDS = ("TP", "FP", "FN", "C1", "C0")
EXP_STATS_FIELDS = ("TP", "FP", "FN", "C1", "C0", "Eq", "Ep", "F1", "F0")

#: Hyperparameters of each loss kind of :func:`loss`, in the order the op takes them (focal
#: alpha None is passed as -1).
LOSS_PARAMS: dict[str, tuple[str, ...]] = {
    "dice": ("smooth",),
    "tversky": ("alpha", "smooth"),
    "focal_tversky": ("alpha", "gamma", "smooth"),
    "logcosh_dice": ("smooth",),
    "ce": (),
    "weighted_ce": ("w_bg", "w_fg"),
    "focal": ("alpha", "gamma"),
    "dice_ce": ("lambda_dice", "lambda_ce", "smooth"),
    "focal_dice": ("lambda_dice", "lambda_focal", "alpha", "gamma", "smooth"),
    "combo": ("beta", "gamma", "smooth"),
    "hytver": ("alpha", "beta", "gamma", "smooth"),
    "symmetric_unified_focal": ("weight", "delta", "gamma"),
    "asymmetric_unified_focal": ("weight", "delta", "gamma"),
    "dice_pp": ("gamma",),
}
#: Kinds whose sums are the exp_stats columns (per-voxel powers; hard labels).
EXP_KINDS = frozenset(
    {"focal", "focal_dice", "symmetric_unified_focal", "asymmetric_unified_focal", "dice_pp"})

_LOGIT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_TARGET_DTYPES = (torch.float32, torch.float64, torch.uint8, torch.bool)
_ISA_ENV = "HYTVER_CPU_ISA"

_EXT_ERROR: BaseException | None = None
try:
    from hytver_dist import _C  # noqa: F401  (loading the library registers torch.ops.hytver)
except (ImportError, OSError) as exc:  # not built, or built against another torch
    _EXT_ERROR = exc


def _has_op(name: str) -> bool:
    try:
        getattr(torch.ops.hytver, name)
    except (AttributeError, RuntimeError):
        return False
    return True


_AVAILABLE = _EXT_ERROR is None and _has_op("stats")
_HAS_CUDA = _AVAILABLE and torch._C._dispatch_has_kernel_for_dispatch_key("hytver::stats", "CUDA")


def is_available() -> bool:
    """True when the compiled extension is loaded (``torch.ops.hytver.*`` exist)."""
    return _AVAILABLE


def extension_error() -> BaseException | None:
    """Why the extension could not be imported (None when it was)."""
    return _EXT_ERROR


def has_cuda() -> bool:
    """True when the extension was built with its CUDA kernels."""
    return _HAS_CUDA


def supports(device: torch.device | str) -> bool:
    """True when the fused ops have a kernel for tensors on ``device``."""
    return _supports_type(torch.device(device).type)


def _supports_type(kind: str) -> bool:
    # plain module constants: safe to evaluate while torch.compile traces stats()/exp_stats()
    if kind == "cpu":
        return _AVAILABLE
    if kind == "cuda":
        return _HAS_CUDA
    return False


def cpu_isa() -> str:
    """The CPU kernel path the next call will use: ``base``, ``avx2`` or ``avx512``.

    It is the best one this CPU supports unless the environment variable ``HYTVER_CPU_ISA``
    (read at every call) names another (``auto``, ``base``, ``avx2``, ``avx512``).
    """
    _require_ext()
    return torch.ops.hytver.cpu_isa()


def supported_cpu_isas() -> list[str]:
    """The CPU kernel paths this machine can run (always includes ``base``)."""
    _require_ext()
    return list(torch.ops.hytver.supported_cpu_isas())


@contextlib.contextmanager
def use_cpu_isa(name: str) -> Iterator[None]:
    """Force the CPU kernel path inside a ``with`` block (sets ``HYTVER_CPU_ISA``)."""
    old = os.environ.get(_ISA_ENV)
    os.environ[_ISA_ENV] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(_ISA_ENV, None)
        else:
            os.environ[_ISA_ENV] = old


def _require_ext() -> None:
    if not _AVAILABLE:
        raise RuntimeError(
            "hytver_dist._C is not built; run `pip install --no-build-isolation -e .` "
            f"(import error: {_EXT_ERROR!r})"
        )


# ------------------------------------------------------------------------------------------
# input checks (ValueError naming the problem), shared by the fused and reference paths


def _check_inputs(logits: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if not isinstance(logits, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise ValueError(f"{name}: logits and target must be tensors")
    if logits.dtype not in _LOGIT_DTYPES:
        raise ValueError(
            f"{name}: logits must be float32, float64, bfloat16 or float16, got {logits.dtype}"
        )
    if target.dtype not in _TARGET_DTYPES:
        raise ValueError(
            f"{name}: target must be float32, float64, uint8 or bool, got {target.dtype}"
        )
    if logits.dim() < 1:
        raise ValueError(f"{name}: logits need a batch dimension (B, ...), got a 0-dim tensor")
    if logits.device != target.device:
        raise ValueError(
            f"{name}: logits and target must be on the same device, got {logits.device} "
            f"and {target.device}"
        )
    if target.dim() < 1 or target.shape[0] != logits.shape[0] or target.numel() != logits.numel():
        raise ValueError(
            f"{name}: target shape {tuple(target.shape)} does not match logits shape "
            f"{tuple(logits.shape)} (need the same batch size and the same number of elements "
            "per sample)"
        )


def _check_hyper(gamma: float, eps: float, name: str) -> None:
    if not (math.isfinite(gamma) and gamma >= 0.0):
        raise ValueError(f"{name}: gamma must be finite and >= 0, got {gamma}")
    if not (0.0 <= eps < 0.5):
        raise ValueError(f"{name}: eps must be in [0, 0.5), got {eps}")


def _sums_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _save_for_backward(logits: torch.Tensor) -> bool:
    """Use the saving variant of the loss op (``save=True``): when a backward will follow, the
    forward keeps 4 bytes per voxel so that the backward is a memory pass instead of a second
    round of exp and division, and writes the gradient over them. CPU only (a GPU recomputes
    faster than it reads), and not for float64 logits (gradcheck: the plain op recomputes in
    float64), nor under torch.compile (the in-place backward would be functionalised into a
    copy)."""
    return (
        logits.device.type == "cpu"
        and logits.dtype != torch.float64
        and logits.requires_grad
        and torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
    )


def functorch_active() -> bool:
    """True inside a torch.func transform (grad, vmap, jacrev, ...). The fused ops do not work
    there: the autograd.Function behind ``register_autograd`` has no functorch rules."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active()) if active is not None else False


# ------------------------------------------------------------------------------------------
# public API


def loss(logits: torch.Tensor, target: torch.Tensor, kind: str, params: list[float],
         per_sample: bool = False) -> torch.Tensor:
    """The loss ``kind`` (a registry name) with hyperparameters ``params`` (order:
    :data:`LOSS_PARAMS`) on logits ``(B, C, *spatial)`` and a target of the same shape, as one
    fused op per direction (0-dim; float64 for float64 logits, else float32).

    The op checks in its own pass that the target's values lie in [0, 1], and for
    :data:`EXP_KINDS` that they are 0 or 1 (CPU: ValueError; GPU: on the device); callers route
    soft labels of the exponent kinds elsewhere (the loss classes use their reference form). Shapes
    and dtypes are checked by the op too. Differentiable w.r.t.
    ``logits``. On the CPU in eager training it uses the saving variant (see the module
    docstring) when that pays.
    """
    params = [float(v) for v in params]
    x, y = logits.contiguous(), target.contiguous()
    if _save_for_backward(logits) and _saves(kind, params, logits.dtype):
        return _TrainingLoss.apply(x, y, kind, params, per_sample)
    return torch.ops.hytver.loss(x, y, kind, params, per_sample)[0]


def _saves(kind: str, params: list[float], dtype: torch.dtype) -> bool:
    """Whether the saving variant pays: its backward then runs from the saved values. The exp
    sums' backward can do that only for gamma == 2 without log terms (DSC++); other exponent
    kinds would recompute anyway, so saving would only cost 4 bytes per voxel."""
    if kind in EXP_KINDS:
        return kind == "dice_pp" and params[0] == 2.0 and dtype == torch.float32
    return dtype != torch.float64


def stats(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample sums ``(B, 5)``: [TP, FP, FN, C1, C0] (see the module docstring).

    Differentiable w.r.t. ``logits``. Uses the fused kernel when :func:`supports` the device,
    else :func:`reference_stats`.
    """
    _check_inputs(logits, target, "stats")
    if _supports_type(logits.device.type):
        return torch.ops.hytver.stats(logits.contiguous(), target.contiguous())
    return reference_stats(logits, target)


def exp_stats(
    logits: torch.Tensor, target: torch.Tensor, gamma: float, eps: float = 0.0
) -> torch.Tensor:
    """Per-sample sums ``(B, 9)``: [TP, FP, FN, C1, C0, Eq, Ep, F1, F0] for HARD labels (the
    kernels take q^gamma where y = 1 and p^gamma where y = 0: soft labels give meaningless sums).
    See the module docstring. Differentiable w.r.t. ``logits``. Uses the fused kernel when
    :func:`supports` the device, else :func:`reference_exp_stats`.
    """
    _check_inputs(logits, target, "exp_stats")
    gamma = float(gamma)
    eps = float(eps)
    _check_hyper(gamma, eps, "exp_stats")
    if _supports_type(logits.device.type):
        return torch.ops.hytver.exp_stats(logits.contiguous(), target.contiguous(), gamma, eps)
    return reference_exp_stats(logits, target, gamma, eps)


# ------------------------------------------------------------------------------------------
# pure-PyTorch references (autograd-capable; tests and fallback)


def _flatten(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = _sums_dtype(logits.dtype)
    b = logits.shape[0]
    x = logits.reshape(b, -1).to(dtype)
    y = target.reshape(b, -1).to(dtype)
    return x, y


def reference_stats(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pure-PyTorch :func:`stats` (same sums, same output dtype; computed in float32, or
    float64 for float64 logits)."""
    _check_inputs(logits, target, "reference_stats")
    x, y = _flatten(logits, target)
    p = torch.sigmoid(x)
    q = torch.sigmoid(-x)
    ny = 1.0 - y
    sums = [
        (p * y).sum(1),
        (p * ny).sum(1),
        (q * y).sum(1),
        (y * -F.logsigmoid(x)).sum(1),  # y * softplus(-x)
        (ny * -F.logsigmoid(-x)).sum(1),  # (1 - y) * softplus(x)
    ]
    return torch.stack(sums, dim=1)


def reference_exp_stats(
    logits: torch.Tensor, target: torch.Tensor, gamma: float, eps: float = 0.0
) -> torch.Tensor:
    """Pure-PyTorch :func:`exp_stats` (same sums and clamp semantics)."""
    _check_inputs(logits, target, "reference_exp_stats")
    gamma = float(gamma)
    eps = float(eps)
    _check_hyper(gamma, eps, "reference_exp_stats")
    x, y = _flatten(logits, target)
    p = torch.sigmoid(x)
    q = torch.sigmoid(-x)
    nlp = -F.logsigmoid(x)  # -log p, exact from the logits
    nlq = -F.logsigmoid(-x)  # -log q
    if eps > 0.0:
        # clamp(p, eps, 1 - eps) with q~ = 1 - p~ and the logs taken from the logits inside the
        # interval; outside it the values are constants (no gradient, as torch.clamp).
        plo = p < eps
        qlo = q < eps
        pt = torch.where(plo, eps, torch.where(qlo, 1.0 - eps, p))
        qt = torch.where(qlo, eps, torch.where(plo, 1.0 - eps, q))
        nlpt = torch.where(plo, -math.log(eps), torch.where(qlo, -math.log1p(-eps), nlp))
        nlqt = torch.where(qlo, -math.log(eps), torch.where(plo, -math.log1p(-eps), nlq))
    else:
        pt, qt, nlpt, nlqt = p, q, nlp, nlq
    qg = torch.exp(-gamma * nlqt)  # q~^gamma
    pg = torch.exp(-gamma * nlpt)  # p~^gamma
    ny = 1.0 - y
    sums = [
        (y * pt).sum(1),
        (ny * pt).sum(1),
        (y * qt).sum(1),
        (y * nlpt).sum(1),
        (ny * nlqt).sum(1),
        (y * qg).sum(1),
        (ny * pg).sum(1),
        (y * qg * nlpt).sum(1),
        (ny * pg * nlqt).sum(1),
    ]
    return torch.stack(sums, dim=1)


# ------------------------------------------------------------------------------------------
# fake kernels and autograd of the registered ops


def _sums_fake(logits, k):
    torch._check(logits.dim() >= 1, lambda: "logits need a batch dimension (B, ...)")
    return logits.new_empty((logits.shape[0], k), dtype=_sums_dtype(logits.dtype))


def _grad_fake(logits):
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


def _check_loss_shapes(logits, target):
    torch._check(logits.dim() >= 2, lambda: "logits must have shape (B, C, *spatial)")
    torch._check(target.dim() == logits.dim(), lambda: "target must have the logits' shape")
    for a, b in zip(target.shape, logits.shape, strict=True):
        torch._check(a == b, lambda: "target must have the logits' shape")


def _register() -> None:
    @torch.library.register_fake("hytver::stats")
    def _stats_fake(logits, target):
        return _sums_fake(logits, len(STATS_FIELDS))

    @torch.library.register_fake("hytver::stats_backward")
    def _stats_backward_fake(grad_stats, logits, target):
        return _grad_fake(logits)

    @torch.library.register_fake("hytver::exp_stats")
    def _exp_stats_fake(logits, target, gamma, eps):
        return _sums_fake(logits, len(EXP_STATS_FIELDS))

    @torch.library.register_fake("hytver::exp_stats_backward")
    def _exp_stats_backward_fake(grad, logits, target, gamma, eps):
        return _grad_fake(logits)

    @torch.library.register_fake("hytver::loss")
    def _loss_fake(logits, target, kind, params, per_sample=False, save=False):
        _check_loss_shapes(logits, target)
        torch._check(len(params) == len(LOSS_PARAMS.get(kind, ())),
                     lambda: f"loss {kind!r} takes {LOSS_PARAMS.get(kind)} hyperparameters")
        rows = logits.shape[0] * logits.shape[1]
        k = len(EXP_STATS_FIELDS) if kind in EXP_KINDS else len(STATS_FIELDS)
        value = logits.new_empty((), dtype=_sums_dtype(logits.dtype))
        coef = logits.new_empty((rows, k), dtype=torch.float64)
        saved = logits.new_empty(logits.shape if save else (0,), dtype=torch.float32)
        return value, coef, saved

    @torch.library.register_fake("hytver::loss_backward")
    def _loss_backward_fake(grad, coef, logits, target, kind, params):
        _check_loss_shapes(logits, target)
        torch._check(grad.numel() == 1, lambda: "grad must be the loss's 0-dim gradient")
        torch._check(coef.dim() == 2 and coef.shape[0] == logits.shape[0] * logits.shape[1],
                     lambda: "coef must be the forward's (B*C, K) coefficients")
        return _grad_fake(logits)

    @torch.library.register_fake("hytver::loss_backward_saved_")
    def _loss_backward_saved_fake(grad, coef, saved, logits, target, kind, params):
        _check_loss_shapes(logits, target)
        torch._check(saved.shape == logits.shape, lambda: "saved must have the logits' shape")
        return None

    def _stats_setup(ctx, inputs, output):
        logits, target = inputs[:2]
        ctx.save_for_backward(logits, target)
        ctx.hyper = tuple(inputs[2:])  # (gamma, eps) of exp_stats, () for stats

    def _stats_backward(ctx, grad):
        logits, target = ctx.saved_tensors
        grad_logits = None
        if ctx.needs_input_grad[0]:
            if ctx.hyper:
                grad_logits = torch.ops.hytver.exp_stats_backward(grad, logits, target,
                                                                  *ctx.hyper)
            else:
                grad_logits = torch.ops.hytver.stats_backward(grad, logits, target)
        return (grad_logits,) + (None,) * (1 + len(ctx.hyper))

    # The loss op as registered (torch.compile, CUDA, direct callers). With save=True the saved
    # values are an output the caller may keep, so the backward writes into a copy of them; the
    # eager CPU training path keeps them private instead (_TrainingLoss).
    def _loss_setup(ctx, inputs, output):
        logits, target, kind, params = inputs[:4]
        ctx.save_for_backward(logits, target, output[1], output[2])
        ctx.kind, ctx.params = kind, params
        ctx.n_inputs = len(inputs)
        ctx.mark_non_differentiable(output[1], output[2])
        ctx.set_materialize_grads(False)

    def _loss_backward(ctx, grad, _grad_coef, _grad_saved):
        logits, target, coef, saved = ctx.saved_tensors
        grad_logits = None
        if grad is not None and ctx.needs_input_grad[0]:
            if saved.numel() > 0:
                grad_logits = _grad_into_saved(grad, coef, saved.clone(), logits, target,
                                               ctx.kind, ctx.params)
            else:
                grad_logits = torch.ops.hytver.loss_backward(grad, coef, logits, target,
                                                             ctx.kind, ctx.params)
        return (grad_logits,) + (None,) * (ctx.n_inputs - 1)

    for name in ("hytver::stats", "hytver::exp_stats"):
        torch.library.register_autograd(name, _stats_backward, setup_context=_stats_setup)
    torch.library.register_autograd("hytver::loss", _loss_backward, setup_context=_loss_setup)


def _grad_into_saved(grad: torch.Tensor, coef: torch.Tensor, saved: torch.Tensor,
                     logits: torch.Tensor, target: torch.Tensor, kind: str,
                     params: list[float]) -> torch.Tensor:
    """The logit gradient, written over ``saved`` (the saving forward's values)."""
    torch.ops.hytver.loss_backward_saved_(grad, coef, saved, logits, target, kind, params)
    return saved.to(logits.dtype)  # no copy for float32 logits


class _TrainingLoss(torch.autograd.Function):
    """The eager CPU training path of :func:`loss`: the saving forward's per-voxel values stay
    private to this node, so its first backward turns them into the gradient in place (no
    gradient buffer to allocate: with two large buffers alive per step, glibc hands the memory
    back to the kernel and every step faults it in again). A second backward of the same graph
    (retain_graph=True) finds them consumed and recomputes from the logits."""

    @staticmethod
    def forward(ctx, logits, target, kind, params, per_sample):
        value, coef, saved = torch.ops.hytver.loss(logits, target, kind, params, per_sample, True)
        ctx.save_for_backward(logits, target, coef)
        ctx.kind, ctx.params = kind, params
        ctx.saved_values = saved
        return value

    @staticmethod
    def backward(ctx, grad):
        logits, target, coef = ctx.saved_tensors
        saved, ctx.saved_values = ctx.saved_values, None
        if saved is not None:
            grad_logits = _grad_into_saved(grad, coef, saved, logits, target, ctx.kind,
                                           ctx.params)
        else:
            grad_logits = torch.ops.hytver.loss_backward(grad, coef, logits, target, ctx.kind,
                                                         ctx.params)
        return grad_logits, None, None, None, None


if _AVAILABLE:
    _register()
