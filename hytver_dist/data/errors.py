"""The one error class of the data layer."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Invalid, unreadable or inconsistent input data.

    The message always starts with the offending file or folder (when there is one), so a
    failing case in a 40-case run is found without a debugger: ``"<path>: <problem>"``.
    """

    def __init__(self, problem: str, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)
