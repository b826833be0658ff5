"""The training loop under a real 2-rank gloo process group (no Ray): the finite-loss check
stops every rank together when only one rank's loss is non-finite."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import torch.multiprocessing as mp
from test_train import CONFIG, cache, data  # noqa: F401  (module fixtures)

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, cache_dir: str, out: str) -> None:
    """One rank: train with a loss that is NaN on rank 1 only; record how it ended."""
    import torch.distributed as dist

    from hytver_dist.run import train
    from hytver_dist.run.config import RunConfig
    from hytver_dist.run.prepare import prepare_data

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    real = train.get_loss

    def get_loss(*args, **kwargs):
        fn = real(*args, **kwargs)
        return (lambda logits, target: fn(logits, target) * float("nan")) if rank == 1 else fn

    train.get_loss = get_loss
    cfg = RunConfig.load(CONFIG)
    spec = train.RunSpec.from_config(cfg, "dice", 0)
    try:
        train.train_loop(spec, prepare_data(cfg.data, cache_dir=cache_dir), "cpu")
        result = "returned"
    except FloatingPointError as exc:
        result = f"FloatingPointError: {exc}"
    finally:
        dist.destroy_process_group()
    Path(out, f"rank{rank}").write_text(result)


@pytest.mark.timeout(180)
def test_non_finite_loss_on_one_rank_stops_every_rank(data, cache, tmp_path):  # noqa: F811
    ctx = mp.start_processes(_rank, args=(_free_port(), str(cache), str(tmp_path)),
                             nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + 150
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("a rank hung: the finite-loss check did not stop every rank")
    ended = {r: (tmp_path / f"rank{r}").read_text() for r in range(WORLD)}
    for rank, text in ended.items():
        assert text.startswith("FloatingPointError"), ended
        assert "at iteration 1" in text and f"rank {rank} of 2, all ranks stop" in text, text
    assert "is nan" in ended[1] and "is nan" not in ended[0], ended
