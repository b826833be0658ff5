#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh), lint, check the loss library's wheel on its own
# (scripts/check_wheel.sh), then run the default test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The fused-kernel tests must not skip where the extension should have been built.
export HYTVER_REQUIRE_EXT=${HYTVER_REQUIRE_EXT:-1}
.venv/bin/ruff check hytver_dist tests benchmarks
# The loss library as a wheel in an environment with torch and numpy only.
bash scripts/check_wheel.sh
.venv/bin/python -m pytest "$@"
