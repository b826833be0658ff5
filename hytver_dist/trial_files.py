"""Files a trial's rank 0 writes into its Train run directory (``<storage>/train-<trial id>``)
and the driver reads back: results travel as files on the shared storage, not inside Tune
metrics. Local paths and URIs (``s3://...``, through pyarrow) alike; the pretraining stage
stores its weights with the same helpers."""

from __future__ import annotations

import io
from typing import Any

CASES_FILE = "cases.csv"
WORKERS_FILE = "workers.json"
SWEEP_FACTS_FILE = "sweep.json"
"""In the sweep's results directory (not a run directory): wall times and trial slots, which
the report turns into the utilisation line."""


def run_name(trial_id: str) -> str:
    """The name :func:`hytver_dist.sweep.run_trial` gives a trial's ``TorchTrainer`` (stable,
    so a restarted or resumed trial finds its checkpoints)."""
    return f"train-{trial_id}"


def run_dir(storage: str, trial_id: str) -> str:
    """The Train run directory of a trial."""
    return f"{storage.rstrip('/')}/{run_name(trial_id)}"


def _fs(path: str) -> tuple[Any, str]:
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(path)


def _file(path: str) -> tuple[Any, str] | None:
    """(filesystem, path inside it) of an existing file, else None."""
    import pyarrow.fs

    fs, p = _fs(path)
    return (fs, p) if fs.get_file_info(p).type == pyarrow.fs.FileType.File else None


def exists(path: str) -> bool:
    """Whether ``path`` is a file (local path or URI)."""
    return _file(path) is not None


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary name and a rename where the storage has one,
    so a reader never sees half a file."""
    fs, p = _fs(path)
    parent = p.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{p}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, p)


def write_text(path: str, text: str) -> None:
    """:func:`write_bytes` of ``text`` (UTF-8)."""
    write_bytes(path, text.encode())


def read_bytes(path: str) -> bytes | None:
    """The file's bytes, or None when it does not exist."""
    found = _file(path)
    if found is None:
        return None
    fs, p = found
    with fs.open_input_stream(p) as f:
        return f.read()


def read_text(path: str) -> str | None:
    """The file's text, or None when it does not exist."""
    data = read_bytes(path)
    return None if data is None else data.decode()


def read_cases(path: str) -> Any:
    """A ``cases.csv`` as a DataFrame (case ids stay strings), or None when missing."""
    import pandas as pd

    text = read_text(path)
    return None if text is None else pd.read_csv(io.StringIO(text), dtype={"case": str})
