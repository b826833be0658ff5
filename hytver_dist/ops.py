"""Fused per-sample loss sums (``torch.ops.hytver.*``) and their pure-PyTorch references.

The C++/CUDA extension ``hytver_dist._C`` registers these custom operators (schemas in
``csrc/ops.cpp``)::

    hytver::stats(Tensor logits, Tensor target) -> Tensor                       # (B, 5)
    hytver::stats_backward(Tensor grad_stats, Tensor logits, Tensor target) -> Tensor
    hytver::exp_stats(Tensor logits, Tensor target, float gamma, float eps) -> Tensor  # (B, 9)
    hytver::exp_stats_backward(Tensor grad, Tensor logits, Tensor target, float gamma,
                               float eps) -> Tensor
    hytver::stats_save(Tensor logits, Tensor target) -> (Tensor, Tensor)        # CPU only
    hytver::stats_backward_saved_(Tensor grad_stats, Tensor(a!) saved, Tensor logits,
                                  Tensor target) -> ()
    hytver::exp_stats_save(Tensor logits, Tensor target, float gamma, float eps,
                           bool logs=True) -> (Tensor, Tensor)                 # CPU only
    hytver::exp_stats_backward_saved_(Tensor grad, Tensor(a!) saved, Tensor logits,
                                      Tensor target, float gamma, float eps) -> ()

The ``*_save`` ops are the CPU training path: besides the sums they return one float32 per voxel
(the logits' shape; m = x >= 0 ? -q : p) from which the ``*_saved_`` backwards get the gradient
without exp or division, writing it over m (so a training step allocates no gradient buffer).

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
and float32(1 - eps), as in a float32 torch.clamp.

Gradients flow to the logits only (the target gets none). Logits: float32, float64, bfloat16 or
float16, shape (B, ...); target: float32, float64, uint8 or bool with the same batch size and
number of elements (any shape). Non-finite logits give NaN sums, as the composite does.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F

__all__ = [
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
    """Use the ``*_save`` ops: when a backward will follow, the forward keeps 4 bytes per voxel
    so that the backward is a memory pass instead of a second round of exp and division, and
    writes the gradient over them. CPU only (a GPU recomputes faster than it reads), and not for
    float64 logits (gradcheck: the plain ops recompute in float64), nor under torch.compile
    (the in-place backward would be functionalised into a copy)."""
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


def stats(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample sums ``(B, 5)``: [TP, FP, FN, C1, C0] (see the module docstring).

    Differentiable w.r.t. ``logits``. Uses the fused kernel when :func:`supports` the device,
    else :func:`reference_stats`.
    """
    _check_inputs(logits, target, "stats")
    if _supports_type(logits.device.type):
        if _save_for_backward(logits):
            return _TrainingSums.apply(logits.contiguous(), target.contiguous(), ())
        return torch.ops.hytver.stats(logits.contiguous(), target.contiguous())
    return reference_stats(logits, target)


def exp_stats(
    logits: torch.Tensor, target: torch.Tensor, gamma: float, eps: float = 0.0,
    logs: bool = True,
) -> torch.Tensor:
    """Per-sample sums ``(B, 9)``: [TP, FP, FN, C1, C0, Eq, Ep, F1, F0] for HARD labels (the kernels
    take q^gamma where y = 1 and p^gamma where y = 0: soft labels give meaningless sums).

    ``logs=False``: the caller uses none of the log columns C1, C0, F1, F0 (DSC++): they come
    back as 0 (constants: no gradient flows through them). With gamma == 2 the CPU training path
    then skips their per-voxel log series in the forward and needs only the saved p / q in the
    backward.
    See the module docstring. Differentiable w.r.t. ``logits``. Uses the fused kernel when
    :func:`supports` the device, else :func:`reference_exp_stats`.
    """
    _check_inputs(logits, target, "exp_stats")
    gamma = float(gamma)
    eps = float(eps)
    _check_hyper(gamma, eps, "exp_stats")
    if _supports_type(logits.device.type):
        x, y = logits.contiguous(), target.contiguous()
        # Saving pays only when the backward can run from the saved values (no logs needed);
        # else the forward's extra 8 MB per 2M voxels is wasted.
        if not logs and gamma == 2.0 and logits.dtype == torch.float32 and _save_for_backward(
                logits):
            return _TrainingSums.apply(x, y, (gamma, eps), False)
        sums = torch.ops.hytver.exp_stats(x, y, gamma, eps)
    else:
        sums = reference_exp_stats(logits, target, gamma, eps)
    return sums if logs else _without_logs(sums)


def _without_logs(t: torch.Tensor) -> torch.Tensor:
    """``t`` (B, 9) with the log columns C1, C0, F1, F0 of exp_stats zeroed (logs=False). The
    mask is made here, not kept as a module constant, so that fake-tensor tracing accepts it."""
    mask = torch.tensor([1.0, 1, 1, 0, 0, 1, 1, 0, 0], dtype=t.dtype, device=t.device)
    return t * mask


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


def _register() -> None:
    @torch.library.register_fake("hytver::stats")
    def _stats_fake(logits, target):
        return logits.new_empty(
            (logits.shape[0], len(STATS_FIELDS)), dtype=_sums_dtype(logits.dtype)
        )

    @torch.library.register_fake("hytver::stats_backward")
    def _stats_backward_fake(grad_stats, logits, target):
        return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)

    @torch.library.register_fake("hytver::exp_stats")
    def _exp_stats_fake(logits, target, gamma, eps):
        return logits.new_empty(
            (logits.shape[0], len(EXP_STATS_FIELDS)), dtype=_sums_dtype(logits.dtype)
        )

    @torch.library.register_fake("hytver::exp_stats_backward")
    def _exp_stats_backward_fake(grad, logits, target, gamma, eps):
        return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)

    @torch.library.register_fake("hytver::stats_save")
    def _stats_save_fake(logits, target):
        return _stats_fake(logits, target), torch.empty_like(logits, dtype=torch.float32)

    @torch.library.register_fake("hytver::stats_backward_saved_")
    def _stats_backward_saved_fake(grad_stats, saved, logits, target):
        return None

    @torch.library.register_fake("hytver::exp_stats_save")
    def _exp_stats_save_fake(logits, target, gamma, eps, logs=True):
        sums = _exp_stats_fake(logits, target, gamma, eps)
        return sums, torch.empty_like(logits, dtype=torch.float32)

    @torch.library.register_fake("hytver::exp_stats_backward_saved_")
    def _exp_stats_backward_saved_fake(grad, saved, logits, target, gamma, eps):
        return None

    def _stats_setup(ctx, inputs, output):
        logits, target = inputs
        ctx.save_for_backward(logits, target)

    def _stats_backward(ctx, grad):
        logits, target = ctx.saved_tensors
        grad_logits = None
        if ctx.needs_input_grad[0]:
            grad_logits = torch.ops.hytver.stats_backward(grad, logits, target)
        return grad_logits, None

    def _exp_stats_setup(ctx, inputs, output):
        logits, target, gamma, eps = inputs
        ctx.save_for_backward(logits, target)
        ctx.gamma = gamma
        ctx.eps = eps

    def _exp_stats_backward(ctx, grad):
        logits, target = ctx.saved_tensors
        grad_logits = None
        if ctx.needs_input_grad[0]:
            grad_logits = torch.ops.hytver.exp_stats_backward(
                grad, logits, target, ctx.gamma, ctx.eps
            )
        return grad_logits, None, None, None

    # The saving variants as registered ops (opcheck, direct callers): the saved values are an
    # output the caller may keep, so the backward writes the gradient into a copy of them. The
    # training path of stats() / exp_stats() keeps them private instead (_TrainingSums).
    def _save_setup(ctx, inputs, output):
        logits, target = inputs[:2]
        ctx.save_for_backward(output[1], logits, target)
        ctx.hyper = tuple(inputs[2:4])  # (gamma, eps) of exp_stats_save, () for stats_save
        ctx.logs = inputs[4] if len(inputs) > 4 else True
        ctx.n_inputs = len(inputs)
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)  # no zero-filled gradient for the saved values

    def _saving_backward(ctx, grad, _grad_saved):
        saved, logits, target = ctx.saved_tensors
        grad_logits = None
        if grad is not None and ctx.needs_input_grad[0]:
            if not ctx.logs:  # the log columns are constant zeros
                grad = _without_logs(grad)
            grad_logits = _grad_into_saved(grad, saved.clone(), logits, target, ctx.hyper)
        return (grad_logits,) + (None,) * (ctx.n_inputs - 1)

    torch.library.register_autograd("hytver::stats", _stats_backward, setup_context=_stats_setup)
    for name in ("hytver::stats_save", "hytver::exp_stats_save"):
        torch.library.register_autograd(name, _saving_backward, setup_context=_save_setup)

    torch.library.register_autograd(
        "hytver::exp_stats", _exp_stats_backward, setup_context=_exp_stats_setup
    )


def _grad_into_saved(grad: torch.Tensor, saved: torch.Tensor, logits: torch.Tensor,
                     target: torch.Tensor, hyper: tuple) -> torch.Tensor:
    """The logit gradient, written over ``saved`` (the saving forward's values)."""
    if hyper:
        torch.ops.hytver.exp_stats_backward_saved_(grad, saved, logits, target, *hyper)
    else:
        torch.ops.hytver.stats_backward_saved_(grad, saved, logits, target)
    return saved.to(logits.dtype)  # no copy for float32 logits


class _TrainingSums(torch.autograd.Function):
    """The eager CPU training path of :func:`stats` / :func:`exp_stats`: the saving forward's
    per-voxel values stay private to this node, so its first backward turns them into the
    gradient in place (no gradient buffer to allocate: with two large buffers alive per step,
    glibc hands the memory back to the kernel and every step faults it in again). A second
    backward of the same graph (retain_graph=True) finds them consumed and recomputes from the
    logits."""

    @staticmethod
    def forward(ctx, logits, target, hyper, logs=True):
        if hyper:
            sums, saved = torch.ops.hytver.exp_stats_save(logits, target, *hyper, logs)
        else:
            sums, saved = torch.ops.hytver.stats_save(logits, target)
        ctx.save_for_backward(logits, target)
        ctx.hyper = hyper
        ctx.logs = logs
        ctx.saved_values = saved
        return sums

    @staticmethod
    def backward(ctx, grad):
        logits, target = ctx.saved_tensors
        saved, ctx.saved_values = ctx.saved_values, None
        if not ctx.logs:  # the log columns are constant zeros
            grad = _without_logs(grad)
        if saved is not None:
            grad_logits = _grad_into_saved(grad, saved, logits, target, ctx.hyper)
        elif ctx.hyper:
            grad_logits = torch.ops.hytver.exp_stats_backward(grad, logits, target, *ctx.hyper)
        else:
            grad_logits = torch.ops.hytver.stats_backward(grad, logits, target)
        return grad_logits, None, None, None


if _AVAILABLE:
    _register()
