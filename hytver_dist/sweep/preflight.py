"""Checks a sweep runs before Ray starts: bad paths fail once, naming the path, instead of
failing every trial on the cluster one after the other."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..data import DataError, discover_cases
from ..data.io import load_case
from ..files import is_uri


def check_data_dir(path: str | Path | None, flag: str = "--data",
                   data_format: str = "msseg2") -> None:
    """Refuse a missing or empty data folder, or one without a single readable case.

    ``None`` (synthetic data, generated later) and URIs pass. A case is readable when all its
    volumes load; reading stops at the first one, so a large dataset costs one case.
    ``data_format`` nnunet: ``dataset.json`` and the file list are validated in full too.
    """
    if path is None or is_uri(path):
        return
    if not str(path).strip():
        raise DataError(f"{flag}: empty path")
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"{flag}: data folder not found", root)
    if not root.is_dir():
        raise DataError(f"{flag}: not a folder", root)
    if not any(root.iterdir()):
        raise DataError(f"{flag}: data folder is empty", root)
    if data_format == "nnunet":
        from ..data.nnunet import discover_nnunet, load_nnunet_case

        dataset = discover_nnunet(root)  # DataErrors name the file, case or key
        load_nnunet_case(dataset, dataset.cases[0])
        return
    problems = []
    for case in discover_cases(root, require_mask=True):
        try:
            load_case(case, require_mask=True)
            return
        except DataError as exc:
            problems.append(str(exc))
    raise DataError(f"{flag}: no readable case ({len(problems)} tried; first: "
                    f"{problems[0]})", root)


def check_storage(path: str) -> None:
    """Refuse a local storage path that cannot be created or written (URIs are Ray's to
    check: their credentials may exist only on the cluster)."""
    if is_uri(path):
        return
    root = Path(path).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise PermissionError(f"{root}: storage path is not writable "
                              f"({exc.strerror or type(exc).__name__})") from None
