"""Helpers shared by the loss tests."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from hytver_dist import ops

# Without the compiled extension the fused cases cannot run: skipped, or failed where
# HYTVER_REQUIRE_EXT=1 says it must be there (scripts/test.sh sets it).
needs_ext = pytest.mark.skipif(
    not ops.is_available() and not os.environ.get("HYTVER_REQUIRE_EXT"),
    reason="C++ extension not built (set HYTVER_REQUIRE_EXT=1 to make this a failure)")
BACKENDS = ["reference", pytest.param("fused", marks=needs_ext)]


def capture_loss_step(loss, static_x: torch.Tensor, static_y: torch.Tensor):
    """Capture forward + backward of ``loss(static_x, static_y)`` in a CUDA graph (after two
    warm-up steps on a side stream): (graph, static value, static logit gradient). Copy new
    data into ``static_x`` / ``static_y`` and ``graph.replay()`` to rerun it."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            torch.autograd.grad(loss(static_x, static_y), static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_value = loss(static_x, static_y)
        (static_grad,) = torch.autograd.grad(static_value, static_x)
    return graph, static_value, static_grad


def kernel_names(prof) -> list[str]:
    """The CUDA kernels a profiler (CPU and CUDA activities) saw, memcpy / memset excluded."""
    return [e.name for e in prof.events() if e.device_type.name == "CUDA"
            and "memcpy" not in e.name.lower() and "memset" not in e.name.lower()]


def run_cuda_subprocess(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (``-X faulthandler``) from the repository root: a
    device-side assertion poisons the CUDA context, and a crash then names its test instead of
    taking the suite down."""
    return subprocess.run([sys.executable, "-X", "faulthandler", "-c", code],
                          capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cuda_ready() -> None:
    """Fail (not skip) a CUDA test when the extension was built without its CUDA kernels."""
    if not ops.has_cuda():
        pytest.fail("built without CUDA kernels (HYTVER_CUDA=1)")


def step_kernels(loss, x: torch.Tensor, y: torch.Tensor) -> tuple[list[str], list[str]]:
    """The kernels of one forward and of one backward of ``loss(x, y)`` on CUDA, counted by the
    profiler with CPU and CUDA activities (CUDA alone can drop kernel events)."""
    from torch.profiler import ProfilerActivity, profile

    xg = x.clone().requires_grad_(True)
    acts = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    with profile(activities=acts) as fwd:
        value = loss(xg, y)
        torch.cuda.synchronize()
    with profile(activities=acts) as bwd:
        value.backward(torch.ones((), device=x.device))
        torch.cuda.synchronize()
    return kernel_names(fwd), kernel_names(bwd)


def assert_device_assert(launch: str, message: str) -> None:
    """Run ``launch`` (code that launches a fused loss on bad data) in a subprocess, then
    synchronise: the device-side assertion must surface as an error (cudaErrorAssert, "device-side
    assert") whose message includes ``message``."""
    code = (launch + "\nprint('launched', flush=True)\n"
            "try:\n"
            "    torch.cuda.synchronize()\n"
            "except RuntimeError as exc:\n"
            "    print('error:', exc, flush=True)\n"
            "print('no error')\n")
    res = run_cuda_subprocess(code)
    out = res.stdout + res.stderr
    assert "launched" in res.stdout and "error:" in res.stdout, out
    assert "device-side assert" in out and message in out, out
