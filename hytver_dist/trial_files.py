"""Files a trial's rank 0 writes into its Train run directory (``<storage>/train-<trial id>``)
and the driver reads back: results travel as files on the shared storage, not inside Tune
metrics. Local paths and URIs (``s3://...``, through pyarrow) alike."""

from __future__ import annotations

import io
from typing import Any

CASES_FILE = "cases.csv"
WORKERS_FILE = "workers.json"


def run_dir(storage: str, trial_id: str) -> str:
    """The Train run directory of a trial (the name :func:`hytver_dist.sweep.run_trial` gives
    its ``TorchTrainer``)."""
    return f"{storage.rstrip('/')}/train-{trial_id}"


def _fs(path: str) -> tuple[Any, str]:
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(path)


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary name and a rename where the storage has one,
    so a reader never sees half a file."""
    fs, p = _fs(path)
    parent = p.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{p}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(text.encode())
    fs.move(tmp, p)


def read_text(path: str) -> str | None:
    """The file's text, or None when it does not exist."""
    import pyarrow.fs

    fs, p = _fs(path)
    if fs.get_file_info(p).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(p) as f:
        return f.read().decode()


def read_cases(path: str) -> Any:
    """A ``cases.csv`` as a DataFrame (case ids stay strings), or None when missing."""
    import pandas as pd

    text = read_text(path)
    return None if text is None else pd.read_csv(io.StringIO(text), dtype={"case": str})
