#!/usr/bin/env bash
# Create .venv (if missing) and install hytver-dist with its test extras, building the C++
# extension against the installed torch. CPU machines get the pinned CPU build torch==2.13.0;
# machines with an NVIDIA driver keep/get a CUDA torch (set HYTVER_TORCH to override the spec).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${HYTVER_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
"${PIP[@]}" --upgrade "pip>=24" "setuptools>=70" wheel ninja
if [ -n "${HYTVER_TORCH:-}" ]; then
  "${PIP[@]}" "$HYTVER_TORCH"
elif ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    "${PIP[@]}" "torch>=2.4"
  else
    "${PIP[@]}" "torch==2.13.0"
  fi
fi
# --no-build-isolation: build the extension against the torch above, never a downloaded one.
"${PIP[@]}" --no-build-isolation -e ".[test]"
echo "hytver-dist installed in $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
