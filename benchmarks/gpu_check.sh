#!/usr/bin/env bash
# GPU check of the fused kernels, meant for the H200 machine (system Python 3.12 with a
# preinstalled CUDA torch, nvcc, ninja, pytest, pytest-benchmark; no package registry):
#
#   bash benchmarks/gpu_check.sh     # logs under $OUT (default /tmp/hytver_gpu_out)
#
# Steps, each under `timeout`, all within HYTVER_GPU_BUDGET seconds (default 420):
#   1. build the extension with its CUDA kernels (pip editable install without build isolation,
#      falling back to `setup.py build_ext --inplace`), meanwhile nvcc-compile the
#      framework-free self-test tests/cuda_standalone/check.cu;
#   2. run the self-test against a double host reference (sums ops and the loss ops with the
#      loss algebra on the device), plus raw kernel timings (--bench);
#   3. pytest tests/test_ops.py tests/test_losses_fused.py (CUDA tests included: the loss op
#      against the CPU, no host sync and launch counts, CUDA-graph capture, device-side target
#      check and argument errors in subprocesses; also every CPU ISA path of this host);
#   3b. a short training run on the GPU with mixed precision (`python -m hytver_dist.train
#      --device cuda`, 30 iterations, bf16 autocast) on the synthetic cases that
#      benchmarks/gpu_prepare.sh wrote into .gpu_data/ (wheels of the missing pure-Python
#      dependencies in .whl/ are installed into a scratch folder first); without a GPU it runs
#      4 iterations on the CPU to check the step itself;
#   4. compute-sanitizer memcheck on the self-test (small cases);
#   5. op benchmarks, fused vs eager reference -> $OUT/bench_gpu.json; loss benchmarks on CUDA
#      -> $OUT/bench_losses_gpu.json; the performance targets (fused HyTver fwd+bwd at 4x1x80^3
#      vs 100 us and vs torch.compile(reference), effective bandwidth at 2x1x160x192x160 vs
#      50 % of 4.3 TB/s at 14 bytes/voxel; CUDA events) -> $OUT/bench_targets_gpu.json;
#   6. compute-sanitizer memcheck on a small torch case, racecheck on the self-test;
#   7. benchmarks of torch.compile(reference) on CUDA -> $OUT/bench_gpu_compiled.json.
# The extension is built without the limited Python API (HYTVER_LIMITED_API=0).
# Logs end up packed in $OUT/logs.tgz.
# $OUT/summary.txt lists each step's exit code and time. Without a GPU (nvidia-smi fails) the
# script still builds (CPU-only unless HYTVER_CUDA=1), compiles the self-test and runs the CPU
# tests, skipping the GPU-only steps: that is how its logic is checked on CPU machines.
set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-/tmp/hytver_gpu_out}
mkdir -p "$OUT"
BUDGET=${HYTVER_GPU_BUDGET:-420}
START=$SECONDS
PY=${PYTHON:-python3}
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"
WORK=$(mktemp -d /tmp/hytver_gpu.XXXXXX)
CHECK_EXE=$WORK/hytver_check

HAVE_GPU=0
if command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi -L > /dev/null 2>&1; then HAVE_GPU=1; fi
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH="$CUDA_HOME/bin:$PATH"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
export HYTVER_LIMITED_API=${HYTVER_LIMITED_API:-0}
if [ "$HAVE_GPU" = 1 ]; then export HYTVER_CUDA=${HYTVER_CUDA:-1}; else export HYTVER_CUDA=${HYTVER_CUDA:-auto}; fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
NVCC_ARCH=sm_$(echo "${TORCH_CUDA_ARCH_LIST%%;*}" | tr -d '.+PTX ')

remaining() { echo $((BUDGET - (SECONDS - START))); }

# step NAME LIMIT CMD...: run CMD under timeout (capped by the remaining budget), log to
# $OUT/NAME.log, record the result in the summary. Returns CMD's exit code.
step() {
  local name=$1 limit=$2 left rc t0
  shift 2
  left=$(remaining)
  if [ "$left" -lt 15 ]; then
    echo "SKIP  $name (time budget spent)" | tee -a "$SUMMARY"
    return 99
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  printf '%-5s %-22s rc=%-3s %4ss (limit %ss)\n' "$([ $rc = 0 ] && echo ok || echo FAIL)" \
    "$name" "$rc" "$((SECONDS - t0))" "$limit" | tee -a "$SUMMARY"
  return $rc
}
skip() { echo "SKIP  $1 ($2)" | tee -a "$SUMMARY"; }

{
  echo "date: $(date -u +%FT%TZ)  host: $(hostname)  nproc: $(nproc)"
  echo "HAVE_GPU=$HAVE_GPU HYTVER_CUDA=$HYTVER_CUDA TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS CUDA_HOME=$CUDA_HOME"
  [ "$HAVE_GPU" = 1 ] && nvidia-smi
  command -v nvcc && nvcc --version | tail -2
  command -v compute-sanitizer || echo "compute-sanitizer: not found"
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())"
  "$PY" -m pip --version
  grep -m1 -o -E 'avx512f|avx2' /proc/cpuinfo | head -1
} > "$OUT/env.log" 2>&1

# --- 1. build (and compile the self-test in the background) ---------------------------------
HAVE_NVCC=0
command -v nvcc > /dev/null 2>&1 && HAVE_NVCC=1
if [ "$HAVE_NVCC" = 1 ]; then
  (timeout 240 nvcc -std=c++17 -O3 "-arch=$NVCC_ARCH" -lineinfo tests/cuda_standalone/check.cu \
    -o "$CHECK_EXE" > "$OUT/check_compile.log" 2>&1; echo "rc=$?" >> "$OUT/check_compile.log") &
  NVCC_PID=$!
fi

cat > "$WORK/build.sh" << 'EOF'
set -x
PIP=("$PY" -m pip install --no-build-isolation --no-deps -e .)
"${PIP[@]}" && exit 0
echo "== pip editable install failed: retrying with --break-system-packages (PEP 668 system python)"
"${PIP[@]}" --break-system-packages && exit 0
echo "== pip failed again: falling back to setup.py build_ext --inplace (PYTHONPATH=$PWD)"
"$PY" setup.py build_ext --inplace
EOF
step build 300 env PY="$PY" bash "$WORK/build.sh"
step import 60 "$PY" -c "
import torch
from hytver_dist import ops
print('extension', ops.is_available(), 'cuda kernels', ops.has_cuda(), 'cpu isa', ops.cpu_isa(), ops.supported_cpu_isas())
print(torch._C._dispatch_dump('hytver::loss'))
assert ops.is_available(), ops.extension_error()
assert ops.has_cuda() or '$HYTVER_CUDA' != '1', 'built without CUDA kernels'
"
BUILT=$?

# --- 2. framework-free self-test -------------------------------------------------------------
if [ "$HAVE_NVCC" = 1 ]; then
  wait "$NVCC_PID"
  if [ -x "$CHECK_EXE" ]; then
    echo "ok    check_compile" | tee -a "$SUMMARY"
    step check 120 "$CHECK_EXE" --bench
  else
    echo "FAIL  check_compile (see check_compile.log)" | tee -a "$SUMMARY"
  fi
else
  skip check "nvcc not found"
fi

# --- 3. tests ----------------------------------------------------------------------------------
if [ "$BUILT" = 0 ]; then
  step pytest 240 "$PY" -m pytest tests/test_ops.py tests/test_losses_fused.py -q -rs \
    -p no:cacheprovider -o addopts="" \
    --junitxml="$OUT/pytest.xml" --durations=15
else
  skip pytest "extension not importable"
fi

# --- 3b. a short training run with mixed precision ---------------------------------------------
if [ -d .whl ] && ! "$PY" -c "import nibabel, pydantic, monai" > /dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" \
    .whl/*.whl > "$OUT/wheels.log" 2>&1 && export PYTHONPATH="$PYTHONPATH:$WORK/site"
fi
if [ "$BUILT" = 0 ] && [ -d .gpu_data/synth ]; then
  if [ "$HAVE_GPU" = 1 ]; then TRAIN_DEV=cuda TRAIN_IT=30; else TRAIN_DEV=cpu TRAIN_IT=4; fi
  cat > "$WORK/train_check.sh" << EOF
set -e
"$PY" -c "import sys, hytver_dist.train; assert 'ray' not in sys.modules, 'train imports ray'"
"$PY" -m hytver_dist.train --config default --data .gpu_data/synth --loss hytver --seed 0 \
  --device $TRAIN_DEV --cache "$WORK/cache" --out "$WORK/run" --no-progress \
  --set training.iterations=$TRAIN_IT --set training.eval_every=$TRAIN_IT \
  --set training.checkpoint_every=$TRAIN_IT --set training.amp=true
"$PY" "$ROOT/benchmarks/check_train_metrics.py" "$WORK/run/metrics.csv"
EOF
  step train 150 bash "$WORK/train_check.sh"
else
  skip train "needs the extension and .gpu_data/ (bash benchmarks/gpu_prepare.sh)"
fi

# --- 4. memcheck on the self-test --------------------------------------------------------------
if [ "$HAVE_GPU" = 1 ] && [ -x "$CHECK_EXE" ] && command -v compute-sanitizer > /dev/null 2>&1; then
  step memcheck_check 120 compute-sanitizer --tool memcheck --leak-check full --error-exitcode 1 \
    "$CHECK_EXE" --quick
else
  skip memcheck_check "needs a GPU, the self-test and compute-sanitizer"
fi

# --- 5. benchmarks: fused vs eager reference ---------------------------------------------------
BENCH_ARGS=(-q -p no:cacheprovider --benchmark-enable --benchmark-only
  --benchmark-columns=min,median,iqr,rounds --benchmark-sort=fullname)
if [ "$BUILT" = 0 ]; then
  step bench 150 "$PY" -m pytest benchmarks/test_bench_ops.py "${BENCH_ARGS[@]}" -k "not compiled" \
    --benchmark-json="$OUT/bench_gpu.json"
else
  skip bench "extension not importable"
fi

if [ "$HAVE_GPU" = 1 ] && [ "$BUILT" = 0 ]; then
  step bench_losses 120 "$PY" -m pytest benchmarks/test_bench_losses.py "${BENCH_ARGS[@]}" \
    -k "not compiled and not monai and not target_ratios" --bench-devices=cuda \
    --benchmark-json="$OUT/bench_losses_gpu.json"
  step bench_targets 150 "$PY" -m pytest benchmarks/test_bench_losses.py "${BENCH_ARGS[@]}" \
    -k target_ratios --bench-devices=cuda --bench-sizes=all --bench-rounds=100 \
    --benchmark-json="$OUT/bench_targets_gpu.json"
else
  skip bench_losses "needs a GPU and the extension"
fi

# --- 6. memcheck on a small torch case, racecheck on the self-test ------------------------------
if [ "$HAVE_GPU" = 1 ] && [ "$BUILT" = 0 ] && command -v compute-sanitizer > /dev/null 2>&1; then
  cat > "$WORK/small_case.py" << 'EOF'
import torch
from hytver_dist import ops
for xdt in (torch.float32, torch.bfloat16, torch.float64):
    for off in (0, 1):
        n = 2 * 3 * 1001
        xb = torch.randn(n + off, device="cuda").to(xdt)
        yb = (torch.rand(n + off, device="cuda") < 0.3).to(torch.uint8)
        x = xb[off:].view(2, 3, 1001).requires_grad_(True)
        y = yb[off:].view(2, 3, 1001)
        (ops.stats(x, y).sum() + ops.exp_stats(x, y, 2.0, 1e-7).sum()).backward()
        for kind, params in (("hytver", [0.7, 0.7, 0.5, 1.0]), ("dice_pp", [2.0])):
            xc = x.detach().view(2, 3, 1001).requires_grad_(True)
            ops.loss(xc, y.view(2, 3, 1001), kind, params, True).backward()
torch.cuda.synchronize()
print("small case ok")
EOF
  step memcheck_torch 150 compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" "$WORK/small_case.py"
  [ -x "$CHECK_EXE" ] && step racecheck_check 90 compute-sanitizer --tool racecheck \
    --error-exitcode 1 "$CHECK_EXE" --quick
else
  skip memcheck_torch "needs a GPU, the extension and compute-sanitizer"
fi

# --- 7. torch.compile(reference) on CUDA (slow to compile: last) -------------------------------
if [ "$HAVE_GPU" = 1 ] && [ "$BUILT" = 0 ]; then
  step bench_compiled 240 "$PY" -m pytest benchmarks/test_bench_ops.py \
    benchmarks/test_bench_losses.py "${BENCH_ARGS[@]}" -k "compiled and not all_losses" \
    --bench-devices=cuda --benchmark-json="$OUT/bench_gpu_compiled.json"
else
  skip bench_compiled "needs a GPU and the extension"
fi

echo "total $((SECONDS - START))s of ${BUDGET}s" | tee -a "$SUMMARY"
for f in check pytest train bench bench_losses bench_targets; do
  if [ -f "$OUT/$f.log" ]; then
    echo "===== tail $f.log"
    tail -n 40 "$OUT/$f.log"
  fi
done
rm -rf "$WORK"
# The device tool brings back at most 8 files: pack the logs into one archive.
(cd "$OUT" && tar czf logs.tgz --remove-files ./*.log ./*.xml 2> /dev/null)
grep -q '^FAIL' "$SUMMARY" && exit 1
exit 0
