"""``python -m hytver_dist.evaluate``: the command-line entry point."""

import sys

from .run.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
