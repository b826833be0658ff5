"""The sweep's TorchTrainer leaves out the dataset manager and polls less (no Ray started)."""

from __future__ import annotations

import ray.train
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import (
    PlacementGroupCleanerCallback,
)

from hytver_dist.sweep.ray_compat import CLEANER_CHECK_INTERVAL_S, torch_trainer_class


def _noop(config: dict) -> None:
    pass


def _callbacks(cls: type, **kwargs) -> list:
    trainer = cls(_noop, scaling_config=ray.train.ScalingConfig(num_workers=1),
                  run_config=ray.train.RunConfig(name="t", storage_path="/tmp"), **kwargs)
    return trainer._create_default_callbacks()


def test_lean_trainer_drops_the_dataset_manager_and_slows_the_cleaner():
    cls = torch_trainer_class()
    # With this Ray the hooks exist: a plain TorchTrainer here means they moved.
    assert cls is not TorchTrainer and issubclass(cls, TorchTrainer)
    plain, lean = _callbacks(TorchTrainer), _callbacks(cls)
    assert any(isinstance(cb, DatasetsCallback) for cb in plain)
    assert not any(isinstance(cb, DatasetsCallback) for cb in lean)
    cleaners = [cb for cb in lean if isinstance(cb, PlacementGroupCleanerCallback)]
    assert len(cleaners) == 1  # still there: it frees a stopped trial's resources
    assert cleaners[0]._check_interval_s == CLEANER_CHECK_INTERVAL_S > 1.0
    # Everything else is Ray's own list, in Ray's order.
    rest = [type(cb) for cb in plain if not isinstance(cb, DatasetsCallback)]
    assert [type(cb) for cb in lean] == rest


def test_lean_trainer_keeps_the_dataset_manager_when_given_datasets():
    # A dataset factory (not called here, so no Ray starts).
    lean = _callbacks(torch_trainer_class(), datasets={"train": lambda: None})
    assert any(isinstance(cb, DatasetsCallback) for cb in lean)
