"""A ``TorchTrainer`` without the per-run helpers the sweep does not use.

Every Ray Train run starts a handful of processes besides its workers. On a small machine each
one's start-up (a Python interpreter importing Ray) is CPU time the trials do not train, so the
sweep's runs drop two of them:

- the dataset manager actor, started for Ray Data datasets (the sweep passes none: its
  workers read the cached volumes themselves);
- the placement-group cleaner's once-a-second poll of the State API (served by the dashboard,
  which pays for each poll too) becomes one every ``CLEANER_CHECK_INTERVAL_S``; the cleaner
  still frees the worker group's resources of a run whose controller died (a trial stopped
  early by ASHA), a few seconds later.

Both hooks are Ray Train internals (Ray 2.60). When they move, :func:`torch_trainer_class`
returns the plain ``TorchTrainer`` and runs start every helper, as Ray does by default.
"""

from __future__ import annotations

from typing import Any

CLEANER_CHECK_INTERVAL_S = 5.0


def torch_trainer_class() -> type:
    """``TorchTrainer``, or its subclass without the helpers above where Ray has the hooks."""
    from ray.train.torch import TorchTrainer

    try:
        from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
        from ray.train.v2._internal.callbacks.placement_group_callback import (
            PlacementGroupCleanerCallback,
        )
    except ImportError:
        return TorchTrainer
    if not callable(getattr(TorchTrainer, "_create_default_callbacks", None)):
        return TorchTrainer

    class LeanTorchTrainer(TorchTrainer):  # type: ignore[misc, valid-type]
        def _create_default_callbacks(self) -> list[Any]:
            out = []
            for cb in super()._create_default_callbacks():
                if isinstance(cb, DatasetsCallback) and not self.datasets:
                    continue
                if type(cb) is PlacementGroupCleanerCallback:
                    cb = PlacementGroupCleanerCallback(check_interval_s=CLEANER_CHECK_INTERVAL_S)
                out.append(cb)
            return out

    return LeanTorchTrainer


__all__ = ["CLEANER_CHECK_INTERVAL_S", "torch_trainer_class"]
