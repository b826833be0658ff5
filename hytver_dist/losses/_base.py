"""Base classes: input handling and backend choice, shared by every loss."""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ._inputs import as_float_pair, check_backend, is_hard, prepare_inputs
from ._scalar import ScalarLoss, scalar_path
from ._sums import RegionSums, fused_target, reference_sums, sums_from_stats, use_fused


class SigmoidLoss(nn.Module):
    """A binary segmentation loss on sigmoid logits.

    ``forward(logits, target)``: logits ``(B, 1, *spatial)`` float; target the same shape (or
    without the channel axis), float in [0, 1], uint8 or bool. Returns a 0-dim tensor.
    ``backend``: "auto" (fused kernels when built and the input qualifies), "fused" (error if
    the extension is missing) or "reference" (plain PyTorch).
    """

    def __init__(self, backend: str = "auto") -> None:
        super().__init__()
        self.backend = check_backend(backend)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = prepare_inputs(logits, target)
        return self._loss(logits, target)

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        names = [n for n in self.hyperparameters() if n != "backend"]
        return ", ".join(f"{n}={getattr(self, n)}" for n in names)

    @classmethod
    def hyperparameters(cls) -> tuple[str, ...]:
        """Keyword names accepted by the constructor (used by get_loss's validation)."""
        import inspect

        return tuple(p for p in inspect.signature(cls.__init__).parameters if p != "self")


class SumLoss(SigmoidLoss):
    """A loss that is a scalar function of the per-group sums TP, FP, FN and the CE sums."""

    uses_region = True
    uses_ce = False
    per_sample = False

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if use_fused(self.backend, logits):
            stats = ops.stats(logits, fused_target(target, logits))
            if scalar_path(stats):
                return ScalarLoss.apply(stats, self.scalar, logits.numel())
            return self.from_sums(sums_from_stats(stats, self.per_sample, logits.numel()))
        sums = reference_sums(logits, target, self.per_sample, region=self.uses_region,
                              ce=self.uses_ce)
        return self.from_sums(sums)

    def from_sums(self, s: RegionSums) -> torch.Tensor:
        """The loss from the sums as tensor ops (reference backend, CUDA, torch.compile)."""
        raise NotImplementedError

    def scalar(self, rows: list[list[float]], grad: list[list[float]], n_voxels: int,
               tiny: float) -> float:
        """The same loss on Python floats from the (B, 5) sums' rows, adding its gradient into
        ``grad`` (the fused CPU path; see ``_scalar``)."""
        raise NotImplementedError


class ExponentLoss(SigmoidLoss):
    """A loss with per-voxel exponents: fused through ``ops.exp_stats`` for hard labels,
    reference PyTorch for soft labels (no error: the sums only exist for hard labels)."""

    clamp_eps = 0.0  # p clamped to [eps, 1 - eps] before use (0: no clamp, logs from logits)
    uses_logs = True  # False: from_exp_stats reads none of C1, C0, F1, F0 (kernels skip them)

    def voxel_gamma(self) -> float:
        """The per-voxel exponent the fused sums need."""
        raise NotImplementedError

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if use_fused(self.backend, logits) and is_hard(target):
            stats = ops.exp_stats(logits, fused_target(target, logits), self.voxel_gamma(),
                                  self.clamp_eps, logs=self.uses_logs)
            if scalar_path(stats):
                return ScalarLoss.apply(stats, self.scalar, logits.numel())
            return self.from_exp_stats(stats, logits.numel())
        return self.reference(*as_float_pair(logits, target))

    def reference(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def from_exp_stats(self, stats: torch.Tensor, n_voxels: int) -> torch.Tensor:
        """The loss from the (B, 9) sums as tensor ops (CUDA, torch.compile)."""
        raise NotImplementedError

    def scalar(self, rows: list[list[float]], grad: list[list[float]], n_voxels: int,
               tiny: float) -> float:
        """The same on Python floats from the sums' rows (the fused CPU path; see ``_scalar``)."""
        raise NotImplementedError
