"""Every use of Ray internals and every Ray environment setting of the sweep, in one place.

Each private hook has a fallback to Ray's public behaviour, and ``tests/test_ray_compat.py``
fails when this Ray version no longer has one. What the hooks drop and why:
docs/architecture.md (Ray internals).
"""

from __future__ import annotations

import os
from typing import Any

CLEANER_CHECK_INTERVAL_S = 5.0


def torch_trainer_class() -> type:
    """``TorchTrainer``, or, where Ray has the hooks, its subclass without the dataset manager
    and with the slower placement-group cleaner poll (docs/architecture.md, Ray internals)."""
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


# The embedded local Ray only (setdefault): no usage-stats prompt, no V1-migration warnings,
# results forwarded every second instead of Train's default 2 s (polling every 0.2 s cost
# each run CPU-seconds on a small machine), every worker's log line shown, and no per-run
# preemption-watcher actor or metrics (two fewer processes per trial: on a small machine, each
# one's start-up is time the trials do not train).
LOCAL_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "1",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
}


def set_local_env() -> None:
    """Apply :data:`LOCAL_ENV` where the user has not set the variable (before ``ray.init``)."""
    for key, value in LOCAL_ENV.items():
        os.environ.setdefault(key, value)


def started_cluster_address() -> str | None:
    """Address of the cluster that ``ray start`` (or ``ray up``) recorded on this machine
    (``<RAY_TMPDIR or /tmp>/ray/ray_current_cluster``), else None.

    ``ray.init(address="auto")`` alone would also join any other Ray instance it finds in ``ps``
    (e.g. another user's or another test's embedded Ray, whose lifetime and resources are not
    ours), so it is only tried when such a recorded address exists.
    """
    try:
        from ray._private.utils import read_ray_address
    except ImportError:  # private API moved: keep the old "auto" behaviour
        return "auto"
    return read_ray_address() or None


__all__ = ["CLEANER_CHECK_INTERVAL_S", "LOCAL_ENV", "set_local_env", "started_cluster_address",
           "torch_trainer_class"]
