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


def tiny_run(**training) -> dict:
    """A config for one quick training run: 5 tiny synthetic cases (1 without new lesions; 3
    train, 1 validation, 1 test), a 4-filter V-Net, 4 iterations of 32^3 patches; ``training``
    keys replace those of the training section."""
    return {
        "name": "unit",
        "data": {"synthetic": {"n_cases": 5, "seed": 0, "size": "tiny", "n_negative": 1},
                 "split": {"preset": "random", "n_test": 1, "n_val": 1, "seed": 0}},
        "model": {"n_filters": 4},
        "training": {"iterations": 4, "batch_size": 2, "patch_size": 32, "eval_every": 2,
                     "checkpoint_every": 2, "val_patch_overlap": 0.0, **training},
        "search": {"losses": ["hytver"], "seeds": [0]},
    }
