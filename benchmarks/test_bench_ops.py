"""Op-level benchmarks: fused ops vs the pure-PyTorch composite vs torch.compile of it.

    pytest benchmarks/test_bench_ops.py --benchmark-enable --benchmark-only \
        [--bench-sizes=all] [--bench-devices=cuda] [--benchmark-json=bench.json]

Groups: "<op> <mode> <shape> <dtype> <device>" with providers side by side, for the loss op
of a kind with per-voxel sums only (hytver) and one with per-voxel powers (dice_pp):
  fused      hytver_dist.ops.loss (one fused op per direction; no module checks, so this is the
             op's own cost. The loss modules are timed by test_bench_losses.py)
  reference  the loss class's reference (eager composite)
  compiled   torch.compile(reference) (inductor)
Modes: fwd (no autograd), bwd (backward, forward untimed), full (forward + backward). Targets
are uint8.
"""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import BenchCase, make_batch, run_bench

from hytver_dist import ops
from hytver_dist.losses import get_loss

OPS = {name: get_loss(name) for name in ("hytver", "dice_pp")}
PROVIDERS = ("fused", "reference", "compiled")
MODES = ("fwd", "bwd", "full")


@functools.cache
def _compiled(op: str):
    return torch.compile(OPS[op].reference)


def _provider_fn(op: str, provider: str):
    loss = OPS[op]
    if provider == "fused":
        if not ops.is_available():
            pytest.skip("hytver_dist._C is not built")
        return lambda x, y: ops.loss(x, y, loss.kind, loss.fused_params(), loss.per_sample)
    if provider == "reference":
        return loss.reference
    return _compiled(op)


def _bytes_moved(case: BenchCase, mode: str) -> int:
    xb = torch.empty((), dtype=case.dtype).element_size() * case.numel
    yb = torch.empty((), dtype=case.target_dtype).element_size() * case.numel
    fwd, bwd = xb + yb, 2 * xb + yb  # bwd reads x and y and writes dL/dx
    return {"fwd": fwd, "bwd": bwd, "full": fwd + bwd}[mode]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("op", tuple(OPS))
def test_ops(benchmark, bench_case: BenchCase, op: str, provider: str, mode: str):
    if provider == "fused" and not ops.supports(bench_case.device):
        pytest.skip(f"no fused kernel for {bench_case.device}")
    fn = _provider_fn(op, provider)
    x, y = make_batch(bench_case)

    def loss(xg):
        return fn(xg, y)

    info = {"impl": provider, "op": op, "mode": mode, "bytes_moved": _bytes_moved(bench_case, mode)}
    group = f"{op} {mode}"
    if mode == "fwd":
        with torch.no_grad():
            run_bench(benchmark, bench_case, lambda: fn(x, y), group=group, extra_info=info)
    elif mode == "bwd":

        def setup():
            xg = x.detach().requires_grad_(True)
            return (loss(xg), xg)

        run_bench(
            benchmark,
            bench_case,
            lambda lv, xg: torch.autograd.grad(lv, xg),
            setup=setup,
            group=group,
            extra_info=info,
        )
    else:

        def full():
            xg = x.detach().requires_grad_(True)
            return torch.autograd.grad(loss(xg), xg)

        run_bench(benchmark, bench_case, full, group=group, extra_info=info)
