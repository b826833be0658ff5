"""Compile the framework-free CUDA kernels with nvcc (no GPU and no CUDA torch needed).

tests/cuda_standalone/check.cu instantiates every kernel of csrc/kernels/hytver_cuda_kernels.cuh
(including the loss ops, whose finalize kernel runs the loss algebra of
csrc/kernels/hytver_loss_algebra.h on the device); on a machine with a GPU the compiled program
also runs its self-test against a double host reference. Each framework-free kernel header also
compiles alone. Every other .cu under csrc/ that includes no torch header is compiled too (the torch
glue, csrc/cuda/hytver_cuda.cu, is built by setup.py with HYTVER_CUDA=1 instead). Skipped when
nvcc is not found (CUDA_HOME/bin, PATH, /usr/local/cuda/bin): marked ``cuda``, so the skip
policy (tests/conftest.py) allows that only on a machine without a CUDA device.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "tests" / "cuda_standalone" / "check.cu"
ARCH = os.environ.get("HYTVER_NVCC_ARCH", "sm_90")
_TORCH_INCLUDE = re.compile(r'^\s*#\s*include\s*[<"](torch|ATen|c10|caffe2)/', re.M)


def _nvcc() -> str | None:
    candidates = []
    if os.environ.get("CUDA_HOME"):
        candidates.append(os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc"))
    found = shutil.which("nvcc")
    if found:
        candidates.append(found)
    candidates.append("/usr/local/cuda/bin/nvcc")
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


NVCC = _nvcc()
# Marked cuda: a machine without a CUDA device may lack the toolkit; one with a device may not.
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(NVCC is None, reason="nvcc not found")]


def _gpu_present() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - any failure means: do not run on a GPU
        return False


def _compile(args: list[str], timeout: int = 600) -> None:
    cmd = [NVCC, "-std=c++17", "-O3", f"-arch={ARCH}", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout}\n{res.stderr}"
    warnings = [ln for ln in res.stderr.splitlines() if "warning" in ln.lower()]
    assert not warnings, "nvcc warnings:\n" + "\n".join(warnings)


def framework_free_cu_files() -> list[Path]:
    return sorted(
        p for p in (ROOT / "csrc").rglob("*.cu") if not _TORCH_INCLUDE.search(p.read_text())
    )


@pytest.fixture(scope="module")
def check_exe(tmp_path_factory):
    exe = tmp_path_factory.mktemp("cuda") / "hytver_check"
    _compile([str(CHECK), "-o", str(exe)])
    return exe


def test_check_program_compiles(check_exe):
    assert check_exe.is_file()


def test_check_program_runs_on_gpu(check_exe):
    if not _gpu_present():
        pytest.skip("no GPU to run the self-test on (compiling it is the check here)")
    res = subprocess.run([str(check_exe)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-2000:]
    assert " 0 failures" in res.stdout


def test_check_program_device_assert_on_gpu(check_exe):
    """A label outside [0, C) stops the softmax kernel with a device-side assertion: the
    program exits 0 only if the launch ends in cudaErrorAssert."""
    if not _gpu_present():
        pytest.skip("no GPU to run the assertion case on (compiling it is the check here)")
    res = subprocess.run([str(check_exe), "--assert"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and "cudaErrorAssert" in res.stdout, res.stdout + res.stderr
    assert "labels must lie in [0, C)" in res.stdout + res.stderr


def test_framework_free_cu_files_compile(tmp_path):
    for path in framework_free_cu_files():
        _compile(["-c", str(path), "-o", str(tmp_path / (path.stem + ".o"))])


def test_torch_glue_is_the_only_torch_dependent_cu():
    """The framework-free kernels must not include torch headers (the CUDA check relies on it)."""
    header = ROOT / "csrc" / "kernels" / "hytver_cuda_kernels.cuh"
    assert not _TORCH_INCLUDE.search(header.read_text())
    torch_cu = sorted(
        p.name for p in (ROOT / "csrc").rglob("*.cu") if _TORCH_INCLUDE.search(p.read_text())
    )
    assert torch_cu == ["hytver_cuda.cu"]


KERNEL_HEADERS = ["hytver_cuda_kernels.cuh", "hytver_loss_algebra.h"]


@pytest.mark.parametrize("name", KERNEL_HEADERS)
def test_kernel_headers_are_framework_free_and_compile_alone(name, tmp_path):
    """The loss algebra is shared by the CPU glue (host C++) and the CUDA finalize kernel
    (``__host__ __device__``): it must compile under nvcc on its own, without torch."""
    header = ROOT / "csrc" / "kernels" / name
    assert not _TORCH_INCLUDE.search(header.read_text())
    src = tmp_path / f"{header.stem}_alone.cu"
    src.write_text(f'#include "{header}"\n'
                   "__global__ void touch(double* out, const double* sums) {\n"
                   "  hytver::algebra::Spec spec;\n"
                   "  out[0] = hytver::algebra::loss_and_coef(spec, sums, 1, 1, 8, out + 1);\n"
                   "}\n")
    _compile(["-c", str(src), "-o", str(tmp_path / "alone.o")])
