"""The fused loss op (``torch.ops.hytver.loss``): its Python API and fake kernels.

The C++/CUDA extension ``hytver_dist._C`` registers the operators and their autograd; this
module adds the fake (meta) kernels that ``torch.compile`` and ``opcheck`` need, and
:func:`loss`, which picks the variant. It imports without the extension (``is_available()`` is
then False). Schemas, inputs and outputs: docs/kernels.md.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import NamedTuple

import torch

__all__ = [
    "LossKind",
    "loss",
    "loss_kinds",
    "is_available",
    "extension_error",
    "has_cuda",
    "supports",
    "cpu_isa",
    "supported_cpu_isas",
    "use_cpu_isa",
    "functorch_active",
]

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


_AVAILABLE = _EXT_ERROR is None and _has_op("loss")
_HAS_CUDA = _AVAILABLE and torch._C._dispatch_has_kernel_for_dispatch_key("hytver::loss", "CUDA")


class LossKind(NamedTuple):
    """A loss kind of the kernels' table (``csrc/kernels/hytver_loss_algebra.h``)."""

    params: int  # number of hyperparameters
    sums: int  # sums per (sample, channel) row: 5, or 9 for the exponent kinds
    hard: bool  # the kind needs hard labels


def _read_kinds() -> dict[str, LossKind]:
    if not _AVAILABLE:
        return {}
    names, params, sums, hard = torch.ops.hytver.loss_kinds()
    return {n: LossKind(p, s, bool(h)) for n, p, s, h in zip(names, params, sums, hard,
                                                            strict=True)}


_KINDS = _read_kinds()


def loss_kinds() -> dict[str, LossKind]:
    """The loss kinds the compiled kernels know, by registry name (empty without the
    extension). The loss classes carry the same facts (tests check that they agree)."""
    return dict(_KINDS)


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
    # plain module constants: safe to evaluate while torch.compile traces a loss
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
    there: their autograd kernel (``csrc/autograd.cpp``) has no functorch rules."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active()) if active is not None else False


# ------------------------------------------------------------------------------------------
# public API


def loss(logits: torch.Tensor, target: torch.Tensor, kind: str, params: list[float],
         per_sample: bool = False, activation: str = "sigmoid",
         include_background: bool = True) -> torch.Tensor:
    """The loss ``kind`` (a registry name) with hyperparameters ``params`` (in the order of the
    loss class's ``fused_param_names``) on logits ``(B, C, *spatial)``, as one fused op per
    direction (0-dim; float64 for float64 logits, else float32). Targets: see docs/kernels.md.
    The op checks shapes, dtypes and target values itself. Differentiable w.r.t.
    ``logits``; on the CPU in eager training (sigmoid) it uses the saving variant.
    """
    params = [float(v) for v in params]
    x, y = logits.contiguous(), target.contiguous()
    save = _save_for_backward(logits) and _saves(kind, logits.dtype, activation)
    return torch.ops.hytver.loss(x, y, kind, params, per_sample, save, activation,
                                 include_background)[0]


def _saves(kind: str, dtype: torch.dtype, activation: str) -> bool:
    """Whether the kernels have a saving variant for these logits. Sigmoid: float32, and for
    the kinds without per-voxel powers also bfloat16 / float16 (for the exponent kinds the
    backward then recomputes from the logits, writing into the saved buffer, so no gradient
    buffer is allocated either). Softmax: float32 logits and a kind without per-voxel powers
    (the saved p_c make the backward a pass without exp)."""
    info = _KINDS.get(kind)
    if info is None:
        return False
    if activation == "softmax":
        return dtype == torch.float32 and not info.hard
    return dtype == torch.float32 or (not info.hard and dtype != torch.float64)


# ------------------------------------------------------------------------------------------
# fake kernels


def _grad_fake(logits):
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


def _check_loss_shapes(logits, target, activation):
    torch._check(logits.dim() >= 2, lambda: "logits must have shape (B, C, *spatial)")
    if activation == "softmax":
        torch._check(target.shape[0] == logits.shape[0],
                     lambda: "target must have the logits' batch size")
        return
    torch._check(target.dim() == logits.dim(), lambda: "target must have the logits' shape")
    for a, b in zip(target.shape, logits.shape, strict=True):
        torch._check(a == b, lambda: "target must have the logits' shape")


def _register() -> None:
    @torch.library.register_fake("hytver::loss")
    def _loss_fake(logits, target, kind, params, per_sample=False, save=False,
                   activation="sigmoid", include_background=True):
        _check_loss_shapes(logits, target, activation)
        info = _KINDS.get(kind)
        torch._check(info is not None, lambda: f"unknown loss kind {kind!r}")
        torch._check(len(params) == info.params,
                     lambda: f"loss {kind!r} takes {info.params} hyperparameters")
        rows = logits.shape[0] * logits.shape[1]
        value = logits.new_empty((), dtype=torch.float64 if logits.dtype == torch.float64
                                 else torch.float32)
        coef = logits.new_empty((rows, info.sums), dtype=torch.float64)
        saved = logits.new_empty(logits.shape if save else (0,), dtype=torch.float32)
        return value, coef, saved

    @torch.library.register_fake("hytver::loss_backward")
    def _loss_backward_fake(grad, coef, logits, target, kind, params, activation="sigmoid"):
        _check_loss_shapes(logits, target, activation)
        torch._check(grad.numel() == 1, lambda: "grad must be the loss's 0-dim gradient")
        torch._check(coef.dim() == 2 and coef.shape[0] == logits.shape[0] * logits.shape[1],
                     lambda: "coef must be the forward's (B*C, K) coefficients")
        return _grad_fake(logits)

    @torch.library.register_fake("hytver::loss_backward_saved_")
    def _loss_backward_saved_fake(grad, coef, saved, logits, target, kind, params,
                                  activation="sigmoid"):
        _check_loss_shapes(logits, target, activation)
        torch._check(saved.shape == logits.shape, lambda: "saved must have the logits' shape")
        return None


if _AVAILABLE:
    _register()
