"""benchmarks/gpu_check.sh's own logic, on a CPU machine: its refusals, its time budget (a step
not run is a FAIL) and, slow, a full dry run in which a benchmark selection that selects nothing
fails the run; and that every test it names exists."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ["prepare", "build", "check", "targets", "pytest", "errors", "memcheck_check",
         "memcheck_torch", "racecheck", "train"]


def check(tmp_path: Path, *args: str, timeout: float = 60, **env: str
          ) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=tmp_path,
                          env={**os.environ, "PYTHON": sys.executable,
                               "OUT": str(tmp_path / "out"), **env})


def prepared(tmp_path: Path) -> dict[str, str]:
    """What gpu_prepare.sh leaves, in name only (a wheel file, a case folder)."""
    wheels, data = tmp_path / "whl", tmp_path / "data"
    (data / "syn000").mkdir(parents=True)
    (data / "syn000" / "ground_truth.nii.gz").touch()
    wheels.mkdir()
    (wheels / "pkg-1.0-py3-none-any.whl").touch()
    (wheels / "MANIFEST").write_text("# python 3.11\npkg-1.0-py3-none-any.whl\n")
    return {"HYTVER_GPU_WHEELS": str(wheels), "HYTVER_GPU_DATA": str(data)}


def test_every_test_it_names_exists():
    """The CUDA and error-path selections name tests that are collected (a renamed or deleted
    test would otherwise fail only on the GPU host)."""
    text = SCRIPT.read_text()
    for name in ("CUDA_TESTS", "ERROR_TESTS"):  # one run each: a whole file hides its node ids
        ids = text.split(f"\n{name}=(", 1)[1].split(")", 1)[0].split()
        assert len(ids) >= 4 and all(i.startswith("tests/") for i in ids), ids
        out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p",
                              "no:cacheprovider", "-o", "addopts=", *ids],
                             capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert out.returncode == 0, name + out.stdout[-1500:] + out.stderr[-1500:]


def test_without_a_gpu_it_exits_at_once_saying_so(tmp_path):
    started = time.monotonic()
    res = check(tmp_path, HYTVER_NVIDIA_SMI="false", **prepared(tmp_path))
    assert res.returncode == 2
    assert "no CUDA GPU on this machine (false -L finds no GPU)" in res.stderr, res.stderr
    assert "--dry-run" in res.stderr
    assert time.monotonic() - started < 10
    assert not (tmp_path / "out").exists()  # nothing started


@pytest.mark.parametrize("missing", ["wheel", "manifest", "data"])
def test_it_refuses_to_start_without_the_prepared_wheels_and_data(tmp_path, missing):
    env = prepared(tmp_path)
    if missing == "wheel":
        (Path(env["HYTVER_GPU_WHEELS"]) / "pkg-1.0-py3-none-any.whl").unlink()
    elif missing == "manifest":
        (Path(env["HYTVER_GPU_WHEELS"]) / "MANIFEST").unlink()
    else:
        (Path(env["HYTVER_GPU_DATA"]) / "syn000" / "ground_truth.nii.gz").unlink()
    res = check(tmp_path, "--dry-run", **env)
    assert res.returncode == 2
    assert "bash benchmarks/gpu_prepare.sh" in res.stderr, res.stderr
    assert {"wheel": "pkg-1.0-py3-none-any.whl", "manifest": "MANIFEST is missing",
            "data": "holds no case"}[missing] in res.stderr


def test_steps_left_without_budget_fail_the_run(tmp_path):
    res = check(tmp_path, "--dry-run", HYTVER_GPU_BUDGET="1", **prepared(tmp_path))
    assert res.returncode == 1, res.stdout + res.stderr
    lines = (tmp_path / "out" / "summary.txt").read_text().splitlines()[1:]
    assert [ln.split()[1] for ln in lines] == STEPS  # one line per step, in order
    assert all(ln.startswith("FAIL") and "not run" in ln for ln in lines
               if not ln.startswith("DRY")), lines
    assert "not run: time budget" in lines[0]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_dry_run_runs_every_cpu_step_and_an_empty_selection_fails(tmp_path):
    """Slow (about 3 minutes): needs benchmarks/gpu_prepare.sh's output in the checkout (made
    here when missing, for this Python) and the extension built in place."""
    if not (ROOT / ".whl" / "MANIFEST").is_file():
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_prepare.sh")], check=True,
                       env={**os.environ, "PYTHON": sys.executable,
                            "GPU_PYTHON_VERSION": version}, timeout=300)
    res = check(tmp_path, "--dry-run", timeout=840, HYTVER_TARGETS_K="no_such_target")
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    summary = (tmp_path / "out" / "summary.txt").read_text()
    status = {ln.split()[1]: ln.split()[0] for ln in summary.splitlines()[1:]}
    assert status == {"prepare": "ok", "build": "ok", "check": "DRY", "targets": "FAIL",
                      "pytest": "ok", "errors": "ok", "memcheck_check": "DRY",
                      "memcheck_torch": "DRY", "racecheck": "DRY", "train": "ok"}, summary
    assert "targets  rc=5" in summary  # pytest: no test selected
