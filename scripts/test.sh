#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh), then lint and run the default test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The fused-kernel tests must not skip where the extension should have been built.
export HYTVER_REQUIRE_EXT=${HYTVER_REQUIRE_EXT:-1}
.venv/bin/ruff check hytver_dist tests benchmarks
.venv/bin/python -m pytest "$@"
