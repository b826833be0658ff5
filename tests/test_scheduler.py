"""The YAML's scheduler settings reach Ray Tune unchanged (no Ray cluster needed)."""

from __future__ import annotations

import yaml
from config_helpers import base

from hytver_dist.sweep.config import SweepConfig
from hytver_dist.sweep.search import tune_config_kwargs

RESOURCES = {"CPU": 4.0, "TRAIN_DRIVER": 4.0}


def test_asha_settings_from_yaml_reach_tune(tmp_path):
    cfg_dict = base()
    cfg_dict["search"].update(
        metric="val_lesion_f1", mode="min",
        scheduler={"type": "asha", "grace_period": 3, "max_t": 12, "reduction_factor": 2,
                   "time_attr": "iteration"})
    path = tmp_path / "asha.yaml"
    path.write_text(yaml.safe_dump(cfg_dict))
    kwargs = tune_config_kwargs(SweepConfig.load(path), RESOURCES)
    assert (kwargs["metric"], kwargs["mode"]) == ("val_lesion_f1", "min")
    sch = kwargs["scheduler"]
    assert type(sch).__name__ == "AsyncHyperBandScheduler"
    assert (sch._time_attr, sch._max_t, sch._reduction_factor) == ("iteration", 12, 2)
    # Rungs at max_t / reduction_factor**k down to grace_period: 12, 6 and 3.
    assert [milestone for milestone, _ in sch._brackets[0]._rungs] == [12, 6, 3]
    # Tune hands the TuneConfig's metric and mode to the scheduler.
    from ray import tune

    tune.TuneConfig(**kwargs)
    assert sch.set_search_properties(kwargs["metric"], kwargs["mode"])
    assert (sch.metric, sch._mode) == ("val_lesion_f1", "min")


def test_no_scheduler_by_default():
    kwargs = tune_config_kwargs(SweepConfig.load(base()), RESOURCES)
    assert kwargs["scheduler"] is None and kwargs["metric"] == "val_dice"
