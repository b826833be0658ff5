"""``python -m hytver_dist.train``: the command-line entry point (its code lives in a layer)."""

import sys

from .run.train_cli import main

if __name__ == "__main__":
    sys.exit(main())
