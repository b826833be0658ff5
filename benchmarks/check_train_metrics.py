"""Check a training run's metrics.csv: at least one row, every training loss finite.

Used by ``benchmarks/gpu_check.sh`` after its short mixed-precision training run:
``python benchmarks/check_train_metrics.py RUN_DIR/metrics.csv``.
"""

from __future__ import annotations

import math
import sys

import pandas as pd


def main(path: str) -> int:
    metrics = pd.read_csv(path)
    losses = metrics["train_loss"].tolist()
    if not losses or not all(math.isfinite(v) for v in losses):
        print(f"{path}: training losses missing or not finite: {losses}", file=sys.stderr)
        return 1
    print(metrics.tail(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
