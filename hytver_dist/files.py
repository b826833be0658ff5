"""Files written so that no reader ever sees half of one, on a local disk or behind a URI.

Local paths use the operating system's rename; URIs (``s3://``, ``gs://``, ``file://``, ...)
go through pyarrow's filesystems, which Ray's storage uses too (pyarrow is imported only for
URIs). Every layer writes its results through these helpers.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


def is_uri(path: str | Path) -> bool:
    """Whether ``path`` names remote or URI storage (``scheme://...``) rather than a local path."""
    return "://" in str(path)


def normalize(path: str | Path) -> str:
    """A URI as it is; a local path made absolute, with ``~`` expanded."""
    text = str(path)
    return text if is_uri(text) else str(Path(text).expanduser().resolve())


def _tmp_name(name: str) -> str:
    return f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _arrow(path: str) -> tuple[Any, str]:
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(path)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temporary sibling, then rename it to ``path`` (parents created)."""
    if not is_uri(path):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(_tmp_name(target.name))
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return
    fs, p = _arrow(str(path))
    parent, _, name = p.rpartition("/")
    fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/{_tmp_name(name)}"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, p)


def write_text(path: str | Path, text: str) -> None:
    """:func:`write_bytes` of ``text`` (UTF-8)."""
    write_bytes(path, text.encode())


def read_bytes(path: str | Path) -> bytes | None:
    """The file's bytes, or None when there is no such file."""
    if not is_uri(path):
        p = Path(path)
        return p.read_bytes() if p.is_file() else None
    import pyarrow.fs

    fs, p = _arrow(str(path))
    if fs.get_file_info(p).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(p) as f:
        return f.read()


def read_text(path: str | Path) -> str | None:
    """The file's text, or None when there is no such file."""
    data = read_bytes(path)
    return None if data is None else data.decode()


def exists(path: str | Path) -> bool:
    """Whether ``path`` is a file (local path or URI)."""
    if not is_uri(path):
        return Path(path).is_file()
    import pyarrow.fs

    fs, p = _arrow(str(path))
    return fs.get_file_info(p).type == pyarrow.fs.FileType.File


def publish_dir(target: Path, build: Callable[[Path], None], marker: str) -> Path:
    """Create the local folder ``target`` by running ``build(tmp)`` on an empty sibling folder
    renamed to ``target`` at the end, so concurrent processes (DDP ranks, trials on one node)
    never see half a directory. ``marker`` is the file whose presence means ``target`` is
    complete: when another process wins the race, its folder is kept and ours is dropped."""
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


__all__ = ["exists", "is_uri", "normalize", "publish_dir", "read_bytes", "read_text",
           "write_bytes", "write_text"]
