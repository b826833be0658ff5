"""The suite's skip policy (tests/conftest.py): only a test marked ``cuda`` may skip, and only on
a machine without a CUDA device; the skip's reason plays no part."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()
TESTS = """
    import pytest

    @pytest.mark.cuda
    def test_marked():
        pytest.skip("any reason at all")

    def test_runs():
        assert True
"""


def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *, gpu: bool,
        **files: str) -> pytest.RunResult:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(**files)
    return pytester.runpytest_inprocess("-ra", "-p", "no:cacheprovider")


def test_cuda_marked_skip_passes_without_a_device(pytester, monkeypatch):
    res = run(pytester, monkeypatch, gpu=False, test_a=TESTS)
    res.assert_outcomes(passed=1, skipped=1)
    assert res.ret == 0


def test_cuda_marked_skip_fails_the_run_on_a_machine_with_a_device(pytester, monkeypatch):
    res = run(pytester, monkeypatch, gpu=True, test_a=TESTS)
    assert res.ret == 1
    res.stdout.fnmatch_lines(["*skips that are not allowed*", "*test_marked*any reason at all"])


def test_unmarked_skip_fails_whatever_its_reason_says(pytester, monkeypatch):
    res = run(pytester, monkeypatch, gpu=False, test_a="""
        import pytest

        def test_reason_names_cuda():
            pytest.skip("no CUDA device, no GPU, no nvcc")
    """)
    assert res.ret == 1
    res.stdout.fnmatch_lines(["*skips that are not allowed*", "*test_reason_names_cuda*"])


def test_module_skip_for_a_missing_dependency_fails(pytester, monkeypatch):
    res = run(pytester, monkeypatch, gpu=False, test_missing_dep="""
        import pytest

        pytest.importorskip("a_test_dependency_that_is_not_installed")

        def test_never_runs():
            pass
    """)
    assert res.ret == 1
    res.stdout.fnmatch_lines(["*skips that are not allowed*",
                              "*test_missing_dep.py*a_test_dependency_that_is_not_installed*"])
