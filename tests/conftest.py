"""Shared pytest fixtures, and the skip policy (only `cuda` tests without a CUDA device may
skip).

``synth_dataset``: a tiny synthetic MSSEG-2-layout dataset (4 cases of 4 mm voxels, 1 without
new lesions, seed 0), written once per session; about 2 s. Treat it as read-only: copy a case
folder (``shutil.copytree``) before modifying files.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["pytester"]


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root folder holding ``syn000 .. syn003/`` (``flair_time01/02_on_middle_space.nii.gz``,
    ``ground_truth.nii.gz``) and ``manifest.json``."""
    from hytver_dist.data.synth import generate_dataset

    root = tmp_path_factory.mktemp("synth_tiny")
    generate_dataset(root, 4, seed=0, size="tiny", n_negative=1)
    return root


# ------------------------------------------------------------------------- skip policy
# CI must not go green by skipping: a test may skip only when it is marked `cuda` and this
# machine has no CUDA device (torch.cuda.is_available()), whatever its reason says. Any other
# skip (a missing test dependency, a collection-time skip, a `cuda` test skipping on a machine
# with a GPU) fails the run (`pytest -ra` lists every skip with its reason).
_bad_skips: list[str] = []


@functools.cache
def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        if item.get_closest_marker("cuda") is None or _cuda_available():
            _bad_skips.append(f"{item.nodeid}: {_skip_reason(report)}")


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:  # a whole module skipped: no test there is judged, so never allowed
        _bad_skips.append(f"{report.nodeid}: {_skip_reason(report)}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _bad_skips:
        terminalreporter.section("skips that are not allowed (only tests marked cuda, on a "
                                 "machine without a CUDA device)")
        for line in _bad_skips:
            terminalreporter.line(line)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # NO_TESTS_COLLECTED too: every module skipped at collection must not read as "nothing".
    if _bad_skips and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
