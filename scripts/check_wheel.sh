#!/usr/bin/env bash
# The loss library installs alone: build the wheel, install it into a fresh virtual environment
# that has only torch and numpy, run a fused loss forward and backward on the CPU there, and
# check that the fused op ran and that none of the heavy layers' dependencies is installed or
# imported. Uses .venv (scripts/setup.sh) to build; run from anywhere. Exit status 0 = passed.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WORK=$(mktemp -d -t hytver-wheel.XXXXXX)
LOG=$(mktemp -t hytver-wheel-log.XXXXXX)  # kept when a step fails
trap 'rc=$?; rm -rf "$WORK"; [ "$rc" -ne 0 ] || rm -f "$LOG"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
TORCH_SPEC=${HYTVER_TORCH:-$(.venv/bin/python -c 'import torch; print("torch==" + torch.__version__.split("+")[0])')}
INDEX=()
[ -n "${HYTVER_TORCH_INDEX:-}" ] && INDEX=(--index-url "$HYTVER_TORCH_INDEX")
source scripts/lib.sh  # step

step "wheel (compiles the kernels)" \
  .venv/bin/python -m pip wheel -q --no-build-isolation --no-deps -w "$WORK/dist" "$REPO"
WHEEL=$(ls "$WORK"/dist/hytver_dist-*.whl)
step "fresh environment" .venv/bin/python -m venv "$WORK/venv"
step "$TORCH_SPEC and numpy into it" \
  "$WORK/venv/bin/python" -m pip install -q ${INDEX[@]+"${INDEX[@]}"} "$TORCH_SPEC" numpy
step "install $(basename "$WHEEL") with its own requirements" \
  "$WORK/venv/bin/python" -m pip install -q "$WHEEL"
cd "$WORK"  # not the repository: the installed package must be the one imported
"$WORK/venv/bin/python" - 2> >(grep -v '^USDT:' >&2) <<'PY'
import importlib.util
import sys

import torch
from torch.profiler import ProfilerActivity, profile

import hytver_dist
from hytver_dist import ops
from hytver_dist.losses import get_loss

assert "site-packages" in hytver_dist.__file__, hytver_dist.__file__
assert ops.is_available(), "the wheel's fused kernels did not load"
heavy = ["ray", "monai", "pandas", "scipy", "nibabel", "pydantic", "yaml", "matplotlib",
         "statsmodels", "nilearn"]
installed = [m for m in heavy if importlib.util.find_spec(m) is not None]
assert not installed, f"installed with the library alone: {installed}"
logits = torch.randn(2, 1, 16, 16, 16, requires_grad=True)
target = (torch.rand(2, 1, 16, 16, 16) > 0.9).float()
with profile(activities=[ProfilerActivity.CPU]) as prof:
    loss = get_loss("hytver", backend="fused")(logits, target)
    loss.backward()
names = {e.name for e in prof.events()}
assert "hytver::loss" in names, sorted(n for n in names if "hytver" in n)
assert torch.isfinite(loss) and logits.grad is not None and torch.isfinite(logits.grad).all()
imported = [m for m in heavy if m in sys.modules]
assert not imported, f"imported by the loss library: {imported}"
print(f"ok: hytver loss {loss.item():.4f} through hytver::loss; none of {', '.join(heavy)} "
      "installed or imported")
PY
