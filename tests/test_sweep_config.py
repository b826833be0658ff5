"""Sweep YAML schema: validation errors, the shipped sweeps, the Tune search space, concurrency."""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from hytver_dist.sweep_config import (
    SWEEPS_DIR,
    SweepConfigError,
    build_arms,
    build_param_space,
    build_scheduler,
    cluster_capacity,
    count_trials,
    load_sweep_config,
    max_concurrent_trials,
    optuna_space,
    trial_resources,
    trial_spec,
    tune_config_kwargs,
    valid_losses,
)

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ["default", "paper_table1", "hytver_search"]


def base(**overrides) -> dict:
    """A small valid sweep dict; keyword paths like search__losses override nested keys."""
    cfg: dict = {
        "name": "t",
        "search": {"losses": ["dice", "hytver"], "seeds": [0, 1]},
    }
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return cfg


def variants(space: dict) -> list[dict]:
    from ray.tune.search.variant_generator import generate_variants

    return [cfg for _, cfg in generate_variants(copy.deepcopy(space))]


# ----------------------------------------------------------------------------- shipped sweeps


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_sweeps_load_and_round_trip(name):
    cfg = load_sweep_config(SWEEPS_DIR / f"{name}.yaml")
    assert cfg.source.endswith(f"{name}.yaml")
    assert load_sweep_config(name) == cfg  # bare names resolve to sweeps/
    assert load_sweep_config(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg


def test_default_is_small_local_and_every_loss_times_two_seeds():
    cfg = load_sweep_config("default")
    assert cfg.search.losses == valid_losses()
    assert count_trials(cfg) == len(valid_losses()) * 2 == 28
    space = build_param_space(cfg)
    trials = variants(space)
    assert len(trials) == 28
    pairs = {(trial_spec(t).loss, trial_spec(t).seed) for t in trials}
    assert pairs == {(loss, s) for loss in valid_losses() for s in (0, 1)}
    assert all(trial_spec(t).params == {} for t in trials)
    # CPU-sized: tiny synthetic data and model, 1 CPU worker per trial.
    assert cfg.data.is_synthetic and 10 <= cfg.data.synthetic.n_cases <= 12
    assert cfg.model.n_filters == 4 and cfg.training.patch_size == (32, 32, 32)
    assert cfg.training.iterations <= 200 and not cfg.resources.use_gpu
    assert cfg.resources.num_workers == 1
    assert tune_config_kwargs(cfg, {"CPU": 2, "TRAIN_DRIVER": 2})["num_samples"] == 1


def test_paper_table1_protocol():
    cfg = load_sweep_config("paper_table1")
    t = cfg.training
    assert (t.batch_size, t.lr, t.patch_size, t.optimizer, t.iterations) == (
        4, 1e-3, (80, 80, 80), "adam", 250)
    assert set(cfg.search.losses) == set(valid_losses()) and len(cfg.search.losses) == 14
    assert cfg.search.seeds == (0, 1, 2, 3, 4)
    assert cfg.data.split.preset == "coactseg" and cfg.data.split.n_val >= 1
    assert cfg.data.preprocessing.target_spacing == (0.5, 0.75, 0.75)
    assert cfg.resources.use_gpu and count_trials(cfg) == 70


def test_hytver_search_space_and_asha():
    cfg = load_sweep_config("hytver_search")
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
        by_arm.setdefault(spec.arm_id, set()).add(spec.seed)
    assert all(s == {0, 1} for s in by_arm.values())
    sched = build_scheduler(cfg)
    assert type(sched).__name__ == "AsyncHyperBandScheduler"
    assert cfg.scheduler_max_t == 10  # 250 iterations / eval every 25
    assert build_scheduler(load_sweep_config("default")) is None


# ----------------------------------------------------------------------------- search space


def test_hyperparameters_do_not_multiply_other_losses():
    cfg = load_sweep_config(base(search__hyperparameters={
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
    more = load_sweep_config(base(search__losses=["ce", "dice", "hytver"],
                                  search__hyperparameters=cfg.to_dict()["search"]["hyperparameters"],
                                  search__num_samples=3))
    assert [a for a in build_arms(more) if a["loss"] == "hytver"] == hyt


def test_optuna_define_by_run_space():
    cfg = load_sweep_config(base(search__search_alg="optuna", search__num_samples=5,
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
    assert (spec.loss, spec.seed) == ("hytver", 1)
    assert spec.params == {"alpha": 0.01, "gamma": 0.5, "beta": 0.6}
    assert trial.calls["hp/hytver/alpha"] == ("float", 0.01, 1.0, True)
    dice = FakeTrial("dice")
    assert trial_spec(unflatten_dict(optuna_space(cfg)(dice))).params == {}
    assert not any(k.startswith("hp/") for k in dice.calls)  # hytver's params not suggested


# ----------------------------------------------------------------------------- concurrency


def test_concurrency_derived_from_cluster_resources():
    cpu = load_sweep_config("default")
    assert trial_resources(cpu) == {"TRAIN_DRIVER": 1.0, "CPU": 1.0}
    assert max_concurrent_trials(cpu, {"CPU": 2.0, "TRAIN_DRIVER": 4.0, "memory": 1e10}) == 2
    assert max_concurrent_trials(cpu, {"CPU": 8.0, "TRAIN_DRIVER": 3.0}) == 3
    gpu = load_sweep_config("paper_table1")  # 1 worker x (4 CPU, 1 GPU)
    assert max_concurrent_trials(gpu, {"CPU": 200, "GPU": 16, "TRAIN_DRIVER": 16}) == 16
    assert max_concurrent_trials(gpu, {"CPU": 20, "GPU": 16, "TRAIN_DRIVER": 16}) == 5
    assert max_concurrent_trials(gpu, cluster_capacity(ROOT / "cluster.yaml")) == 16
    capped = load_sweep_config(base(resources__max_concurrent_trials=1))
    assert max_concurrent_trials(capped, {"CPU": 8, "TRAIN_DRIVER": 8}) == 1
    few = load_sweep_config(base(search__losses=["dice"], search__seeds=[0]))
    assert max_concurrent_trials(few, {"CPU": 8, "TRAIN_DRIVER": 8}) == 1  # only one trial
    ddp = load_sweep_config(base(resources={"num_workers": 2, "use_gpu": True,
                                            "gpus_per_worker": 0.5, "cpus_per_worker": 2}))
    assert max_concurrent_trials(ddp, {"CPU": 64, "GPU": 4, "TRAIN_DRIVER": 8}) == 4


def test_concurrency_impossible_request_raises():
    gpu = load_sweep_config("paper_table1")
    with pytest.raises(ValueError, match=r"GPU can never fit"):
        max_concurrent_trials(gpu, {"CPU": 16, "TRAIN_DRIVER": 4})
    cpu = load_sweep_config("default")
    with pytest.raises(ValueError, match=r"TRAIN_DRIVER can never fit; declare TRAIN_DRIVER"):
        max_concurrent_trials(cpu, {"CPU": 2})
    big = load_sweep_config(base(resources__num_workers=4))
    with pytest.raises(ValueError, match=r"one trial needs .*'CPU': 4\.0.*CPU can never fit"):
        max_concurrent_trials(big, {"CPU": 2, "TRAIN_DRIVER": 2})


# ----------------------------------------------------------------------------- errors

ERRORS = [
    (base(search__losses=["dice", "hytver", "dcie"]),
     r"^<dict>: search\.losses\[2\]: unknown loss 'dcie' \(did you mean 'dice'\?\); "
     r"valid: dice, tversky, "),
    (base(trainig={"iterations": 3}), r"^<dict>: trainig: unknown key .*'training'"),
    (base(training__iterations="ten"), r"training\.iterations: expected an integer; got 'ten'"),
    (base(training__amp="yes"), r"training\.amp: expected true or false"),
    (base(training__backend="cuda"), r"training\.backend: expected one of auto, fused, reference"),
    (base(training__checkpoint_every=15), r"training\.checkpoint_every: must be a multiple of "
     r"eval_every \(10\); got 15"),
    (base(training__patch_size=[32, 32]), r"training\.patch_size: expected 3 values; got 2"),
    (base(training__patch_size=64), r"training\.patch_size\[0\]: 64 exceeds the synthetic "
     r"grid \(43, 52, 42\) \(size 'tiny' at native mm\)"),
    (base(training__patch_size=40), r"training\.patch_size\[0\]: must be a positive multiple "
     r"of 16"),
    (base(data__synthetic={"n_negative": 13}), r"data\.synthetic\.n_negative: must be in "
     r"\[0, n_cases=12\]"),
    (base(data__synthetic={"size": "huge"}), r"data\.synthetic\.size: expected one of tiny, "
     r"small, full"),
    (base(search__hyperparameters={"hytver": {"alpha": {"uniform": [0.9, 0.1]}}}),
     r"search\.hyperparameters\.hytver\.alpha\.uniform: needs low < high; got \[0\.9, 0\.1\]"),
    (base(search__hyperparameters={"hytver": {"smooth": {"loguniform": [0, 1]}}}),
     r"search\.hyperparameters\.hytver\.smooth\.loguniform: needs low > 0"),
    (base(search__hyperparameters={"hytver": {"alpha": {"normal": [0, 1]}}}),
     r"search\.hyperparameters\.hytver\.alpha: expected a value, a list \(grid\) or one of"),
    (base(search__hyperparameters={"hytver": {"alpha": 1.5}}),
     r"search\.hyperparameters\.hytver\.alpha: alpha of 'hytver' must be in \[0, 1\]; got 1\.5"),
    (base(search__hyperparameters={"hytver": {"alpah": 0.5}}),
     r"search\.hyperparameters\.hytver\.alpah: unknown hyperparameter of 'hytver' 'alpah' "
     r"\(did you mean 'alpha'\?\)"),
    (base(search__hyperparameters={"ce": {"alpha": 0.5}}, search__losses=["ce"]),
     r"search\.hyperparameters\.ce\.alpha: 'ce' takes no hyperparameters"),
    (base(search__hyperparameters={"tversky": {"alpha": 0.5}}),
     r"search\.hyperparameters\.tversky: loss 'tversky' is not in search\.losses "
     r"\(dice, hytver\)"),
    (base(search__num_samples=4), r"search\.num_samples: 4 has no effect: no hyperparameter has "
     r"a distribution"),
    (base(search__seeds=[0, 1, 0]), r"search\.seeds\[2\]: duplicate seed 0"),
    (base(search__losses="dice"), r"search\.losses: expected 'all' or a non-empty list"),
    (base(search__scheduler={"type": "asha", "grace_period": 5}),
     r"search\.scheduler\.grace_period: 5 exceeds max_t \(2 = number of evaluations\)"),
    (base(search__search_alg="hyperopt"), r"search\.search_alg: expected one of random, optuna"),
    (base(data__split={"preset": "coactseg"}),
     r"data\.split\.preset: 'coactseg' selects MSSEG-2 case IDs and needs data\.path"),
    (base(data__path="/d", data__split={"preset": "coactseg", "n_test": 8}),
     r"data\.split\.n_test: must be null with preset 'coactseg'"),
    (base(data__path="/d", data__synthetic={"n_cases": 5}),
     r"data\.synthetic: set only when data\.path is null"),
    (base(data__split={"n_test": 6, "n_val": 6}),
     r"data\.split: n_test \+ n_val = 12 leaves no training case out of synthetic\.n_cases = 12"),
    (base(data__split={"n_val": 0}), r"data\.split\.n_val: must be >= 1"),
    (base(resources__cpus_per_worker=0), r"resources\.cpus_per_worker: must be > 0"),
    (base(resources={"use_gpu": True, "gpus_per_worker": 1.5}),
     r"resources\.gpus_per_worker: must be a fraction in \(0, 1\] or a whole number; got 1\.5"),
    (base(resources__num_workers=0), r"resources\.num_workers: must be >= 1"),
    (base(report__reference_loss="hytvr"), r"report\.reference_loss: unknown loss 'hytvr'"),
    (base(name="my sweep/2024"), r"^<dict>: name: must match"),
    ({"search": {"losses": ["dice"]}}, r"^<dict>: name: is required"),
]


@pytest.mark.parametrize(("cfg", "pattern"), ERRORS, ids=[p[:40] for _, p in ERRORS])
def test_validation_errors(cfg, pattern):
    with pytest.raises(SweepConfigError, match=pattern):
        load_sweep_config(cfg)


def test_error_names_the_file(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("name: x\nsearch:\n  losses: [dice, tversky, dcie]\n")
    with pytest.raises(ValueError) as exc:
        load_sweep_config(path)
    assert str(exc.value).startswith(f"{path}: search.losses[2]: unknown loss 'dcie'")
    assert str(exc.value).endswith(", ".join(valid_losses()))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SweepConfigError, match=re.escape(f"{bad}: invalid YAML")):
        load_sweep_config(bad)
    with pytest.raises(SweepConfigError, match=r"nope\.yaml: file not found"):
        load_sweep_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(SweepConfigError, match=r"list\.yaml: <top level>: expected a mapping"):
        load_sweep_config(tmp_path / "list.yaml")


def test_defaults_and_conversions():
    cfg = load_sweep_config({"name": "x", "training": {"lr": "1e-3", "patch_size": 16},
                             "data": {"preprocessing": {"target_spacing": 0.75}}})
    assert cfg.training.lr == 1e-3  # YAML 1.1 reads 1e-3 as a string
    assert cfg.training.patch_size == (16, 16, 16)
    assert cfg.data.preprocessing.target_spacing == (0.75, 0.75, 0.75)
    assert cfg.data.split.n_test == 4 and cfg.data.synthetic is not None
    assert cfg.data.synthetic.grid_shape(None) == (43, 52, 42)  # tiny: 4 mm voxels
    assert cfg.data.synthetic.grid_shape((2.0, 2.0, 2.0)) == (86, 104, 84)
    assert cfg.results_dir == "results/x/results" and cfg.report_dir == "results/x/results/report"
    s3 = load_sweep_config({"name": "x", "storage": {"path": "s3://b/p/"}})
    assert s3.results_dir == "s3://b/p/x/results"
    spec = load_sweep_config(base(search__hyperparameters={"hytver": {
        "gamma": {"grid": [0.3, 0.5]}, "per_sample": {"choice": [True, False]}}},
        search__num_samples=2))
    kinds = {k: v.kind for k, v in spec.search.hyperparameters["hytver"].items()}
    assert kinds == {"gamma": "grid", "per_sample": "choice"}
    assert count_trials(spec) == (1 + 2 * 2) * 2


def test_names_come_from_the_loss_registry_when_importable(monkeypatch):
    import hytver_dist.sweep_config as sc

    class FakeDice:
        def __init__(self, smooth: float = 1.0, backend: str = "auto") -> None: ...

    class FakeHyTver:
        @classmethod
        def hyperparameters(cls):
            return ("alpha", "beta", "backend")

    monkeypatch.setattr(sc, "_registry", lambda: {"dice": FakeDice, "hytver": FakeHyTver})
    assert sc.valid_losses() == ("dice", "hytver")
    assert sc.loss_hyperparameters("dice") == ("smooth",)  # backend is training.backend
    assert sc.loss_hyperparameters("hytver") == ("alpha", "beta")
    with pytest.raises(SweepConfigError, match=r"unknown loss 'tversky' .*; valid: dice, hytver$"):
        load_sweep_config(base(search__losses=["tversky"]))
    with pytest.raises(SweepConfigError, match=r"unknown hyperparameter of 'hytver' 'gamma'"):
        load_sweep_config(base(search__hyperparameters={"hytver": {"gamma": 0.5}}))
    cfg = load_sweep_config({"name": "x", "report": {"reference_loss": "dice"}})
    assert cfg.search.losses == ("dice", "hytver") and count_trials(cfg) == 4


def test_documented_schema_matches_the_defaults():
    import textwrap

    import hytver_dist.sweep_config as sc

    doc = sc.__doc__.split(".. code-block:: yaml")[1].split("Errors raise")[0]
    documented = load_sweep_config(yaml.safe_load(textwrap.dedent(doc)))
    defaults = load_sweep_config({"name": "my-sweep"})
    for section in ["data", "model", "training", "resources", "storage", "report"]:
        assert getattr(documented, section) == getattr(defaults, section), section
    doc_search = dataclasses.replace(documented.search, hyperparameters={})
    assert doc_search == defaults.search
    readme = (SWEEPS_DIR / "README.md").read_text()
    for key in sc.ResourcesConfig.__dataclass_fields__:
        assert f"`{key}`" in readme, key


def test_optuna_search_alg_needs_the_package():
    import importlib.util

    from hytver_dist.sweep_config import build_search_alg

    cfg = load_sweep_config(base(search__search_alg="optuna", search__num_samples=2))
    if importlib.util.find_spec("optuna") is None:
        with pytest.raises(ImportError, match=r"search\.search_alg: optuna needs the optuna"):
            build_search_alg(cfg)
    else:
        assert type(build_search_alg(cfg)).__name__ == "OptunaSearch"
    assert build_search_alg(load_sweep_config("default")) is None
