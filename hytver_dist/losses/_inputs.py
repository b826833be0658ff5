"""Argument and tensor validation shared by every loss (errors are ValueError naming it)."""

from __future__ import annotations

import math

import torch

BACKENDS = ("auto", "fused", "reference")


def check_range(name: str, value: float, low: float, high: float | None = None,
                low_open: bool = False) -> float:
    """Return ``value`` as float if ``low <=/< value <= high``, else raise ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    too_low = value <= low if low_open else value < low
    if math.isnan(value) or too_low or (high is not None and value > high):
        bracket = "(" if low_open else "["
        upper = f"{high}]" if high is not None else "inf)"
        raise ValueError(f"{name} must be in {bracket}{low}, {upper}, got {value}")
    return value


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _plain(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a plain torch.Tensor (MONAI's MetaTensor and other subclasses run their
    ``__torch_function__`` on every op; the view stays in the autograd graph)."""
    return t if type(t) is torch.Tensor else t.as_subclass(torch.Tensor)


def _plain_pair(logits: torch.Tensor, target: torch.Tensor,
                hint: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Both tensors as plain torch.Tensor, after the checks every activation shares: tensors,
    floating-point logits ``(B, C, *spatial)`` with a spatial axis, not empty."""
    if not isinstance(logits, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise ValueError("logits and target must be torch.Tensor objects, got "
                         f"{type(logits).__name__} and {type(target).__name__}")
    logits, target = _plain(logits), _plain(target)
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.dim() < 3:
        raise ValueError("logits must have shape (B, C, *spatial) with at least one spatial "
                         f"dimension, got {tuple(logits.shape)}" + (f" {hint}" if hint else ""))
    if logits.numel() == 0:
        raise ValueError(f"logits is empty (shape {tuple(logits.shape)})")
    return logits, target


def prepare_inputs(logits: torch.Tensor, target: torch.Tensor,
                   check_values: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``(logits, target)`` and return them as plain ``(B, C, *spatial)`` tensors.

    A target without the channel axis is accepted when C == 1. Dtypes are left as they are
    (the fused kernels read uint8/bool targets and half logits directly); :func:`as_float_pair`
    gives the reference path its working dtypes. ``check_values``: also
    :func:`check_target_values` (the fused op checks the values itself, in its own pass).
    """
    logits, target = _plain_pair(logits, target, "(for a 2-channel softmax head, use "
                                 "activation='softmax' or pass z1 - z0)")
    if target.is_complex():
        raise ValueError(f"target must be real, got dtype {target.dtype}")
    if target.dim() == logits.dim() - 1 and logits.shape[1] == 1:
        target = target.unsqueeze(1)
    if target.shape != logits.shape:
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits shape "
                         f"{tuple(logits.shape)} (accepted: the same, or without the channel "
                         "axis when there is one channel)")
    if target.device != logits.device:
        raise ValueError(f"target is on {target.device} but logits are on {logits.device}")
    if check_values:
        check_target_values(target)
    return logits, target


def check_target_values(target: torch.Tensor) -> None:
    """Target values in [0, 1]: a ValueError for CPU tensors (host memory, a cheap check; not
    while torch.compile traces), a device-side assertion elsewhere (no host synchronisation)."""
    if target.dtype == torch.bool:
        return
    if target.device.type != "cpu":
        ok = ((target >= 0) & (target <= 1)).all()
        torch._assert_async(ok, "target values must lie in [0, 1] (and not be NaN)")
    elif not torch.compiler.is_compiling():
        low, high = torch.stack(torch.aminmax(target.detach())).tolist()
        if not (low >= 0 and high <= 1):  # NaN fails both comparisons
            raise ValueError("target values must lie in [0, 1] (and not be NaN), found range "
                             f"[{low}, {high}]")


def as_float_pair(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Working dtypes of the reference path: fp16/bf16 logits upcast to float32 (losses are
    computed in fp32 even under AMP, since half-precision sigmoids saturate early), the target
    in the logits' dtype."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return logits, target.to(logits.dtype)


def is_hard(target: torch.Tensor) -> bool:
    """True when every target value is exactly 0 or 1 (bool/uint8 targets are hard by type).

    Under torch.compile a float target counts as soft: the check is data-dependent and would
    break the graph; the reference path computes the same loss.
    """
    if target.dtype in (torch.bool, torch.uint8):
        return True
    if torch.compiler.is_compiling():
        return False
    return bool(((target == 0) | (target == 1)).all())


ACTIVATIONS = ("sigmoid", "softmax")


def check_activation(activation: str) -> str:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return activation


def prepare_softmax_inputs(logits: torch.Tensor, target: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Validate softmax inputs: ``(logits, target, is_label_map)`` as plain tensors.

    logits ``(B, C, *spatial)`` float with C >= 2; target a label map (integer dtype,
    ``(B, 1, *spatial)`` or ``(B, *spatial)``, returned as ``(B, 1, *spatial)``) or one-hot /
    soft ``(B, C, *spatial)`` (float, uint8 or bool). Values are not checked here (see
    :func:`check_softmax_target_values`).
    """
    logits, target = _plain_pair(logits, target)
    if logits.shape[1] < 2:
        raise ValueError(f"activation='softmax' needs C >= 2 channels, got logits of shape "
                         f"{tuple(logits.shape)} (use activation='sigmoid' for one channel)")
    if target.device != logits.device:
        raise ValueError(f"target is on {target.device} but logits are on {logits.device}")
    b, spatial = logits.shape[0], tuple(logits.shape[2:])
    if target.shape == logits.shape:
        if target.is_complex() or not (target.is_floating_point() or target.dtype in (
                torch.uint8, torch.bool)):
            raise ValueError("a one-hot / soft target (B, C, *spatial) must be float, uint8 or "
                             f"bool, got {target.dtype}")
        return logits, target, False
    if target.dim() == logits.dim() - 1 and tuple(target.shape) == (b, *spatial):
        target = target.unsqueeze(1)
    if tuple(target.shape) != (b, 1, *spatial):
        raise ValueError(f"target shape {tuple(target.shape)} fits neither a label map "
                         f"(B, 1, *spatial) / (B, *spatial) nor a one-hot target (B, C, *spatial) "
                         f"for logits of shape {tuple(logits.shape)}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"a label map must have an integer dtype, got {target.dtype} (pass "
                         "one-hot / soft targets as (B, C, *spatial))")
    return logits, target, True


def check_softmax_target_values(target: torch.Tensor, labels: bool, classes: int,
                                hard: bool) -> None:
    """Softmax targets: labels in [0, C); one-hot / soft values in [0, 1] summing to 1 over the
    channels (float: within 1e-4), and in {0, 1} when ``hard``. ValueError naming the problem
    for CPU tensors (not while torch.compile traces); a device-side assertion elsewhere."""
    if target.device.type != "cpu":
        if labels:
            ok = ((target >= 0) & (target < classes)).all()
            torch._assert_async(ok, f"labels must lie in [0, {classes})")
        else:
            t = target.float()
            torch._assert_async(((t >= 0) & (t <= 1)).all(), "target values must lie in [0, 1]")
            torch._assert_async(((t.sum(1) - 1).abs() <= 1e-4).all(),
                                "target channels must sum to 1 at every voxel")
            if hard:
                torch._assert_async(((t == 0) | (t == 1)).all(),
                                    "this loss needs hard labels (one-hot in {0, 1})")
        return
    if torch.compiler.is_compiling():
        return
    target = target.detach()
    if labels:
        low, high = torch.stack(torch.aminmax(target.long())).tolist()
        if low < 0 or high >= classes:
            raise ValueError(f"labels must lie in [0, C) = [0, {classes}), found range "
                             f"[{low}, {high}]")
        return
    t = target.double()
    low, high = torch.stack(torch.aminmax(t)).tolist()
    if not (low >= 0 and high <= 1):
        raise ValueError("one-hot / soft target values must lie in [0, 1] (and not be NaN), "
                         f"found range [{low}, {high}]")
    if hard and not bool(((t == 0) | (t == 1)).all()):
        raise ValueError("this loss needs hard labels (a label map, or one-hot in {0, 1}); "
                         "found a soft target value strictly between 0 and 1")
    worst = float((t.sum(1) - 1).abs().max())
    if worst > 1e-4:
        raise ValueError("one-hot / soft target channels must sum to 1 at every voxel (within "
                         f"1e-4), found a voxel off by {worst:.3g}")


def one_hot(target: torch.Tensor, classes: int, dtype: torch.dtype) -> torch.Tensor:
    """A label map ``(B, 1, *spatial)`` as one-hot ``(B, C, *spatial)`` in ``dtype`` (the
    reference path only; the fused op reads the labels directly)."""
    return torch.nn.functional.one_hot(target[:, 0].long(), classes).movedim(-1, 1).to(dtype)
