"""Loss algebra on Python floats: the fused CPU path's value and gradient in one autograd node.

Every fused loss is a scalar function of the (B, K) sums of ``ops.stats`` / ``ops.exp_stats``.
As tensor ops (``from_sums`` / ``from_exp_stats``) that algebra is some 25 tiny ops and as many
autograd nodes, about 0.6 ms per training step on the 2-core development VM: an eighth to a
quarter of a whole fused step at 4x1x80^3. On the CPU the sums are already in host memory, so
:class:`ScalarLoss` evaluates the loss and its gradient w.r.t. the sums in float64 Python, in
one node. The tensor-op algebra stays for CUDA (where reading the sums would synchronise), under
torch.compile and for the reference backend; tests hold the two together.

A loss opts in with a ``scalar(rows, grad, n_voxels, tiny) -> float`` method built from the
terms below: ``rows`` is ``stats.tolist()``, ``grad`` a same-shaped list the terms add their
partial derivatives into, ``tiny`` the smallest normal number of the sums' dtype (the floor of
the focal powers, as their tensor form). Division by zero and overflow give inf / NaN as in
tensor arithmetic, never an exception.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ._sums import C0, C1, FN, FP, TP

Rows = list[list[float]]
# (1 - index) -> (value, derivative): the shape a region loss applies to each group's index.
Shape = Callable[[float], tuple[float, float]]


class ScalarLoss(torch.autograd.Function):
    """``fn(stats.tolist(), grad, n_voxels, tiny)`` as a 0-dim tensor of ``stats``' dtype; its
    backward hands the gradient ``fn`` wrote on to the sums (and so to the fused kernels)."""

    @staticmethod
    def forward(ctx, stats: torch.Tensor, fn, n_voxels: int) -> torch.Tensor:
        rows = stats.tolist()
        grad = [[0.0] * len(r) for r in rows]
        value = fn(rows, grad, n_voxels, torch.finfo(stats.dtype).tiny)
        ctx.grad = grad
        return stats.new_tensor(value)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return torch.tensor(ctx.grad, dtype=g.dtype) * g, None, None


def scalar_path(stats: torch.Tensor) -> bool:
    """True when :class:`ScalarLoss` should evaluate the loss: sums in host memory, eager mode."""
    return stats.device.type == "cpu" and not torch.compiler.is_compiling()


def div(a: float, b: float) -> float:
    """a / b with IEEE semantics (x/0 = +-inf, 0/0 = NaN), as tensor division gives."""
    try:
        return a / b
    except ZeroDivisionError:
        if a == 0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)


def linear(rows: Rows, grad: Rows, weights: dict[int, float]) -> float:
    """sum over rows of sum_k w_k * row[k] (the CE-type terms: C1, C0, F1, F0, ...)."""
    total = 0.0
    for row, g in zip(rows, grad, strict=True):
        for k, w in weights.items():
            total += w * row[k]
            g[k] += w
    return total


def _groups(n_rows: int, per_sample: bool) -> list[list[int]]:
    return [[b] for b in range(n_rows)] if per_sample else [list(range(n_rows))]


def ratio(t: float, fn: float, fp: float, a: float, b: float, s: float, k: float = 1.0
          ) -> tuple[float, float, float, float]:
    """I = (k*t + s) / (k*t + a*fn + b*fp + s) and its partials dI/dt, dI/dfn, dI/dfp."""
    num = k * t + s
    den = num + a * fn + b * fp
    den2 = den * den
    return (div(num, den), k * div(a * fn + b * fp, den2), -a * div(num, den2),
            -b * div(num, den2))


def identity(v: float) -> tuple[float, float]:
    return v, 1.0


def _pow(v: float, e: float) -> float:
    try:
        return v**e
    except OverflowError:  # tensors give inf
        return math.inf


def power(gamma: float, floor: float) -> Shape:
    """v -> max(v, floor)^gamma (floor keeps the derivative finite at v = 0; no gradient below
    it, as ``clamp_min``)."""

    def shape(v: float) -> tuple[float, float]:
        if v >= floor:
            return _pow(v, gamma), gamma * _pow(v, gamma - 1)
        if math.isnan(v):
            return v, v
        return _pow(floor, gamma), 0.0

    return shape


def log_cosh(v: float) -> tuple[float, float]:
    """log(cosh(v)) = |v| + log1p(exp(-2|v|)) - log 2, without overflow; derivative tanh(v)."""
    a = abs(v)
    return a + math.log1p(math.exp(-2 * a)) - math.log(2), math.tanh(v)


def _region(rows: Rows, grad: Rows, weight: float, per_sample: bool, a: float, b: float,
            smooth: float, k: float, shape: Shape) -> float:
    """weight * mean over groups of shape(1 - :func:`ratio` of the group's TP, FN, FP)."""
    groups = _groups(len(rows), per_sample)
    total = 0.0
    for members in groups:
        tp, fp, fn = (sum(rows[m][c] for m in members) for c in (TP, FP, FN))
        index, d_tp, d_fn, d_fp = ratio(tp, fn, fp, a, b, smooth, k)
        value, slope = shape(1 - index)
        total += value
        w = -weight * slope / len(groups)
        for m in members:
            grad[m][TP] += w * d_tp
            grad[m][FN] += w * d_fn
            grad[m][FP] += w * d_fp
    return weight * total / len(groups)


def tversky_region(rows: Rows, grad: Rows, weight: float, per_sample: bool, alpha: float,
                   smooth: float, shape: Shape = identity) -> float:
    """weight * mean over groups of shape(1 - TI), TI = (TP + s) / (TP + alpha*FN +
    (1-alpha)*FP + s) of the group's sums."""
    return _region(rows, grad, weight, per_sample, alpha, 1 - alpha, smooth, 1.0, shape)


def dice_region(rows: Rows, grad: Rows, weight: float, per_sample: bool, smooth: float,
                shape: Shape = identity) -> float:
    """weight * mean over groups of shape(1 - (2*TP + s) / (2*TP + FP + FN + s))."""
    return _region(rows, grad, weight, per_sample, 1.0, 1.0, smooth, 2.0, shape)


def class_indices(rows: Rows, grad: Rows, per_sample_voxels: int, index: Callable,
                  shapes: Sequence[Shape], weight: float, fn_col: int = FN,
                  fp_col: int = FP) -> float:
    """weight * mean over samples b and classes c in (bg, fg) of shapes[c](1 - index(t, fn, fp)).

    fg: (TP, row[fn_col], row[fp_col]); bg: (n - TP - FN - FP, row[fp_col], row[fn_col]) (the
    background's FN is the foreground's FP and vice versa; n voxels per sample). ``index``
    returns the value and the partials of :func:`ratio`; ``shapes`` is (bg, fg).
    """
    total = 0.0
    scale = -weight / (2 * len(rows))
    for row, g in zip(rows, grad, strict=True):
        tp, fn, fp = row[TP], row[fn_col], row[fp_col]
        i_bg, dt_bg, dfn_bg, dfp_bg = index(per_sample_voxels - tp - row[FN] - row[FP], fp, fn)
        i_fg, dt_fg, dfn_fg, dfp_fg = index(tp, fn, fp)
        v_bg, s_bg = shapes[0](1 - i_bg)
        v_fg, s_fg = shapes[1](1 - i_fg)
        total += v_bg + v_fg
        g[TP] += scale * (s_fg * dt_fg - s_bg * dt_bg)
        g[FN] -= scale * s_bg * dt_bg
        g[FP] -= scale * s_bg * dt_bg
        g[fn_col] += scale * (s_fg * dfn_fg + s_bg * dfp_bg)
        g[fp_col] += scale * (s_fg * dfp_fg + s_bg * dfn_bg)
    return weight * total / (2 * len(rows))


def ce_weights(beta: float, n_voxels: int) -> dict[int, float]:
    """Weights of mCE(beta) = mean_i [beta*y*softplus(-x) + (1-beta)*(1-y)*softplus(x)]."""
    return {C1: beta / n_voxels, C0: (1 - beta) / n_voxels}
