"""Host cost of a tiny CPU training step: the fused HyTver loss, forward + backward, 1x1x8^3.

    python benchmarks/host_cost.py [--rounds 30] [--number 200]

At this size the kernels take a few microseconds, so the time is the host's: the module's
checks, the dispatcher, the autograd node and the allocations. The same host time bounds every
small GPU step. Prints the minimum over rounds of the mean of ``number`` steps, in us.
"""

from __future__ import annotations

import argparse
import timeit

import torch

from hytver_dist.losses import get_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--number", type=int, default=200)
    parser.add_argument("--activation", default="sigmoid", choices=["sigmoid", "softmax"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    # (activation passed only for softmax, so that the script also runs on older versions)
    extra = {"activation": "softmax"} if args.activation == "softmax" else {}
    loss = get_loss("hytver", backend="fused", **extra)
    channels = 2 if args.activation == "softmax" else 1
    x = torch.randn(1, channels, 8, 8, 8, requires_grad=True)
    y = (torch.rand(1, 1, 8, 8, 8) < 0.3).to(torch.uint8)

    def step():
        loss(x, y).backward()

    for _ in range(300):
        step()
    best = min(timeit.repeat(step, number=args.number, repeat=args.rounds)) / args.number
    print(f"hytver {args.activation} 1x{channels}x8^3 forward + backward: {best * 1e6:.1f} us")


if __name__ == "__main__":
    main()
