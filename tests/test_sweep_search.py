"""Ray Tune glue: the shipped sweeps' trials, the search space, schedulers and concurrency."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from config_helpers import base

from hytver_dist.run.config import loss_names
from hytver_dist.sweep.config import SweepConfig
from hytver_dist.sweep.search import (
    build_arms,
    build_param_space,
    build_scheduler,
    cluster_capacity,
    count_trials,
    max_concurrent_trials,
    optuna_space,
    trial_resources,
    trial_spec,
    tune_config_kwargs,
)

ROOT = Path(__file__).resolve().parent.parent


def variants(space: dict) -> list[dict]:
    from ray.tune.search.variant_generator import generate_variants

    return [cfg for _, cfg in generate_variants(copy.deepcopy(space))]


# ----------------------------------------------------------------------------- shipped sweeps


def test_default_is_small_local_one_trial_per_loss_with_four_seeds():
    cfg = SweepConfig.load("default")
    assert cfg.search.losses == loss_names()
    assert cfg.search.seeds == (0, 1, 2, 3) and cfg.search.seeds_per_trial == 4
    assert count_trials(cfg) == len(loss_names()) == 14
    space = build_param_space(cfg)
    trials = variants(space)
    assert len(trials) == 14
    assert {(trial_spec(t).loss, trial_spec(t).seeds) for t in trials} == {
        (loss, (0, 1, 2, 3)) for loss in loss_names()}
    assert all(trial_spec(t).params == {} for t in trials)
    # CPU-sized: tiny synthetic data and model, 1 CPU worker per trial; the paper's protocol
    # in small: a pretraining stage, then 250 fine-tuning iterations; >= 10 test cases.
    assert cfg.data.path is None and cfg.data.synthetic.n_cases == 26
    assert cfg.data.split.n_test == 14  # 11 with new lesions, 3 without (stratified)
    assert cfg.pretrain is not None and cfg.model.init_checkpoint is None
    assert cfg.model.n_filters == 4 and cfg.training.patch_size == (32, 32, 32)
    assert cfg.training.iterations == 250 and not cfg.resources.use_gpu
    assert cfg.resources.num_workers == 1
    assert tune_config_kwargs(cfg, {"CPU": 2, "TRAIN_DRIVER": 2})["num_samples"] == 1


def test_paper_table1_protocol():
    cfg = SweepConfig.load("paper_table1")
    t = cfg.training
    assert (t.batch_size, t.lr, t.patch_size, t.optimizer, t.iterations) == (
        4, 1e-3, (80, 80, 80), "adam", 250)
    assert set(cfg.search.losses) == set(loss_names()) and len(cfg.search.losses) == 14
    assert cfg.search.seeds == (0, 1, 2, 3, 4)
    assert cfg.data.split.preset == "coactseg" and cfg.data.split.n_val >= 1
    assert cfg.data.preprocessing.target_spacing == (0.5, 0.75, 0.75)
    assert cfg.resources.use_gpu and count_trials(cfg) == 70


def test_hytver_search_space_and_asha():
    cfg = SweepConfig.load("hytver_search")
    arms = build_arms(cfg)
    assert len(arms) == cfg.search.num_samples == 24
    assert count_trials(cfg) == 48 == len(variants(build_param_space(cfg)))
    for arm in arms:
        p = arm["loss_params"]
        assert set(p) == {"alpha", "beta", "gamma"}
        assert 0.3 <= p["alpha"] <= 0.95 and 0.05 <= p["gamma"] <= 0.95
    assert build_arms(cfg) == arms  # seeded: reproducible
    # Each sampled set is trained with every seed (seeds are replicates).
    by_arm: dict[str, set[int]] = {}
    for t in variants(build_param_space(cfg)):
        spec = trial_spec(t)
        assert len(spec.seeds) == 1  # ASHA: one seed per trial
        by_arm.setdefault(spec.arm_id, set()).update(spec.seeds)
    assert all(s == {0, 1} for s in by_arm.values())
    sched = build_scheduler(cfg)
    assert type(sched).__name__ == "AsyncHyperBandScheduler"
    assert cfg.scheduler_max_t == 10  # 250 iterations / eval every 25
    assert build_scheduler(SweepConfig.load("default")) is None


# ----------------------------------------------------------------------------- search space


def test_seed_groups_cut_the_seeds_in_order_one_trial_each():
    cfg = SweepConfig.load(base(search__seeds=[4, 0, 1, 2, 3], search__seeds_per_trial=2))
    assert cfg.search.seed_groups == [(4, 0), (1, 2), (3,)]
    trials = variants(build_param_space(cfg))
    assert count_trials(cfg) == 3 * len(build_arms(cfg)) == len(trials)
    per_loss: dict[str, list[tuple[int, ...]]] = {}
    for t in trials:
        spec = trial_spec(t)
        per_loss.setdefault(spec.loss, []).append(spec.seeds)
    assert all(sorted(g) == [(1, 2), (3,), (4, 0)] for g in per_loss.values())
    assert trial_spec({"seeds": [1, 2], "arm": {"loss": "dice"}}).seed_label == "1_2"
    # one seed per trial (the default) keeps one seed per trial config
    assert SweepConfig.load(base(search__seeds=[0, 1])).search.seed_groups == [(0,), (1,)]



def test_hyperparameters_do_not_multiply_other_losses():
    cfg = SweepConfig.load(base(search__hyperparameters={
        "hytver": {"gamma": [0.3, 0.5], "alpha": {"uniform": [0.1, 0.9]}, "beta": 0.7}},
        search__num_samples=3))
    arms = build_arms(cfg)
    assert [a["loss"] for a in arms].count("dice") == 1
    hyt = [a for a in arms if a["loss"] == "hytver"]
    assert len(hyt) == 2 * 3
    assert sorted({a["loss_params"]["gamma"] for a in hyt}) == [0.3, 0.5]
    assert all(a["loss_params"]["beta"] == 0.7 for a in hyt)
    assert len({a["id"] for a in arms}) == len(arms)
    assert count_trials(cfg) == (1 + 6) * 2 == len(variants(build_param_space(cfg)))
    # Adding a loss does not change another loss's draws.
    more = SweepConfig.load(base(search__losses=["ce", "dice", "hytver"],
                                  search__hyperparameters=cfg.to_dict()["search"]["hyperparameters"],
                                  search__num_samples=3))
    assert [a for a in build_arms(more) if a["loss"] == "hytver"] == hyt


def test_optuna_define_by_run_space():
    cfg = SweepConfig.load(base(search__search_alg="optuna", search__num_samples=5,
        search__hyperparameters={"hytver": {"alpha": {"loguniform": [0.01, 1]},
                                            "gamma": [0.3, 0.5], "beta": 0.6}}))
    assert build_param_space(cfg) == {} and count_trials(cfg) == 5

    class FakeTrial:  # the two suggest_* calls OptunaSearch's captor forwards
        def __init__(self, loss):
            self.loss, self.calls = loss, {}

        def suggest_categorical(self, name, choices):
            self.calls[name] = ("cat", list(choices))
            return self.loss if name == "arm/loss" else choices[-1]

        def suggest_float(self, name, low, high, log=False):
            self.calls[name] = ("float", low, high, log)
            return low

    from ray.tune.utils.util import unflatten_dict

    trial = FakeTrial("hytver")
    out = optuna_space(cfg)(trial)
    captured = {k: (trial.loss if k == "arm/loss" else v[1][-1] if v[0] == "cat" else v[1])
                for k, v in trial.calls.items()}
    spec = trial_spec(unflatten_dict({**captured, **out}))
    assert (spec.loss, spec.seeds) == ("hytver", (1,))
    assert spec.params == {"alpha": 0.01, "gamma": 0.5, "beta": 0.6}
    assert trial.calls["hp/hytver/alpha"] == ("float", 0.01, 1.0, True)
    dice = FakeTrial("dice")
    assert trial_spec(unflatten_dict(optuna_space(cfg)(dice))).params == {}
    assert not any(k.startswith("hp/") for k in dice.calls)  # hytver's params not suggested


# ----------------------------------------------------------------------------- concurrency


def test_concurrency_derived_from_cluster_resources():
    cpu = SweepConfig.load("default")
    assert trial_resources(cpu) == {"TRAIN_DRIVER": 1.0, "CPU": 1.0}
    assert max_concurrent_trials(cpu, {"CPU": 2.0, "TRAIN_DRIVER": 4.0, "memory": 1e10}) == 2
    assert max_concurrent_trials(cpu, {"CPU": 8.0, "TRAIN_DRIVER": 3.0}) == 3
    gpu = SweepConfig.load("paper_table1")  # 1 worker x (4 CPU, 1 GPU)
    assert max_concurrent_trials(gpu, {"CPU": 200, "GPU": 16, "TRAIN_DRIVER": 16}) == 16
    assert max_concurrent_trials(gpu, {"CPU": 20, "GPU": 16, "TRAIN_DRIVER": 16}) == 5
    assert max_concurrent_trials(gpu, cluster_capacity(ROOT / "cluster.yaml")) == 16
    capped = SweepConfig.load(base(resources__max_concurrent_trials=1))
    assert max_concurrent_trials(capped, {"CPU": 8, "TRAIN_DRIVER": 8}) == 1
    few = SweepConfig.load(base(search__losses=["dice"], search__seeds=[0]))
    assert max_concurrent_trials(few, {"CPU": 8, "TRAIN_DRIVER": 8}) == 1  # only one trial
    ddp = SweepConfig.load(base(resources={"num_workers": 2, "use_gpu": True,
                                            "gpus_per_worker": 0.5, "cpus_per_worker": 2}))
    assert max_concurrent_trials(ddp, {"CPU": 64, "GPU": 4, "TRAIN_DRIVER": 8}) == 4


def test_concurrency_impossible_request_raises():
    gpu = SweepConfig.load("paper_table1")
    with pytest.raises(ValueError, match=r"GPU can never fit"):
        max_concurrent_trials(gpu, {"CPU": 16, "TRAIN_DRIVER": 4})
    cpu = SweepConfig.load("default")
    with pytest.raises(ValueError, match=r"TRAIN_DRIVER can never fit; declare TRAIN_DRIVER"):
        max_concurrent_trials(cpu, {"CPU": 2})
    big = SweepConfig.load(base(resources__num_workers=4))
    with pytest.raises(ValueError, match=r"one trial needs .*'CPU': 4\.0.*CPU can never fit"):
        max_concurrent_trials(big, {"CPU": 2, "TRAIN_DRIVER": 2})


def test_optuna_search_alg_needs_the_package():
    import importlib.util

    from hytver_dist.sweep.search import build_search_alg

    cfg = SweepConfig.load(base(search__search_alg="optuna", search__num_samples=2))
    if importlib.util.find_spec("optuna") is None:
        with pytest.raises(ImportError, match=r"search\.search_alg: optuna needs the optuna"):
            build_search_alg(cfg)
    else:
        assert type(build_search_alg(cfg)).__name__ == "OptunaSearch"
    assert build_search_alg(SweepConfig.load("default")) is None
