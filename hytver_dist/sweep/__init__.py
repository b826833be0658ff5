"""The Ray platform: the sweep's search space, trial resources and cluster capacity, the
driver, the trials and their Train workers, the pretraining stage as a Train run, trial files,
the progress console and every use of Ray internals (:mod:`.ray_compat`). Needs the ``sweep``
extra. ``python -m hytver_dist.sweep`` runs a sweep and its report."""

from .._extras import require_extra

require_extra("sweep", "ray", "pyarrow", "nibabel", "scipy", "pandas", "pydantic", "yaml",
              "monai", "statsmodels", "matplotlib")

from .driver import SweepInterrupted, collect_results, main, run_sweep
from .lock import SweepRunning

__all__ = ["SweepInterrupted", "SweepRunning", "collect_results", "main", "run_sweep"]
