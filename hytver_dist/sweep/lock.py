"""One running sweep per experiment directory: ``fcntl.flock`` on ``<storage>/<name>/.sweep.lock``,
taken before the sweep looks for an existing experiment and held until it ends; the kernel
releases it when its holder dies. URI storage has no such lock: :func:`sweep_lock` warns and
proceeds. Details: docs/sweeps.md (One run per experiment).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from ..files import is_uri

LOCK_FILE = ".sweep.lock"


class SweepRunning(RuntimeError):
    """Another process holds the experiment's lock: the same sweep is running."""


def _holder(path: Path) -> dict[str, object]:
    """The record the holder wrote (read again briefly: it writes it just after locking)."""
    for _ in range(20):
        try:
            record = json.loads(path.read_text() or "null")
        except (OSError, ValueError):
            record = None
        if isinstance(record, dict):
            return record
        time.sleep(0.05)
    return {}


def _since(started: object) -> str:
    """``02:09`` today, ``2026-12-05 02:09`` on another day (local time)."""
    try:
        t = datetime.fromtimestamp(float(started))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return "an unknown time"
    return t.strftime("%H:%M" if t.date() == datetime.now().date() else "%Y-%m-%d %H:%M")


@contextmanager
def sweep_lock(experiment: str, name: str) -> Iterator[None]:
    """Hold the exclusive lock of the experiment directory ``experiment`` (created if needed)
    for the ``with`` block; raise :class:`SweepRunning` at once, naming the holder's pid, host
    and start time, when another process holds it."""
    if is_uri(experiment):
        warnings.warn(f"sweep {name!r}: {experiment} is URI storage, where nothing stops a "
                      "second run of the same sweep; start it once (see docs/sweeps.md)",
                      stacklevel=3)
        yield
        return
    path = Path(experiment) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            h = _holder(path)
            raise SweepRunning(
                f"sweep {name!r} is running (pid {h.get('pid', '?')} on "
                f"{h.get('host', 'an unknown host')} since {_since(h.get('started'))}): wait "
                f"for it, or use another name ({path})") from None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                  "started_at": datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (deleting it would race a newcomer)


__all__ = ["LOCK_FILE", "SweepRunning", "sweep_lock"]
