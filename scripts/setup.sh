#!/usr/bin/env bash
# Create .venv (if missing) and install hytver-dist with all extras and the test tools,
# building the C++ extension against the installed torch. Without an NVIDIA driver it installs
# torch==2.13.0, with one torch>=2.4, from pip's configured index: on Linux, PyPI's torch wheels
# are CUDA builds (they run on a CPU, but download the CUDA libraries). Environment:
#   HYTVER_TORCH        the torch requirement instead (e.g. "torch==2.13.0+cpu")
#   HYTVER_TORCH_INDEX  the pip index for torch, e.g. https://download.pytorch.org/whl/cpu (CPU
#                       build) or https://download.pytorch.org/whl/cu130 (CUDA 13.0 build)
#   HYTVER_VENV, PYTHON the environment's path and the interpreter that creates it
# One line per step; pip's and the compiler's output go to a log, shown when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${HYTVER_VENV:-.venv}
LOG=${HYTVER_SETUP_LOG:-$(mktemp -t hytver-setup.XXXXXX)}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

source scripts/lib.sh  # step
pip_install() { "$VENV/bin/python" -m pip install -q "$@"; }
TORCH_INDEX=()  # torch's index, when given (the package and its other dependencies: pip's own)
FROM=""
if [ -n "${HYTVER_TORCH_INDEX:-}" ]; then
  TORCH_INDEX=(--index-url "$HYTVER_TORCH_INDEX")
  FROM=" from $HYTVER_TORCH_INDEX"
fi

if [ -x "$VENV/bin/python" ]; then
  echo "virtual environment $VENV ... exists"
else
  step "virtual environment $VENV" "$PY" -m venv "$VENV"
fi
step "pip, setuptools>=77, wheel, ninja" pip_install --upgrade "pip>=24" "setuptools>=77" wheel ninja
if [ -n "${HYTVER_TORCH:-}" ]; then
  step "torch ($HYTVER_TORCH$FROM)" pip_install ${TORCH_INDEX[@]+"${TORCH_INDEX[@]}"} "$HYTVER_TORCH"
elif "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "torch ... already installed"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  step "torch>=2.4 (NVIDIA driver found$FROM)" pip_install ${TORCH_INDEX[@]+"${TORCH_INDEX[@]}"} "torch>=2.4"
else
  step "torch 2.13.0$FROM" pip_install ${TORCH_INDEX[@]+"${TORCH_INDEX[@]}"} "torch==2.13.0"
fi
# numpy before the build: torch imported without it warns "Failed to initialize NumPy".
step "numpy" pip_install "numpy>=1.24"
# --no-build-isolation: build the extension against the torch above, never a downloaded one.
step "hytver-dist with all extras and the test tools (compiles the kernels)" \
  pip_install --no-build-isolation -e ".[all,test]"
TORCH=$("$VENV/bin/python" -c 'import torch; c = torch.version.cuda; print(torch.__version__, f"(CUDA {c} build)" if c else "(CPU build)")' 2>/dev/null || echo unknown)
EXT=$("$VENV/bin/python" -c 'import hytver_dist.ops as o; print("built" if o.is_available() else "NOT built")' 2>/dev/null || echo "unknown")
echo "ready: $VENV (torch $TORCH, fused kernels $EXT; build log $LOG)"
echo "next:  $VENV/bin/python -m hytver_dist.sweep      (tests: bash scripts/test.sh)"
