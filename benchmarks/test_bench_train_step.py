"""Cost of one V-Net training step per loss, against a no-loss baseline and the loss alone.

Tiny CPU configuration: batch 2 of 3x32^3 patches, ``VNet(n_filters=4)`` (batch norm,
leaky ReLU), Adam, uint8 targets with ~5 % foreground, fixed seeds, one torch thread (the
numbers are comparable between runs on a shared machine; the thread count is restored).

Groups (one table each, losses side by side):

* ``train step [<backend>]``: zero_grad, forward, loss, backward, Adam step. Row ``none`` uses
  ``logits.mean()`` as the loss: the model's own cost, so ``step(loss) - step(none)`` is the
  share of the loss.
* ``loss only [<backend>]``: forward + backward of the loss alone on (2, 1, 32, 32, 32) logits
  (``none``: ``logits.mean()``, the floor).

``<backend>`` is "reference" (plain PyTorch) and "fused" (the C++ kernels; skipped when the
extension is not built). pyproject.toml's addopts pass ``--benchmark-disable``, so measuring
needs ``--benchmark-enable`` (``--benchmark-only`` alone is a usage error)::

    .venv/bin/python -m pytest benchmarks/test_bench_train_step.py --benchmark-enable \
        --benchmark-only -q
    .venv/bin/python -m pytest benchmarks/test_bench_train_step.py -q  # smoke: each step once

About 40 s on 2 shared CPU cores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from hytver_dist import ops
from hytver_dist.losses import LOSSES, get_loss
from hytver_dist.model import VNet

BATCH, CHANNELS, SIZE, N_FILTERS = 2, 3, 32, 4
FOREGROUND = 0.05
STEP_ROUNDS, LOSS_ROUNDS = 10, 30
SEED = 0
BACKENDS = [
    "reference",
    pytest.param(
        "fused",
        marks=pytest.mark.skipif(
            not ops.is_available(), reason=f"C++ extension not built: {ops.extension_error()}"
        ),
    ),
]
NAMES = ["none", *LOSSES]  # "none": logits.mean(), the baseline


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _target(generator: torch.Generator) -> torch.Tensor:
    shape = (BATCH, 1, SIZE, SIZE, SIZE)
    return (torch.rand(shape, generator=generator) < FOREGROUND).to(torch.uint8)


def _loss_fn(name: str, backend: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if name == "none":
        return lambda logits, target: logits.mean()
    return get_loss(name, backend=backend)


def _describe(benchmark, kind: str, name: str, backend: str, rounds: int) -> None:
    benchmark.group = f"{kind} [{backend}]"
    benchmark.extra_info.update(
        {
            "kind": kind,
            "loss": name,
            "backend": backend,
            "rounds": rounds,
            "shape": [BATCH, CHANNELS, SIZE, SIZE, SIZE],
            "n_filters": N_FILTERS,
            "threads": torch.get_num_threads(),
            "fused_available": ops.is_available(),
            "cpu_isa": ops.cpu_isa() if ops.is_available() else None,
        }
    )


def _run(benchmark, fn: Callable[[], torch.Tensor], rounds: int) -> torch.Tensor:
    # --benchmark-disable: pedantic runs fn once (no warm-up), a smoke test.
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_train_step(benchmark, name: str, backend: str) -> None:
    generator = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)
    model = VNet(in_channels=CHANNELS, out_channels=1, n_filters=N_FILTERS).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    image = torch.randn((BATCH, CHANNELS, SIZE, SIZE, SIZE), generator=generator)
    target = _target(generator)
    loss_fn = _loss_fn(name, backend)

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(image), target)
        loss.backward()
        optimizer.step()
        return loss.detach()

    _describe(benchmark, "train step", name, backend, STEP_ROUNDS)
    loss = _run(benchmark, step, STEP_ROUNDS)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_loss_only(benchmark, name: str, backend: str) -> None:
    generator = torch.Generator().manual_seed(SEED)
    logits = torch.randn((BATCH, 1, SIZE, SIZE, SIZE), generator=generator)
    logits.requires_grad_(True)
    target = _target(generator)
    loss_fn = _loss_fn(name, backend)

    def forward_backward() -> torch.Tensor:
        logits.grad = None
        loss = loss_fn(logits, target)
        loss.backward()
        return loss.detach()

    _describe(benchmark, "loss only", name, backend, LOSS_ROUNDS)
    loss = _run(benchmark, forward_backward, LOSS_ROUNDS)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
