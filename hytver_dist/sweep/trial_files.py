"""Files a trial's rank 0 writes into its Train run directory (``<storage>/train-<trial id>``)
and the driver reads back: results travel as files on the shared storage, not inside Tune
metrics. Local paths and URIs alike, through :mod:`hytver_dist.files`."""

from __future__ import annotations

import io
import json
from typing import Any

from ..files import read_text, write_text

CASES_FILE = "cases.csv"
WORKERS_FILE = "workers.json"
# The trial's final report, written after the test rows of its last seed: its presence (with
# rows for every seed) means the trial's work is done.
FINAL_FILE = "final.json"


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


def write_final(out: str, seeds: list[int], metrics: dict[str, Any]) -> None:
    """Record the trial's final report in its run directory ``out`` (after its cases file)."""
    write_text(f"{out}/{FINAL_FILE}", json.dumps({"seeds": seeds, "metrics": metrics},
                                                 default=float))


def read_final(out: str, seeds: list[int]) -> dict[str, Any] | None:
    """The final report stored in the run directory ``out`` when the trial finished there:
    the marker names the same seeds and the cases file holds rows of each; else None."""
    text = read_text(f"{out}/{FINAL_FILE}")
    if text is None:
        return None
    try:
        final = json.loads(text)
    except ValueError:  # not written by write_final (writes are atomic): redo the work
        return None
    if not isinstance(final, dict) or final.get("seeds") != seeds:
        return None
    cases = read_cases(f"{out}/{CASES_FILE}")
    if cases is None or "seed" not in cases or not set(seeds) <= set(cases["seed"]):
        return None
    return final["metrics"]


__all__ = ["CASES_FILE", "FINAL_FILE", "WORKERS_FILE", "read_cases", "read_final", "run_dir",
           "run_name", "write_final"]
