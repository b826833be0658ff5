"""Loss-level benchmarks: what a loss costs, providers side by side (Liger-Kernel style).

    pytest benchmarks/test_bench_losses.py --benchmark-enable --benchmark-only \
        [--bench-sizes=all] [--bench-devices=cuda] [--benchmark-json=bench.json]

Groups "<loss> <mode> <shape> <dtype> <device>", modes fwd / bwd / full (forward + backward);
uint8 targets. Providers:
  fused           get_loss(name, backend="fused")     (the fused loss op, C++/CUDA)
  reference       get_loss(name, backend="reference") (eager PyTorch)
  compiled        torch.compile of the reference      (inductor)
  monai           MONAI's closest loss (TverskyLoss for hytver's region term, DiceCELoss)
The "dice_pp vs hytver" group puts fused DSC++ (per-voxel exponents) beside fused HyTver.
The "all losses" group times fused full steps of every registry loss.
``test_target_ratios`` times the performance targets' comparisons round-robin (an untimed and a
timed full step of each provider per round, so that a shared machine's slow spells hit them all
alike) and prints the ratios of the per-provider minima at the end of the run.
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from conftest import (
    BenchCase,
    finish_ratios,
    make_batch,
    ratio_line,
    round_robin_ms,
    run_bench,
)

from hytver_dist import ops
from hytver_dist.losses import LOSSES, get_loss

MODES = ("fwd", "bwd", "full")


pytestmark = pytest.mark.usefixtures("two_threads")  # the CPU protocol of the targets


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


def _full_step(fn, x: torch.Tensor, y: torch.Tensor):
    def step():
        xg = x.detach().requires_grad_()
        fn(xg, y).backward()
    return step


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
        return run_bench(benchmark, case, _full_step(fn, x, y), group=group, extra_info=info)

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


# The performance targets (docs/benchmarks.md), full steps (forward + backward):
#   CPU, 2 threads, 4x1x80^3 float32 + uint8: fused HyTver >= 5x the eager reference and
#   >= 2.5x torch.compile of it; fused DSC++ <= 1.2x fused HyTver; C = 3 channels cost no more
#   per voxel than C = 1 (within 10 %).
#   CUDA: fused HyTver <= 100 us and >= 3x torch.compile(reference) at 4x1x80^3; at
#   2x1x160x192x160 a kernel bandwidth >= 50 % of the device's (DEVICE_BANDWIDTH in conftest.py,
#   or --bench-peak-gbps), counting 14 bytes per voxel (float32 logits and uint8 target read
#   twice, one float32 gradient written) over the kernels' time (the profiler's kernel events,
#   no host code), reported next to the step time.
RATIO_STEPS = (("hytver", "fused"), ("hytver", "compiled"), ("hytver", "reference"),
               ("dice_pp", "fused"), ("hytver3", "fused"))
BYTES_PER_VOXEL = 14


def test_target_ratios(benchmark, bench_case, request):
    """The targets above, timed round-robin: one (untimed + timed) pair of full steps of each
    provider per round, so that a shared machine's slow spells hit them all alike; ratios of
    the per-provider minima.
    "hytver3" is fused HyTver on the same batch with 3 channels (3x the voxels)."""
    if not ops.is_available():
        pytest.skip("C++ extension not built")
    x, y = make_batch(bench_case)
    shape3 = (bench_case.shape[0], 3, *bench_case.shape[2:])
    x3, y3 = make_batch(dataclasses.replace(bench_case, shape=shape3))
    steps = {key: _full_step(loss_fn(key[0].rstrip("3"), key[1]),
                             *((x3, y3) if key[0] == "hytver3" else (x, y)))
             for key in RATIO_STEPS}
    ms = round_robin_ms(steps, bench_case)
    fused = ms[("hytver", "fused")]
    ratios = {
        "reference / fused hytver": ms[("hytver", "reference")] / fused,
        "compiled / fused hytver": ms[("hytver", "compiled")] / fused,
        "fused dice_pp / fused hytver": ms[("dice_pp", "fused")] / fused,
        "fused hytver per voxel, C=3 / C=1": ms[("hytver3", "fused")] / 3 / fused,
    }
    moved = BYTES_PER_VOXEL * bench_case.numel
    info = {"min_ms": {f"{n} {p}": v for (n, p), v in ms.items()}, "ratios": ratios,
            "rounds": bench_case.rounds, "fused_hytver_us": fused * 1e3,
            "step_bytes_per_second": moved / (fused / 1e3)}
    line = ratio_line("target ratios", bench_case, ms, ratios)
    finish_ratios(benchmark, request, bench_case, info, line, steps[("hytver", "fused")],
                  fused, moved, group="target ratios (fused hytver)",
                  extra_info={"loss": "hytver", "provider": "fused", "mode": "full"})
