"""The suite's skip policy (tests/conftest.py): a skip other than a CUDA one fails the run."""

from __future__ import annotations

from pathlib import Path

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()


def test_non_cuda_skips_fail_the_run_and_cuda_skips_do_not(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_cuda="""
        import pytest

        @pytest.mark.cuda
        def test_marked():
            pytest.skip("needs a device")

        def test_reason():
            pytest.skip("no CUDA device")

        def test_runs():
            assert True
    """)
    ok = pytester.runpytest("-ra")
    ok.assert_outcomes(passed=1, skipped=2)
    assert ok.ret == 0

    pytester.makepyfile(test_missing_dep="""
        import pytest

        pytest.importorskip("a_test_dependency_that_is_not_installed")

        def test_never_runs():
            pass
    """)
    bad = pytester.runpytest("-ra")
    assert bad.ret == 1
    bad.stdout.fnmatch_lines(["*skips that are not allowed*",
                              "*test_missing_dep.py*a_test_dependency_that_is_not_installed*"])
