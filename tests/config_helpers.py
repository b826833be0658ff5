"""Small config dicts for the config and Tune-glue tests."""

from __future__ import annotations


def base(**overrides) -> dict:
    """A small valid config (two losses, two seeds); keyword paths like ``search__losses`` set
    nested keys."""
    cfg: dict = {"name": "t", "search": {"losses": ["dice", "hytver"], "seeds": [0, 1]}}
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return cfg
