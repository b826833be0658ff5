"""The experiment lock (no Ray): one holder at a time, named in the refusal; released when the
holder ends, even by SIGKILL."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hytver_dist.sweep.lock import LOCK_FILE, SweepRunning, sweep_lock

ROOT = Path(__file__).resolve().parent.parent
HOLD = """
import sys, time
from hytver_dist.sweep.lock import sweep_lock
with sweep_lock(sys.argv[1], "one"):
    print("locked", flush=True)
    time.sleep(600)
"""


def hold(experiment: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(experiment)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
    return proc


def test_second_holder_is_refused_naming_the_first(tmp_path: Path):
    experiment = tmp_path / "one"
    proc = hold(experiment)
    try:
        started = time.monotonic()
        with pytest.raises(SweepRunning) as info, sweep_lock(str(experiment), "one"):
            pass
        assert time.monotonic() - started < 5  # at once, no waiting for the holder
        assert re.match(rf"sweep 'one' is running \(pid {proc.pid} on "
                        rf"{re.escape(socket.gethostname())} since \d\d:\d\d\): wait for it, "
                        "or use another name", str(info.value)), str(info.value)
    finally:
        proc.kill()
        proc.wait()
    # SIGKILLed holder: the kernel released its lock; the stale record does not block.
    assert proc.returncode == -signal.SIGKILL
    with sweep_lock(str(experiment), "one"):
        record = (experiment / LOCK_FILE).read_text()
        assert f'"pid": {os.getpid()}' in record


def test_lock_is_released_after_the_block_and_refused_inside_it(tmp_path: Path):
    experiment = str(tmp_path / "one")
    with sweep_lock(experiment, "one"):
        # A second open of the same file conflicts even in this process (flock is per open).
        with pytest.raises(SweepRunning, match=rf"pid {os.getpid()} on "), \
                sweep_lock(experiment, "one"):
            pass
    with sweep_lock(experiment, "one"):
        pass


def test_uri_storage_warns_and_runs(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a URI taken for a relative local path would land here
    with pytest.warns(UserWarning, match="URI storage, where nothing stops a second run"), \
            sweep_lock("s3://bucket/sweeps/one", "one"):
        pass
    assert not list(tmp_path.iterdir())  # no lock file written anywhere local
