"""``python -m hytver_dist.synth``: the command-line entry point (its code lives in a layer)."""

import sys

from .data.synth import main

if __name__ == "__main__":
    sys.exit(main())
