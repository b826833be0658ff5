"""The base class of every loss: input handling, the backend choice, the fused call."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from .. import ops
from ._inputs import (
    as_float_pair,
    check_activation,
    check_backend,
    check_softmax_target_values,
    check_target_values,
    is_hard,
    one_hot,
    prepare_inputs,
    prepare_softmax_inputs,
)

# Device types with a compiled kernel, fixed at import (a frozenset lookup is traceable by
# torch.compile).
FUSED_DEVICE_TYPES = frozenset(d for d in ("cpu", "cuda") if ops.supports(d))
_KERNEL_TARGETS = (torch.bool, torch.uint8, torch.float32, torch.float64)


class SegmentationLoss(nn.Module):
    """A segmentation loss on logits, sigmoid (independent channels) or softmax (classes).

    ``forward(logits, target)``: logits ``(B, C, *spatial)`` float.

    * ``activation="sigmoid"`` (default), C >= 1: each channel an independent binary problem;
      target the logits' shape (or, for C == 1, without the channel axis), float in [0, 1],
      uint8 or bool. The loss is the mean over channels of each channel's loss (region terms
      per channel, voxel means over all B*C voxels).
    * ``activation="softmax"``, C >= 2 classes: target a label map (integer, ``(B, 1,
      *spatial)`` or ``(B, *spatial)``) or one-hot / soft ``(B, C, *spatial)``. Region terms
      per class, averaged over the included classes (class 0 only with
      ``include_background=True``); voxel terms categorical. See ``docs/losses.md``.

    Returns a 0-dim tensor. Two forms: :meth:`reference`, a pure-PyTorch per-voxel
    transcription of the formula, and one call of the fused op ``hytver::loss`` (kind = the
    registry name, :meth:`fused_params`). ``backend``: "auto" (fused when the extension has a
    kernel for the device and the input qualifies; the reference inside torch.func
    transforms), "fused" (error if the extension is missing) or "reference".

    Each subclass declares what the fused kernels need to know about it, in one place:
    :attr:`kind`, :attr:`fused_param_names` and :attr:`needs_hard_labels` (a test checks them
    against the kernels' table of loss kinds).
    """

    #: The registry name (the fused op's loss kind).
    kind = ""
    #: The hyperparameters the fused op takes, in its order (attribute names of the instance;
    #: :meth:`fused_params` reads them).
    fused_param_names: tuple[str, ...] = ()
    #: True for the exponent losses (per-voxel powers), whose fused sums exist for hard labels
    #: only (soft labels use the reference under sigmoid and are refused under softmax).
    needs_hard_labels = False
    per_sample = False

    def __init__(self, backend: str = "auto", activation: str = "sigmoid",
                 include_background: bool = True) -> None:
        super().__init__()
        self.backend = check_backend(backend)
        self.activation = check_activation(activation)
        self.include_background = bool(include_background)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.activation == "softmax":
            return self._forward_softmax(logits, target)
        logits, target = prepare_inputs(logits, target, check_values=False)
        if self._fused_applies(logits, target):
            # The op checks the target's values in its own pass (CPU: ValueError; GPU: on the
            # device, without a host synchronisation).
            return ops.loss(logits, fused_target(target, logits), self.kind, self.fused_params(),
                            self.per_sample)
        check_target_values(target)
        return self._reference(*as_float_pair(logits, target))

    def reference(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss in plain PyTorch ops, voxel by voxel (autograd gives the gradient)."""
        if self.activation == "softmax":
            return self._checked_softmax_reference(*prepare_softmax_inputs(logits, target))
        logits, target = prepare_inputs(logits, target)
        return self._reference(*as_float_pair(logits, target))

    def _reference(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _reference_softmax(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The softmax form on logits x and a one-hot / soft target y, both ``(B, C, ...)``
        in the compute dtype."""
        raise NotImplementedError

    def _forward_softmax(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target, labels = prepare_softmax_inputs(logits, target)
        if self._fused_applies(logits, target):
            y = target if labels else fused_target(target, logits)
            return ops.loss(logits, y, self.kind, self.fused_params(), self.per_sample,
                            "softmax", self.include_background)
        return self._checked_softmax_reference(logits, target, labels)

    def _checked_softmax_reference(self, logits: torch.Tensor, target: torch.Tensor,
                                   labels: bool) -> torch.Tensor:
        """The target's values checked, then :meth:`_reference_softmax` in the compute dtype
        on a one-hot (or the soft) target."""
        check_softmax_target_values(target, labels, logits.shape[1], self.needs_hard_labels)
        x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        y = one_hot(target, x.shape[1], x.dtype) if labels else target.to(x.dtype)
        return self._reference_softmax(x, y)

    def fused_params(self) -> list[float]:
        """The hyperparameters in the fused op's order (:attr:`fused_param_names`)."""
        return [float(getattr(self, n)) for n in self.fused_param_names]

    def _fused_applies(self, logits: torch.Tensor, target: torch.Tensor) -> bool:
        if not use_fused(self.backend, logits):
            return False
        if self.activation == "softmax":
            return True  # soft targets are refused either way: by the op as by the reference
        if not self.needs_hard_labels or not target.is_floating_point():
            return True  # integer labels are hard; values outside {0, 1} fail in the op
        if logits.device.type == "cpu" and not torch.compiler.is_compiling():
            # host memory: a cheap check; soft labels take the reference
            return is_hard(target)
        # A float target on a GPU or under torch.compile: checking it would synchronise or break
        # the graph. "auto" takes the reference (exact for any labels); "fused" the op, which
        # then requires hard labels (checked on the GPU).
        return self.backend == "fused"

    def extra_repr(self) -> str:
        names = [n for n in self.hyperparameters() if n != "backend"]
        if self.activation == "softmax":
            names += list(self.INPUT_OPTIONS)
        return ", ".join(f"{n}={getattr(self, n)}" for n in names)

    #: Constructor keywords that choose the input form rather than the formula's constants:
    #: accepted by every loss, not listed by :meth:`hyperparameters`.
    INPUT_OPTIONS = ("activation", "include_background")

    @classmethod
    def hyperparameters(cls) -> tuple[str, ...]:
        """The formula's keyword names and ``backend`` (a sweep's search space; the input form,
        :attr:`INPUT_OPTIONS`, is set apart)."""
        return tuple(p for p in inspect.signature(cls.__init__).parameters
                     if p != "self" and p not in cls.INPUT_OPTIONS)


#: The former name (every loss also takes ``activation="softmax"`` now).
SigmoidLoss = SegmentationLoss


def fused_supported(logits: torch.Tensor) -> bool:
    """True when the compiled extension has a kernel for this tensor's device."""
    return logits.device.type in FUSED_DEVICE_TYPES


def use_fused(backend: str, logits: torch.Tensor) -> bool:
    """Resolve ``backend`` ("auto" | "fused" | "reference") for this input. Inside torch.func
    transforms (which the fused ops do not support) "auto" means the reference."""
    if backend == "reference":
        return False
    supported = fused_supported(logits)
    if backend == "fused" and not supported:
        why = ("the C++ extension is not built (pip install --no-build-isolation -e .)"
               if not ops.is_available() else f"it has no kernel for {logits.device.type}")
        raise RuntimeError(f"backend='fused' requested but {why}")
    if ops.functorch_active():
        if backend == "fused":
            raise RuntimeError("backend='fused' does not work inside torch.func transforms "
                               "(grad, vmap, ...): use backend='auto' or 'reference' there")
        return False
    return supported


def fused_target(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Target in a dtype the kernels read: bool, uint8, float32 or float64."""
    if target.dtype in _KERNEL_TARGETS:
        return target
    if target.is_floating_point():
        return target.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
    # Other integer types: clamp first so that no out-of-range value wraps into {0, 1} (256 would
    # become 0); -1 and 2 still fail the op's own target check.
    return target.clamp(-1, 2).to(torch.uint8)
