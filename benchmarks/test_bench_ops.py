"""Op-level benchmarks: fused ops vs the pure-PyTorch composite vs torch.compile of it.

    pytest benchmarks/test_bench_ops.py --benchmark-enable --benchmark-only \
        [--bench-sizes=all] [--bench-devices=cuda] [--benchmark-json=bench.json]

Groups: "<op> <mode> <shape> <dtype> <device>" with providers side by side:
  fused      hytver_dist.ops.stats / exp_stats (the C++/CUDA sum kernels; the backward
             recomputes from the logits. The whole-loss op with its CPU saving variant is timed
             at loss level by test_bench_losses.py)
  reference  hytver_dist.ops.reference_stats / reference_exp_stats (eager composite)
  compiled   torch.compile(reference_*) (inductor)
Modes: fwd (sums only, no autograd), bwd (backward of a weighted sum of the sums, forward
untimed), full (forward + backward). Targets are uint8.
"""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import BenchCase, make_batch, run_bench

from hytver_dist import ops

GAMMA, EPS = 2.0, 1e-7
OPS = {
    "stats": (ops.stats, ops.reference_stats, ()),
    "exp_stats": (ops.exp_stats, ops.reference_exp_stats, (GAMMA, EPS)),
}
PROVIDERS = ("fused", "reference", "compiled")
MODES = ("fwd", "bwd", "full")


@functools.cache
def _compiled(op: str):
    return torch.compile(OPS[op][1])


def _provider_fn(op: str, provider: str):
    fused, reference, _ = OPS[op]
    if provider == "fused":
        if not ops.is_available():
            pytest.skip("hytver_dist._C is not built")
        return fused
    if provider == "reference":
        return reference
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
    args = OPS[op][2]
    x, y = make_batch(bench_case)
    k = 5 if op == "stats" else 9
    g = torch.Generator().manual_seed(1)
    w = torch.rand(bench_case.shape[0], k, generator=g).to(bench_case.device)

    def loss(xg):
        return (fn(xg, y, *args) * w).sum()

    info = {"impl": provider, "op": op, "mode": mode, "bytes_moved": _bytes_moved(bench_case, mode)}
    group = f"{op} {mode}"
    if mode == "fwd":
        with torch.no_grad():
            run_bench(benchmark, bench_case, lambda: fn(x, y, *args), group=group, extra_info=info)
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
