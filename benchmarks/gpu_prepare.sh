#!/usr/bin/env bash
# Prepare what benchmarks/gpu_check.sh needs on a GPU machine that has CUDA torch but neither a
# package index nor this package's pure-Python dependencies: run it HERE (a machine with pip
# access and this repository's .venv), then ship `.whl/` and `.gpu_data/` with the checkout.
#
#   bash benchmarks/gpu_prepare.sh            # Python 3.12 wheels (the GPU image's Python)
#   GPU_PYTHON_VERSION=3.11 bash benchmarks/gpu_prepare.sh   # e.g. for a dry run here
#
# - .whl/: wheels of the training path's dependencies that such images usually lack (nibabel,
#   pydantic and its core, MONAI), at the versions installed here, listed in .whl/MANIFEST;
# - .gpu_data/synth: a few tiny synthetic cases in the MSSEG-2 layout (generating them needs
#   nilearn's templates, which the GPU machine need not have).
# Both folders are git-ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PYVER=${GPU_PYTHON_VERSION:-3.12}
PKGS=(nibabel pydantic pydantic_core annotated-types typing-inspection monai)
pins=()
for p in "${PKGS[@]}"; do
  v=$("$PY" -c "import importlib.metadata as m; print(m.version('$p'))")
  pins+=("$p==$v")
done
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "${pins[@]}"
# benchmarks/gpu_check.sh installs exactly these and refuses to start when one is missing.
{ echo "# python $PYVER"; (cd .whl && ls -1 ./*.whl | sed 's|^\./||'); } > .whl/MANIFEST
echo "wheels: $(grep -v '^#' .whl/MANIFEST | tr '\n' ' ')"
rm -rf .gpu_data && mkdir -p .gpu_data
"$PY" -m hytver_dist.synth --out .gpu_data/synth --cases 8 --seed 0 --size tiny --negatives 2 \
  > /dev/null
echo "data: .gpu_data/synth ($(ls .gpu_data/synth | wc -l) cases)"
