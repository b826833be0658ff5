"""Softmax (several classes) benchmarks: the fused losses against their baselines.

    pytest benchmarks/test_bench_softmax.py --benchmark-enable --benchmark-only \
        [--bench-devices=cpu|cuda] [--bench-rounds=N] [--bench-peak-gbps=GBPS]

Full steps (forward + backward) on float32 logits and a uint8 label map; CPU with 2 threads.
Shapes: 2x4x64^3 on the CPU, 2x4x128^3 on CUDA. Providers, side by side (Liger-Kernel style):
  fused      get_loss(name, activation="softmax", backend="fused")
  compiled   torch.compile of the reference (inductor)
  reference  the eager per-voxel reference (the baseline)
  monai      MONAI's DiceCELoss(softmax=True, to_onehot_y=True) set to the same formula
  sigmoid    fused sigmoid HyTver on the same B*C*voxels (C independent channels)
``test_softmax_target_ratios`` times them round-robin (per round, for each provider an untimed
and then a timed full step) and reports the ratios of the per-provider minima. On CUDA it also
reports the fused step's kernel time (a CUDA-graph replay of forward + backward: kernels only,
no host code) next to the step time, and the fraction of the device's memory bandwidth.
"""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import (
    BenchCase,
    _devices,
    finish_ratios,
    ratio_line,
    round_robin_ms,
    run_bench,
)

from hytver_dist import ops
from hytver_dist.losses import get_loss

SHAPES = {"cpu": (2, 4, 64, 64, 64), "cuda": (2, 4, 128, 128, 128)}
# The fused step's memory traffic per voxel: C float32 logits read twice (forward, backward),
# the uint8 label read twice, C float32 gradients written.
def bytes_per_voxel(classes: int) -> int:
    return classes * (4 + 4 + 4) + 2


def pytest_generate_tests(metafunc):
    if "soft_case" in metafunc.fixturenames:
        rounds = metafunc.config.getoption("--bench-rounds")
        cases = [BenchCase(d, SHAPES[d], torch.float32,
                           rounds=rounds or (30 if d == "cuda" else 10))
                 for d in _devices(metafunc.config.getoption("--bench-devices"))]
        metafunc.parametrize("soft_case", cases, ids=[c.id for c in cases])


pytestmark = pytest.mark.usefixtures("two_threads")  # the CPU protocol of the targets


def make_inputs(case: BenchCase, seed: int = 0):
    """Logits ~ N(0, 3^2), a label map with ~10 % of each foreground class, and the same
    target as C sigmoid channels (uint8)."""
    g = torch.Generator().manual_seed(seed)
    b, c, *spatial = case.shape
    x = (torch.randn(case.shape, generator=g) * 3).to(case.dtype)
    u = torch.rand((b, 1, *spatial), generator=g)
    labels = torch.clamp(((u - 0.7) / 0.1).floor().long() + 1, 0, c - 1).to(torch.uint8)
    dense = torch.nn.functional.one_hot(labels[:, 0].long(), c).movedim(-1, 1).to(torch.uint8)
    return x.to(case.device), labels.to(case.device), dense.to(case.device)


@functools.cache
def provider_fn(name: str, provider: str):
    if provider == "fused":
        return get_loss(name, backend="fused", activation="softmax")
    if provider == "reference":
        return get_loss(name, backend="reference", activation="softmax")
    if provider == "compiled":
        return torch.compile(get_loss(name, backend="reference", activation="softmax"))
    if provider == "sigmoid":
        return get_loss(name, backend="fused")
    from monai.losses import DiceCELoss

    # the same formula: Dice over the batch (batch=True) with smoothing 1, background included,
    # plus the categorical CE; MONAI takes the label map as a float tensor
    monai_loss = DiceCELoss(softmax=True, to_onehot_y=True, smooth_nr=1.0, smooth_dr=1.0,
                            batch=True)
    return lambda x, y: monai_loss(x, y.float())


def full_step(fn, x, y):
    def step():
        xg = x.detach().requires_grad_()
        fn(xg, y).backward()
    return step


STEPS = (("hytver", "fused"), ("hytver", "compiled"), ("hytver", "reference"),
         ("dice_ce", "fused"), ("dice_ce", "monai"), ("hytver", "sigmoid"))


@pytest.mark.parametrize("name,provider", STEPS)
def test_softmax_full_step(benchmark, soft_case, name, provider):
    if provider in ("fused", "sigmoid") and not ops.supports(soft_case.device):
        pytest.skip(f"no fused kernel for {soft_case.device}")
    if provider == "monai":
        pytest.importorskip("monai")
    x, labels, dense = make_inputs(soft_case)
    target = dense if provider == "sigmoid" else labels
    run_bench(benchmark, soft_case, full_step(provider_fn(name, provider), x, target),
              group=f"softmax {name} full", extra_info={"loss": name, "provider": provider})


def test_softmax_target_ratios(benchmark, soft_case, request):
    """The softmax targets (docs/benchmarks.md), round-robin, ratios of per-provider minima:
    fused hytver >= 3x compiled and >= 8x eager reference; fused dice_ce >= 5x MONAI; fused
    softmax <= 1.5x fused sigmoid per voxel and channel."""
    pytest.importorskip("monai")
    if not ops.supports(soft_case.device):
        pytest.skip(f"no fused kernel for {soft_case.device}")
    x, labels, dense = make_inputs(soft_case)
    steps = {key: full_step(provider_fn(*key), x, dense if key[1] == "sigmoid" else labels)
             for key in STEPS}
    ms = round_robin_ms(steps, soft_case)
    fused = ms[("hytver", "fused")]
    ratios = {
        "compiled / fused hytver": ms[("hytver", "compiled")] / fused,
        "reference / fused hytver": ms[("hytver", "reference")] / fused,
        "monai / fused dice_ce": ms[("dice_ce", "monai")] / ms[("dice_ce", "fused")],
        "fused softmax / fused sigmoid hytver": fused / ms[("hytver", "sigmoid")],
    }
    info = {"min_ms": {f"{n} {p}": v for (n, p), v in ms.items()}, "ratios": ratios,
            "rounds": soft_case.rounds}
    line = ratio_line("softmax target ratios", soft_case, ms, ratios)
    moved = bytes_per_voxel(soft_case.shape[1]) * soft_case.numel // soft_case.shape[1]
    finish_ratios(benchmark, request, soft_case, info, line, steps[("hytver", "fused")],
                  fused, moved, group="softmax target ratios (fused hytver)",
                  extra_info={"loss": "hytver", "provider": "fused"})
