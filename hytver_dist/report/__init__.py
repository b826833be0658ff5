"""The sweep report: Table I/II with bootstrap intervals, paired tests, box plots, from the
per-case CSVs a sweep writes (``python -m hytver_dist.report RESULTS_DIR``). Needs the
``report`` extra (pandas, scipy, statsmodels, matplotlib)."""

from .._extras import require_extra

require_extra("report", "pandas", "scipy", "statsmodels", "matplotlib")

from .build import SWEEP_FACTS_FILE, build_report, main

__all__ = ["SWEEP_FACTS_FILE", "build_report", "main"]
