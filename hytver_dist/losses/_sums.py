"""The per-group sums that most losses are scalar functions of, from either backend.

Reference: plain PyTorch ops on the logits (autograd does the backward).
Fused: ``hytver_dist.ops`` (one C++/CUDA reduction pass, one elementwise gradient pass).
Both give the same :class:`RegionSums`, so each loss writes its tensor algebra once; the fused
CPU path evaluates the same algebra on Python floats instead (``_scalar``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import ops
from ._inputs import as_float_pair

# Column order of ops.stats / ops.exp_stats (see hytver_dist/ops.py).
TP, FP, FN, C1, C0, EQ, EP, F1, F0 = range(9)


@dataclass
class RegionSums:
    """Sums per reduction group (shape (G,): G = B per-sample, 1 global) and CE sums over all
    voxels (0-dim). ``n_voxels`` counts every voxel of the batch (the CE mean's divisor)."""

    tp: torch.Tensor | None
    fp: torch.Tensor | None
    fn: torch.Tensor | None
    c1: torch.Tensor | None  # sum y * softplus(-x)
    c0: torch.Tensor | None  # sum (1 - y) * softplus(x)
    n_voxels: int


# Device types with a compiled kernel, fixed at import (a frozenset lookup is traceable by
# torch.compile).
FUSED_DEVICE_TYPES = frozenset(d for d in ("cpu", "cuda") if ops.supports(d))


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
    if target.dtype in (torch.bool, torch.uint8, torch.float32, torch.float64):
        return target
    if target.is_floating_point():
        return target.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
    return target.to(torch.uint8)  # other integer types, values already checked in [0, 1]


def _group(t: torch.Tensor, per_sample: bool) -> torch.Tensor:
    return t if per_sample else t.sum(0, keepdim=True)


def reference_sums(logits: torch.Tensor, target: torch.Tensor, per_sample: bool,
                   region: bool = True, ce: bool = True) -> RegionSums:
    """The sums with plain PyTorch ops, computing only what is asked for."""
    x, y = as_float_pair(logits, target)
    dims = tuple(range(1, x.dim()))
    tp = fp = fn = c1 = c0 = None
    if region:
        p = torch.sigmoid(x)
        py = p * y
        tp = _group(py.sum(dims), per_sample)
        fp = _group((p - py).sum(dims), per_sample)
        fn = _group((y - py).sum(dims), per_sample)
    if ce:
        sp = F.softplus(x)  # softplus(-x) = softplus(x) - x: one transcendental per voxel
        c0 = ((1 - y) * sp).sum()
        c1 = (y * (sp - x)).sum()
    return RegionSums(tp, fp, fn, c1, c0, x.numel())


def sums_from_stats(stats: torch.Tensor, per_sample: bool, n_voxels: int) -> RegionSums:
    """RegionSums from a (B, >=5) stats tensor in the column order of ``ops``."""
    grouped = _group(stats[:, :5], per_sample)
    ce = stats[:, C1:C0 + 1].sum(0)
    return RegionSums(grouped[:, TP], grouped[:, FP], grouped[:, FN], ce[0], ce[1], n_voxels)
