"""``python -m hytver_dist.predict``: the command-line entry point (its code lives in a layer)."""

import sys

from .run.predict import main

if __name__ == "__main__":
    sys.exit(main())
