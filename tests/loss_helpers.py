"""Helpers shared by the loss tests."""

from __future__ import annotations

import os
import subprocess
import sys

import torch


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
