"""Optional dependencies by layer: a layer whose extra is missing fails at import, naming the
``pip install`` that brings it."""

from __future__ import annotations

import importlib.util


def require_extra(extra: str, *modules: str) -> None:
    """Raise ImportError naming ``pip install 'hytver-dist[extra]'`` when any of ``modules``
    (top-level import names) is not installed."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(
            f"this part of hytver-dist needs {', '.join(missing)}: "
            f"pip install 'hytver-dist[{extra}]'")
