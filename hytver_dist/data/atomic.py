"""Directories published atomically: built beside their final name, then renamed into place."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path


def publish_dir(target: Path, build: Callable[[Path], None], marker: str) -> Path:
    """Create ``target`` by running ``build(tmp)`` on an empty sibling folder renamed to
    ``target`` at the end, so concurrent processes (DDP ranks, trials on one node) never see
    half a directory. ``marker`` is the file whose presence means ``target`` is complete: when
    another process wins the race, its directory is kept and ours is dropped."""
    if (target / marker).is_file():
        return target
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        build(tmp)
        os.rename(tmp, target)
    except OSError:
        if not (target / marker).is_file():  # not a race lost to another process
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
