#!/usr/bin/env bash
# The GPU check of the fused kernels: one command, at most HYTVER_GPU_BUDGET seconds (default
# 540 = 9 minutes) on an H100 or H200 host (Python with a CUDA torch, nvcc, ninja, pytest,
# pytest-benchmark and compute-sanitizer; no package index needed).
#
#   bash benchmarks/gpu_prepare.sh            # first, on a machine with pip: .whl/ + .gpu_data/
#   bash benchmarks/gpu_check.sh              # on the GPU host; results under $OUT
#   bash benchmarks/gpu_check.sh --dry-run    # on a CPU machine: the script's own logic
#
# It refuses to start without a CUDA GPU or without gpu_prepare.sh's wheels and data. Then,
# in this order (docs/benchmarks.md says what each measures):
#   prepare         install every wheel of .whl/ (MONAI included) before anything else runs
#   build           the extension with its CUDA kernels (check.cu compiles meanwhile)
#   check           tests/cuda_standalone/check.cu: self-test against a double host reference,
#                   then raw kernel timings (--bench)
#   targets         the sigmoid and softmax performance targets (pytest -k "$TARGETS_K" in
#                   $TARGETS_FILES)
#                   -> $OUT/bench_targets_gpu.json
#   pytest          the CUDA tests ($CUDA_TESTS), the error-path tests deselected
#   errors          each error-path test ($ERROR_TESTS) in its own `python -X faulthandler`
#                   process: a crash names the test and the rest still runs
#   memcheck_check, memcheck_torch, racecheck    compute-sanitizer on the self-test and on a
#                   small torch case
#   train           30 iterations of training on the GPU with bf16 autocast
# Every step runs under `timeout`. A step's limit is its cap, shortened so that each later step
# keeps its floor of the budget; a step whose floor no longer fits, or whose prerequisite
# failed, is not run and is a FAIL. A pytest step also fails when it selected no test or any
# test skipped. The script ends with one summary line per step ($OUT/summary.txt) and exits 0
# only when every step passed. Logs are packed into $OUT/logs.tgz.
#
# --dry-run (no GPU needed): checks the prerequisites and installs the wheels, compiles check.cu
# when nvcc exists, collects every pytest selection (a -k expression or node id that selects
# nothing fails) and trains 4 iterations on the CPU with the extension already built in place;
# the GPU steps print their command and are marked DRY. Its time limits are 4x (HYTVER_GPU_DRY_SCALE).
set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# ----------------------------------------------------------------------------- configuration
BUDGET=${HYTVER_GPU_BUDGET:-540}
WHEELS=${HYTVER_GPU_WHEELS:-$ROOT/.whl}
DATA=${HYTVER_GPU_DATA:-$ROOT/.gpu_data/synth}
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/hytver_gpu_out}
# The benchmark targets, by pytest -k expression (the file decides what they measure).
TARGETS_FILES=(benchmarks/test_bench_losses.py benchmarks/test_bench_softmax.py)
TARGETS_K=${HYTVER_TARGETS_K:-target_ratios}
TARGETS_ARGS=(--bench-devices=cuda --bench-sizes=all --bench-rounds=100)
# The CUDA pytest step: whole files or node ids.
CUDA_TESTS=(tests/test_ops.py tests/test_losses_fused.py tests/test_cuda_compile.py
  tests/test_inference.py::test_cuda_model_with_cpu_image
  tests/test_losses_softmax.py::test_cuda_matches_the_oracle
  tests/test_losses_softmax.py::test_cuda_step_no_sync_few_launches_graph_capture)
# Error-path tests (node ids, prefixes of parametrised ids): one process each.
ERROR_TESTS=(tests/test_ops.py::test_loss_op_errors_name_the_problem
  tests/test_ops.py::test_cuda_loss_op_errors_name_the_problem_in_a_subprocess
  tests/test_ops.py::test_cuda_invalid_target_stops_on_the_device
  tests/test_losses_softmax.py::test_cuda_invalid_target_is_a_device_assert_in_a_subprocess)
TRAIN_ITERATIONS=30
# Steps in order, "name:cap:floor" in seconds (the floors sum to 335 of the 540).
STEPS=(prepare:60:20 build:240:60 check:60:15 targets:180:60 pytest:200:60 errors:60:20
  memcheck_check:60:20 memcheck_torch:90:30 racecheck:60:20 train:90:30)

# ------------------------------------------------------------------------------- refusals
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
die() { echo "gpu_check.sh: $*" >&2; exit 2; }

if [ "$DRY" = 0 ]; then
  why=""
  SMI=${HYTVER_NVIDIA_SMI:-nvidia-smi}
  if ! command -v "$SMI" > /dev/null 2>&1; then why="$SMI not found"
  elif ! "$SMI" -L > /dev/null 2>&1; then why="$SMI -L finds no GPU"
  elif ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
      > /dev/null 2>&1; then why="$PY: torch.cuda.is_available() is False"
  fi
  [ -n "$why" ] && die "no CUDA GPU on this machine ($why): this check runs on a GPU host only;
on a CPU machine, 'bash benchmarks/gpu_check.sh --dry-run' checks the script itself"
fi
prepare_hint="make them with 'bash benchmarks/gpu_prepare.sh' on a machine with pip and this
repository's .venv (GPU_PYTHON_VERSION=<the GPU host's python version>), then copy .whl/ and
.gpu_data/ into this checkout"
[ -f "$WHEELS/MANIFEST" ] || die "no wheels: $WHEELS/MANIFEST is missing; $prepare_hint"
while read -r wheel; do
  [ -f "$WHEELS/$wheel" ] || die "wheel $WHEELS/$wheel (listed in MANIFEST) is missing; $prepare_hint"
done < <(grep -v '^#' "$WHEELS/MANIFEST")
ls "$DATA"/*/ground_truth.nii.gz > /dev/null 2>&1 || die "no data: $DATA holds no case; $prepare_hint"

# ---------------------------------------------------------------------------------- set-up
mkdir -p "$OUT"
rm -f "$OUT"/*.log "$OUT"/*.xml "$OUT"/*.json "$OUT/logs.tgz"
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"
WORK=$(mktemp -d /tmp/hytver_gpu.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
CHECK_EXE=$WORK/hytver_check
START=$SECONDS
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH="$CUDA_HOME/bin:$PATH"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
export HYTVER_LIMITED_API=${HYTVER_LIMITED_API:-0}
if [ "$DRY" = 0 ]; then export HYTVER_CUDA=${HYTVER_CUDA:-1}; else export HYTVER_CUDA=${HYTVER_CUDA:-auto}; fi
export PYTHONPATH="$WORK/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
NVCC_ARCH=sm_$(echo "${TORCH_CUDA_ARCH_LIST%%;*}" | tr -d '.+PTX ')
PYTEST=("$PY" -m pytest -p no:cacheprovider -o addopts= -q -rs)
{
  echo "date: $(date -u +%FT%TZ)  host: $(hostname)  nproc: $(nproc)  dry-run: $DRY"
  echo "HYTVER_CUDA=$HYTVER_CUDA TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS CUDA_HOME=$CUDA_HOME"
  [ "$DRY" = 0 ] && nvidia-smi
  command -v nvcc && nvcc --version | tail -2
  command -v compute-sanitizer || echo "compute-sanitizer: not found"
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())"
} > "$OUT/env.log" 2>&1

# A dry run runs on a CPU machine, often a small shared one: its limits are scaled up.
SCALE=1
[ "$DRY" = 1 ] && SCALE=${HYTVER_GPU_DRY_SCALE:-4}
BUDGET=$((BUDGET * SCALE))
declare -A CAP FLOOR RESULT
ORDER=()
for s in "${STEPS[@]}"; do
  IFS=: read -r name cap floor <<< "$s"
  ORDER+=("$name"); CAP[$name]=$((cap * SCALE)); FLOOR[$name]=$((floor * SCALE))
done
record() { RESULT[$1]=$2; echo "$2"; }
# Seconds the steps after $1 keep for themselves.
later_floors() {
  local seen=0 sum=0 n
  for n in "${ORDER[@]}"; do
    [ "$seen" = 1 ] && sum=$((sum + FLOOR[$n]))
    [ "$n" = "$1" ] && seen=1
  done
  echo "$sum"
}
# step NAME CMD...: run CMD under its time limit, logging to $OUT/NAME.log. Returns its rc.
step() {
  local name=$1 left limit rc t0
  shift
  left=$((BUDGET - (SECONDS - START) - $(later_floors "$name")))
  limit=${CAP[$name]}
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt "${FLOOR[$name]}" ]; then
    record "$name" "FAIL  $name  not run: time budget (${left}s left after the later steps' floors, needs ${FLOOR[$name]}s)"
    return 99
  fi
  t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  record "$name" "$([ $rc = 0 ] && echo 'ok  ' || echo FAIL)  $name  rc=$rc $((SECONDS - t0))s (limit ${limit}s)$([ $rc = 124 ] && echo ', timed out')"
  return $rc
}
not_run() { record "$1" "FAIL  $1  not run: $2"; }
dry() { local name=$1; shift; echo "would run: $*" > "$OUT/$name.log"; record "$name" "DRY   $name  (dry run: needs a GPU) $*"; }
# junit_clean.py XML: the pytest run selected tests and none failed, errored or skipped.
cat > "$WORK/junit_clean.py" << 'EOF'
import sys
import xml.etree.ElementTree as ET

suites = list(ET.parse(sys.argv[1]).getroot().iter("testsuite"))
n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
print("junit:", n)
sys.exit(0 if n["tests"] > 0 and n["failures"] == n["errors"] == n["skipped"] == 0 else 1)
EOF
# pytest_step NAME PYTEST-ARGS...: a pytest run that must select tests, none skipping (in a dry
# run: collect only; pytest exits 5 when the selection is empty, 4 for an unknown node id).
pytest_step() {
  local name=$1
  shift
  if [ "$DRY" = 1 ]; then step "$name" "$@" --collect-only; return; fi
  step "$name" env PY="$PY" JUNIT_CLEAN="$WORK/junit_clean.py" bash -c '"$@" --junitxml="$0"
    rc=$?; "$PY" "$JUNIT_CLEAN" "$0" || exit $((rc ? rc : 1)); exit $rc' "$OUT/$name.xml" "$@"
}

# --------------------------------------------------------------------------------- prepare
cat > "$WORK/prepare.sh" << EOF
set -e
grep -v '^#' "$WHEELS/MANIFEST" | sed "s|^|$WHEELS/|" | xargs "$PY" -m pip install --no-index \
  --no-deps --no-compile --no-cache-dir --target "$WORK/site"
"$PY" -c "import monai, nibabel, pydantic, hytver_dist.run.train_cli; print('monai', monai.__version__)"
EOF
step prepare bash "$WORK/prepare.sh"
PREPARED=$?

# ---------------------------------------------------------------- build (+ check.cu meanwhile)
HAVE_NVCC=0
command -v nvcc > /dev/null 2>&1 && HAVE_NVCC=1
NVCC_LIMIT=$((BUDGET - (SECONDS - START) - FLOOR[train]))  # within the budget, like the steps
[ "$NVCC_LIMIT" -gt 240 ] && NVCC_LIMIT=240
[ "$NVCC_LIMIT" -lt 30 ] && HAVE_NVCC=0
if [ "$HAVE_NVCC" = 1 ]; then
  (timeout "$NVCC_LIMIT" nvcc -std=c++17 -O3 "-arch=$NVCC_ARCH" -lineinfo tests/cuda_standalone/check.cu \
    -o "$CHECK_EXE" > "$OUT/check_compile.log" 2>&1; echo "rc=$?" >> "$OUT/check_compile.log") &
  NVCC_PID=$!
fi
cat > "$WORK/build.sh" << 'EOF'
set -x
"$PY" -m pip install --no-build-isolation --no-deps -e . && exit 0
echo "== pip editable install failed: retrying with --break-system-packages (PEP 668)"
"$PY" -m pip install --no-build-isolation --no-deps -e . --break-system-packages && exit 0
echo "== pip failed again: setup.py build_ext --inplace (PYTHONPATH=$PWD)"
"$PY" setup.py build_ext --inplace
EOF
cat > "$WORK/import.py" << EOF
import torch
from hytver_dist import ops
print("extension", ops.is_available(), "cuda kernels", ops.has_cuda(), "cpu isa", ops.cpu_isa())
assert ops.is_available(), ops.extension_error()
assert ops.has_cuda() or "$HYTVER_CUDA" != "1", "built without CUDA kernels"
EOF
if [ "$DRY" = 0 ]; then
  step build bash -c "PY='$PY' bash '$WORK/build.sh' && '$PY' '$WORK/import.py'"
else
  step build "$PY" "$WORK/import.py"  # the extension built in place beforehand (scripts/setup.sh)
fi
BUILT=$?

# ------------------------------------------------------------------------------ check.cu
if [ "$HAVE_NVCC" = 1 ]; then wait "$NVCC_PID"; fi
if [ ! -x "$CHECK_EXE" ]; then
  not_run check "check.cu did not compile (check_compile.log; nvcc run: $HAVE_NVCC)"
elif [ "$DRY" = 1 ]; then
  dry check "$CHECK_EXE" --bench
else
  step check "$CHECK_EXE" --bench
fi

# ------------------------------------------------------------------- the benchmark targets
TARGETS=("${PYTEST[@]}" "${TARGETS_FILES[@]}" -k "$TARGETS_K" --benchmark-enable --benchmark-only
  --benchmark-columns=min,median,iqr,rounds "${TARGETS_ARGS[@]}")
DESELECT=()
for t in "${ERROR_TESTS[@]}"; do DESELECT+=(--deselect "$t"); done
CUDA_PYTEST=("${PYTEST[@]}" "${CUDA_TESTS[@]}" "${DESELECT[@]}" --durations=15)
if [ "$PREPARED" != 0 ] || [ "$BUILT" != 0 ]; then
  for n in targets pytest errors; do not_run $n "the prepare or build step failed"; done
else
  if [ "$DRY" = 1 ]; then  # the selection must exist: collected on the CPU
    pytest_step targets "${PYTEST[@]}" "${TARGETS_FILES[@]}" -k "$TARGETS_K" --bench-devices=cpu
  else
    pytest_step targets "${TARGETS[@]}" --benchmark-json="$OUT/bench_targets_gpu.json"
  fi

  # ------------------------------------------------------------------------ CUDA pytest
  pytest_step pytest "${CUDA_PYTEST[@]}"

  # --------------------------------------------- error paths, one faulthandler process each
  cat > "$WORK/errors.sh" << EOF
failed=0; i=0
for t in ${ERROR_TESTS[*]}; do
  i=\$((i + 1)); echo "===== \$t"
  if [ "$DRY" = 1 ]; then
    "$PY" -m pytest -p no:cacheprovider -o addopts= -q "\$t" --collect-only; rc=\$?
  else
    "$PY" -X faulthandler -m pytest -p no:cacheprovider -o addopts= -q -rs "\$t" \\
      --junitxml="$OUT/errors_\$i.xml"; rc=\$?
    "$PY" "$WORK/junit_clean.py" "$OUT/errors_\$i.xml" || rc=\$((rc ? rc : 1))
  fi
  [ \$rc = 0 ] || { echo "FAILED (rc=\$rc; 128+N: killed by signal N): \$t"; failed=1; }
done
exit \$failed
EOF
  step errors bash "$WORK/errors.sh"
fi

# ----------------------------------------------------------------------------- sanitizers
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
        labels = (yb[off:].view(2, 3, 1001)[:, :1] * 2).clamp(max=2)  # a label map in {0, 2}
        for kind, params in (("hytver", [0.7, 0.7, 0.5, 1.0]), ("dice_pp", [2.0])):
            xc = x.detach().view(2, 3, 1001).requires_grad_(True)
            ops.loss(xc, y.view(2, 3, 1001), kind, params, True).backward()
            xs = x.detach().view(2, 3, 1001).requires_grad_(True)
            ops.loss(xs, labels, kind, params, True, activation="softmax").backward()
torch.cuda.synchronize()
print("small case ok")
EOF
SAN=(compute-sanitizer --error-exitcode 1)
HAVE_SAN=0
command -v compute-sanitizer > /dev/null 2>&1 && HAVE_SAN=1
sanitize() {
  local name=$1 needs=$2
  shift 2
  if [ "$DRY" = 1 ]; then dry "$name" "$@"
  elif [ "$HAVE_SAN" = 0 ]; then not_run "$name" "compute-sanitizer not found"
  elif [ "$needs" = exe ] && [ ! -x "$CHECK_EXE" ]; then not_run "$name" "check.cu did not compile"
  elif [ "$needs" = ext ] && [ "$BUILT" != 0 ]; then not_run "$name" "the build step failed"
  else step "$name" "$@"
  fi
}
sanitize memcheck_check exe "${SAN[@]}" --tool memcheck --leak-check full "$CHECK_EXE" --quick
sanitize memcheck_torch ext "${SAN[@]}" --tool memcheck "$PY" "$WORK/small_case.py"
sanitize racecheck exe "${SAN[@]}" --tool racecheck "$CHECK_EXE" --quick

# ----------------------------------------------------------------------------- training run
if [ "$DRY" = 1 ]; then TRAIN_DEV=cpu TRAIN_IT=4; else TRAIN_DEV=cuda TRAIN_IT=$TRAIN_ITERATIONS; fi
cat > "$WORK/train.sh" << EOF
set -e
"$PY" -c "import sys, hytver_dist.train; assert 'ray' not in sys.modules, 'train imports ray'"
"$PY" -m hytver_dist.train --config default --data "$DATA" --loss hytver --seed 0 \
  --device $TRAIN_DEV --cache "$WORK/cache" --out "$WORK/run" --no-progress \
  --set training.iterations=$TRAIN_IT --set training.eval_every=$TRAIN_IT \
  --set training.checkpoint_every=$TRAIN_IT --set training.amp=true --set pretrain=null \\
  --set data.split.n_test=2 --set data.split.n_val=2 --set storage.path="$WORK/storage"
"$PY" "$ROOT/benchmarks/check_train_metrics.py" "$WORK/run/metrics.csv"
EOF
if [ "$PREPARED" != 0 ] || [ "$BUILT" != 0 ]; then
  not_run train "the prepare or build step failed"
else
  step train bash "$WORK/train.sh"
fi

# -------------------------------------------------------------------------------- summary
{
  echo "== gpu_check $([ "$DRY" = 1 ] && echo '(DRY RUN: not a GPU check) ')total $((SECONDS - START))s of ${BUDGET}s"
  for n in "${ORDER[@]}"; do echo "${RESULT[$n]:-FAIL  $n  not run: no result recorded}"; done
} > "$SUMMARY"
for n in "${ORDER[@]}"; do
  case "${RESULT[$n]:-FAIL}" in FAIL*) [ -f "$OUT/$n.log" ] && { echo "===== tail $n.log"; tail -n 30 "$OUT/$n.log"; } ;; esac
done
[ -f "$OUT/check.log" ] && { echo "===== tail check.log"; tail -n 25 "$OUT/check.log"; }
[ -f "$OUT/targets.log" ] && { echo "===== tail targets.log"; tail -n 25 "$OUT/targets.log"; }
(cd "$OUT" && tar czf logs.tgz --remove-files ./*.log ./*.xml 2> /dev/null)
cat "$SUMMARY"
grep -q '^FAIL' "$SUMMARY" && exit 1
exit 0
