"""Loss-level benchmarks: what a loss costs, providers side by side (Liger-Kernel style).

    pytest benchmarks/test_bench_losses.py --benchmark-enable --benchmark-only \
        [--bench-sizes=all] [--bench-devices=cuda] [--benchmark-json=bench.json]

Groups "<loss> <mode> <shape> <dtype> <device>", modes fwd / bwd / full (forward + backward);
uint8 targets. Providers:
  fused           get_loss(name, backend="fused")     (C++/CUDA kernels + loss algebra)
  reference       get_loss(name, backend="reference") (eager PyTorch)
  compiled        torch.compile of the reference      (inductor)
  monai           MONAI's closest loss (TverskyLoss for hytver's region term, DiceCELoss)
The "dice_pp vs hytver" group puts fused DSC++ (per-voxel exponents) beside fused HyTver.
The "all losses" group times fused full steps of every registry loss.
"""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import BenchCase, make_batch, run_bench

from hytver_dist import ops
from hytver_dist.losses import LOSSES, get_loss

MODES = ("fwd", "bwd", "full")


@pytest.fixture(autouse=True)
def two_threads():
    """The issue's CPU protocol: 2 threads (restored afterwards)."""
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


@functools.cache
def loss_fn(name: str, provider: str):
    if provider in ("fused", "reference"):
        return get_loss(name, backend=provider)
    if provider == "compiled":
        return torch.compile(get_loss(name, backend="reference"))
    from monai.losses import DiceCELoss, TverskyLoss

    if name == "hytver":  # MONAI has no HyTver: its Tversky with our alpha mapping
        return TverskyLoss(sigmoid=True, alpha=0.3, beta=0.7, smooth_nr=1.0, smooth_dr=1.0,
                           batch=True)
    return DiceCELoss(sigmoid=True, smooth_nr=1.0, smooth_dr=1.0, batch=True)


def _target(case: BenchCase, y: torch.Tensor, provider: str) -> torch.Tensor:
    return y.float() if provider == "monai" else y  # MONAI wants a float target


def _bench(benchmark, case: BenchCase, name: str, provider: str, mode: str, group: str):
    if provider == "fused" and not ops.is_available():
        pytest.skip("C++ extension not built")
    if provider == "monai":
        pytest.importorskip("monai")
    fn = loss_fn(name, provider)
    x, y = make_batch(case)
    y = _target(case, y, provider)
    info = {"loss": name, "provider": provider, "mode": mode}
    if mode == "fwd":
        def step():
            with torch.no_grad():
                return fn(x, y)
        return run_bench(benchmark, case, step, group=group, extra_info=info)
    if mode == "full":
        def step():
            xg = x.detach().requires_grad_()
            fn(xg, y).backward()
            return xg.grad
        return run_bench(benchmark, case, step, group=group, extra_info=info)

    def setup():  # bwd: forward untimed
        xg = x.detach().requires_grad_()
        return (fn(xg, y), xg)

    def step(value, xg):
        value.backward()
        return xg.grad
    return run_bench(benchmark, case, step, group=group, setup=setup, extra_info=info)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", ["fused", "reference", "compiled", "monai"])
def test_hytver(benchmark, bench_case, provider, mode):
    _bench(benchmark, bench_case, "hytver", provider, mode, f"hytver {mode}")


@pytest.mark.parametrize("provider", ["fused", "reference", "compiled", "monai"])
def test_dice_ce(benchmark, bench_case, provider):
    _bench(benchmark, bench_case, "dice_ce", provider, "full", "dice_ce full")


@pytest.mark.parametrize("name", ["hytver", "dice_pp"])
@pytest.mark.parametrize("provider", ["fused", "reference"])
def test_dice_pp_vs_hytver(benchmark, bench_case, name, provider):
    _bench(benchmark, bench_case, name, provider, "full", "dice_pp vs hytver full")


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_all_losses_fused(benchmark, bench_case, name):
    _bench(benchmark, bench_case, name, "fused", "full", "all losses fused full")
