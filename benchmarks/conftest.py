"""Shared benchmark options and fixtures (pytest-benchmark).

Options:
  --bench-sizes    small (default) | all | comma list of shapes like 4x1x80x80x80,2x1x64x64x64.
                   small: 4x1x80x80x80 on the CPU; on CUDA also 2x1x160x192x160.
                   all: both sizes on every device.
  --bench-devices  auto (default: cpu, plus cuda when available) | cpu | cuda | cpu,cuda
  --bench-dtypes   comma list of logits dtypes (default float32): float32,bfloat16,float16
  --bench-rounds   timed rounds per benchmark (default: 10 on the CPU, 50 on CUDA)
  --bench-peak-gbps  the GPU's memory bandwidth for the bandwidth fractions (default: looked up
                   by device name in DEVICE_BANDWIDTH below)

A test that takes the ``bench_case`` fixture is parametrised over device x shape x dtype (ids
like ``cpu-4x1x80x80x80-float32``). Use :func:`make_batch` for inputs and :func:`run_bench` to
time a step (it warms up untimed, synchronises CUDA and sets group / extra_info).

Run: ``pytest benchmarks --benchmark-enable --benchmark-only`` (the project's addopts disable
benchmarks by default), add ``--benchmark-json=PATH`` to save.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import pytest
import torch

SMALL = (4, 1, 80, 80, 80)
LARGE = (2, 1, 160, 192, 160)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass(frozen=True)
class BenchCase:
    device: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    target_dtype: torch.dtype = torch.uint8
    rounds: int = 10

    @property
    def shape_str(self) -> str:
        return "x".join(str(s) for s in self.shape)

    @property
    def dtype_str(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def id(self) -> str:
        return f"{self.device}-{self.shape_str}-{self.dtype_str}"

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def pytest_addoption(parser):
    group = parser.getgroup("hytver benchmarks")
    group.addoption("--bench-sizes", default="small", help="small | all | 4x1x80x80x80,...")
    group.addoption("--bench-devices", default="auto", help="auto | cpu | cuda | cpu,cuda")
    group.addoption("--bench-dtypes", default="float32", help="float32,bfloat16,float16")
    group.addoption("--bench-rounds", default=0, type=int, help="timed rounds (0: per device)")
    group.addoption("--bench-peak-gbps", default=0.0, type=float,
                    help="the GPU's memory bandwidth in GB/s (0: from the table of known devices)")


def _devices(spec: str) -> list[str]:
    if spec == "auto":
        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    devices = [d.strip() for d in spec.split(",") if d.strip()]
    for d in devices:
        if d not in ("cpu", "cuda"):
            raise pytest.UsageError(f"--bench-devices: unknown device {d!r}")
    return devices


def _shapes(spec: str, device: str) -> list[tuple[int, ...]]:
    if spec == "small":
        return [SMALL, LARGE] if device == "cuda" else [SMALL]
    if spec == "all":
        return [SMALL, LARGE]
    try:
        return [tuple(int(v) for v in s.strip().split("x")) for s in spec.split(",") if s.strip()]
    except ValueError as exc:
        raise pytest.UsageError(f"--bench-sizes: cannot parse {spec!r}") from exc


def bench_cases(config) -> list[BenchCase]:
    rounds = config.getoption("--bench-rounds")
    dtypes = []
    for name in config.getoption("--bench-dtypes").split(","):
        name = name.strip()
        if name not in _DTYPES:
            raise pytest.UsageError(f"--bench-dtypes: unknown dtype {name!r}")
        dtypes.append(_DTYPES[name])
    cases = []
    for device in _devices(config.getoption("--bench-devices")):
        for shape in _shapes(config.getoption("--bench-sizes"), device):
            for dtype in dtypes:
                r = rounds or (50 if device == "cuda" else 10)
                cases.append(BenchCase(device, shape, dtype, rounds=r))
    return cases


def pytest_generate_tests(metafunc):
    if "bench_case" in metafunc.fixturenames:
        cases = bench_cases(metafunc.config)
        metafunc.parametrize("bench_case", cases, ids=[c.id for c in cases])


def pytest_collection_modifyitems(config, items):
    if "cuda" in _devices(config.getoption("--bench-devices")) and not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="no CUDA device")
        for item in items:
            params = getattr(getattr(item, "callspec", None), "params", {})
            if any(isinstance(v, BenchCase) and v.device == "cuda" for v in params.values()):
                item.add_marker(skip)


_REPORT: list[str] = []


def report_line(line: str) -> None:
    """Print ``line`` in the terminal summary at the end of the run."""
    _REPORT.append(line)


def pytest_terminal_summary(terminalreporter):
    for line in _REPORT:
        terminalreporter.write_line(line)


def make_batch(case: BenchCase, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ~ N(0, 3^2) in the case's dtype and a ~10 % foreground target."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(case.shape, generator=g) * 3).to(case.dtype)
    y = (torch.rand(case.shape, generator=g) < 0.1).to(case.target_dtype)
    return x.to(case.device), y.to(case.device)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_bench(
    benchmark,
    case: BenchCase,
    step: Callable[..., object],
    *,
    group: str,
    setup: Callable[[], tuple] | None = None,
    extra_info: dict | None = None,
    warmup_calls: int = 2,
):
    """Time ``step`` (optionally fed by an untimed ``setup`` returning its args).

    The step's output is dropped before the next round, as in a training loop (where the
    logits' gradient goes on into the network's backward and is freed). Keeping each round's
    output alive until the next one returns, pytest-benchmark's default, makes glibc hand the
    large buffers back to the kernel and fault them in again every round, which times the
    allocator rather than the loss.
    """

    def timed(*args):
        step(*args)
        sync(case.device)

    for _ in range(warmup_calls):  # keeps compilation and first-touch allocation out
        timed(*(setup() if setup else ()))
    benchmark.group = f"{group} {case.shape_str} {case.dtype_str} {case.device}"
    benchmark.extra_info.update({"voxels": case.numel, "device": case.device, **(extra_info or {})})
    if setup is not None:

        def setup_args():
            args = setup()
            sync(case.device)
            return args, {}

        return benchmark.pedantic(timed, setup=setup_args, rounds=case.rounds, iterations=1)
    return benchmark.pedantic(timed, rounds=case.rounds, iterations=1, warmup_rounds=1)


# Memory bandwidth of known devices, bytes per second (vendor figures), by a name substring.
DEVICE_BANDWIDTH = {
    "H200": 4.8e12,
    "H100 SXM": 3.35e12,
    "H100 NVL": 3.9e12,
    "H100 PCIe": 2.0e12,
    "H100": 3.35e12,  # unlabelled H100: the SXM part
    "A100-SXM4-80GB": 2.04e12,
    "A100-SXM4-40GB": 1.56e12,
    "A100 80GB PCIe": 1.94e12,
    "A100-PCIE-40GB": 1.56e12,
    "L40S": 0.864e12,
    "A10": 0.6e12,
}


def kernel_seconds(step, repeats: int = 10) -> tuple[float, int]:
    """Device time of ``step``'s kernels per call, from the profiler's kernel events (CPU and
    CUDA activities; memcpy / memset excluded), and the number of kernels per call."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            step()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"
               and "memcpy" not in e.name.lower() and "memset" not in e.name.lower()]
    return sum(e.time_range.elapsed_us() for e in kernels) / 1e6 / repeats, len(kernels) // repeats


def device_bandwidth(name: str, override_gbps: float = 0.0) -> float | None:
    """Bytes per second of the GPU ``name`` (the longest matching entry of DEVICE_BANDWIDTH),
    or ``override_gbps`` when given; None for a device the table does not know."""
    if override_gbps > 0:
        return override_gbps * 1e9
    hits = [k for k in DEVICE_BANDWIDTH if k.lower() in name.lower()]
    return DEVICE_BANDWIDTH[max(hits, key=len)] if hits else None


def _timer(device: str):
    """Seconds of one call of a step: CUDA events on a GPU, perf_counter on the CPU."""
    if device != "cuda":
        def cpu_time(step):
            t0 = time.perf_counter()
            step()
            return time.perf_counter() - t0
        return cpu_time

    def gpu_time(step):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    return gpu_time


def round_robin_ms(steps: dict, case: BenchCase) -> dict:
    """Each step's minimum time in ms over ``case.rounds`` rounds, the steps timed round-robin
    (one untimed + one timed call of each per round, so that a shared machine's slow spells hit
    them all alike), after two warm-up calls each (compilation, first-touch allocation)."""
    for step in steps.values():
        step()
        step()
    sync(case.device)
    timer = _timer(case.device)
    times: dict = {key: [] for key in steps}
    for _ in range(case.rounds):
        for key, step in steps.items():
            # An untimed step of the same provider first: in training a loss step follows the
            # same loss's previous step, and the allocator state that leaves (whether its large
            # buffers still sit in the heap or must be faulted in anew) belongs to the
            # provider, not to whichever provider the round-robin ran before it.
            step()
            times[key].append(timer(step))
    return {key: min(v) * 1e3 for key, v in times.items()}


def ratio_line(title: str, case: BenchCase, ms: dict, ratios: dict) -> str:
    """The one-line summary of a round-robin ratio run: every step's time, then the ratios."""
    return (f"{title}, {case.id}, full steps round-robin, min of {case.rounds} rounds: "
            + ", ".join(f"{n} {p} {v:.3f} ms" for (n, p), v in ms.items()) + "; "
            + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))


def kernel_report(step, moved: int, step_ms: float, peak_gbps: float) -> tuple[dict, str]:
    """Kernel time of the CUDA ``step`` (:func:`kernel_seconds`) next to its step time, with the
    bandwidth ``moved`` bytes per step make and its fraction of the device's bandwidth
    (:func:`device_bandwidth`): (extra_info entries, a report fragment)."""
    kernel_s, launches = kernel_seconds(step)
    name = torch.cuda.get_device_name()
    peak = device_bandwidth(name, peak_gbps)
    rate = moved / kernel_s
    info = {"device": name, "kernel_us": kernel_s * 1e6, "kernels": launches,
            "step_us": step_ms * 1e3, "bytes_per_step": moved, "kernel_bytes_per_second": rate}
    line = (f"; {name}: kernels {kernel_s * 1e6:.1f} us ({launches} kernels, profiler) in a "
            f"{step_ms * 1e3:.1f} us step, {rate / 1e9:.0f} GB/s")
    if peak is not None:
        info["fraction_of_device_bandwidth"] = rate / peak
        line += f" = {rate / peak:.0%} of {peak / 1e9:.0f} GB/s"
    return info, line


def finish_ratios(benchmark, request, case: BenchCase, info: dict, line: str, step,
                  step_ms: float, moved: int, group: str, extra_info: dict) -> None:
    """Record a target-ratio run (extra_info and the end-of-run report line; on CUDA with the
    fused ``step``'s kernel time for its ``moved`` bytes, :func:`kernel_report`) and time
    ``step`` once more as the test's own benchmark."""
    if case.device == "cuda":
        extra, text = kernel_report(step, moved, step_ms,
                                    request.config.getoption("--bench-peak-gbps"))
        info, line = {**info, **extra}, line + text
    benchmark.extra_info.update(info)
    report_line(line)
    run_bench(benchmark, case, step, group=group, extra_info=extra_info)


@pytest.fixture
def two_threads():
    """The CPU protocol of the targets: 2 threads (restored afterwards)."""
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)
