"""Files a trial's rank 0 writes into its Train run directory (``<storage>/train-<trial id>``)
and the driver reads back: results travel as files on the shared storage, not inside Tune
metrics. Local paths and URIs alike, through :mod:`hytver_dist.files`."""

from __future__ import annotations

import io
from typing import Any

from ..files import read_text

CASES_FILE = "cases.csv"
WORKERS_FILE = "workers.json"


def run_name(trial_id: str) -> str:
    """The name the driver gives a trial's ``TorchTrainer`` (stable, so a restarted or resumed
    trial finds its checkpoints)."""
    return f"train-{trial_id}"


def run_dir(storage: str, trial_id: str) -> str:
    """The Train run directory of a trial."""
    return f"{storage.rstrip('/')}/{run_name(trial_id)}"


def read_cases(path: str) -> Any:
    """A ``cases.csv`` as a DataFrame (case ids stay strings), or None when missing."""
    import pandas as pd

    text = read_text(path)
    return None if text is None else pd.read_csv(io.StringIO(text), dtype={"case": str})


__all__ = ["CASES_FILE", "WORKERS_FILE", "read_cases", "run_dir", "run_name"]
