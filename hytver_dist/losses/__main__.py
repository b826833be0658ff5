"""``python -m hytver_dist.losses``: every loss of the registry on one synthetic batch."""

from __future__ import annotations

import argparse
import time

import torch

from . import LOSSES, get_loss


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=48, help="edge of the cubic volume")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels", type=int, default=1, help="independent sigmoid channels")
    parser.add_argument("--backend", default="auto", choices=["auto", "fused", "reference"])
    args = parser.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, args.channels, args.size, args.size, args.size)
    logits = torch.randn(shape, generator=g)
    target = (torch.rand(shape, generator=g) < 0.05).to(torch.uint8)
    print(f"{'loss':<26}{'value':>10}{'|grad|':>12}{'fwd+bwd ms':>12}")
    for name in LOSSES:
        loss = get_loss(name, backend=args.backend)
        x = logits.clone().requires_grad_()
        start = time.perf_counter()
        value = loss(x, target)
        value.backward()
        ms = (time.perf_counter() - start) * 1e3
        print(f"{name:<26}{value.item():>10.4f}{x.grad.norm().item():>12.3e}{ms:>12.1f}")


if __name__ == "__main__":
    main()
