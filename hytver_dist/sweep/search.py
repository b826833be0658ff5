"""Ray Tune glue: the search space, search algorithm, scheduler, resources and concurrency of a
sweep, built from its validated :class:`hytver_dist.sweep.config.SweepConfig`.

The space grid-searches seed group x arm (one loss + one concrete hyperparameter dict); Ray is
imported only where Ray objects are built. Design: docs/sweeps.md (``search``).
"""

from __future__ import annotations

import importlib.util
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import yaml

from .config import ParamSpec, SweepConfig


def sample(spec: ParamSpec, rng: random.Random) -> Any:
    """One draw of a distribution spec (choice, uniform, loguniform)."""
    if spec.kind == "choice":
        return spec.values[rng.randrange(len(spec.values))]
    lo, hi = float(spec.values[0]), float(spec.values[1])  # type: ignore[arg-type]
    if spec.kind == "uniform":
        x = rng.uniform(lo, hi)
    elif spec.kind == "loguniform":
        x = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    else:
        raise ValueError(f"{spec.kind} is not a distribution")
    return float(f"{x:.6g}")  # readable trial names and params JSON


@dataclass(frozen=True)
class TrialSpec:
    """What one trial trains, read from a Tune trial config by :func:`trial_spec`."""

    arm_id: str
    loss: str
    seeds: tuple[int, ...]
    params: dict[str, Any]

    @property
    def seed_label(self) -> str:
        """``0`` for one seed, ``0_1_2`` for a group (trial names, progress lines)."""
        return "_".join(str(s) for s in self.seeds)


def trial_spec(config: Mapping[str, Any]) -> TrialSpec:
    """Loss, seeds and loss hyperparameters of a trial config (random search or Optuna)."""
    arm = config["arm"]
    params = dict(arm.get("loss_params") or {})
    seeds = config["seeds"] if "seeds" in config else [config["seed"]]
    return TrialSpec(arm.get("id", arm["loss"]), arm["loss"], tuple(int(s) for s in seeds),
                     params)


def build_arms(cfg: SweepConfig) -> list[dict[str, Any]]:
    """One dict per (loss, concrete hyperparameter set): ``{"id", "loss", "loss_params"}``.

    Per loss: the cartesian product of its grid hyperparameters; when it also has
    distributions, ``num_samples`` draws per grid point from ``random.Random`` seeded with
    ``(sample_seed, loss)``, so adding a loss never changes another loss's samples.
    """
    arms: list[dict[str, Any]] = []
    for loss in cfg.search.losses:
        specs = cfg.search.hyperparameters.get(loss, {})
        fixed = {k: s.values[0] for k, s in specs.items() if s.kind == "fixed"}
        grid_keys = [k for k, s in specs.items() if s.kind == "grid"]
        dists = {k: s for k, s in specs.items() if s.is_distribution}
        rng = random.Random(f"{cfg.search.sample_seed}/{loss}")
        n = cfg.search.num_samples if dists else 1
        sets: list[dict[str, Any]] = []
        for combo in product(*(specs[k].values for k in grid_keys)):
            for _ in range(n):
                params = {**fixed, **dict(zip(grid_keys, combo, strict=True))}
                params.update({k: sample(s, rng) for k, s in dists.items()})
                sets.append({k: params[k] for k in specs})  # keep the YAML's key order
        for i, params in enumerate(sets):
            arm_id = loss if len(sets) == 1 else f"{loss}-{i:03d}"
            arms.append({"id": arm_id, "loss": loss, "loss_params": params})
    return arms


def count_trials(cfg: SweepConfig) -> int:
    """Trials the sweep runs: seed groups x arms (random search) or num_samples (Optuna)."""
    if cfg.search.search_alg == "optuna":
        return cfg.search.num_samples
    return len(cfg.search.seed_groups) * len(build_arms(cfg))


def build_param_space(cfg: SweepConfig) -> dict[str, Any]:
    """Ray Tune ``param_space``: ``grid_search`` over seed group x arm (docs/sweeps.md, ``search``).

    With ``search_alg: optuna`` it is ``{}``: the space lives in :func:`build_search_alg`
    (Optuna rejects grid_search, and a Tune space next to a define-by-run one is an error).
    """
    from ray import tune

    if cfg.search.search_alg == "optuna":
        return {}
    return {
        "seeds": tune.grid_search([list(g) for g in cfg.search.seed_groups]),
        "arm": tune.grid_search(build_arms(cfg)),
    }


def optuna_space(cfg: SweepConfig) -> Callable[[Any], dict[str, Any]]:
    """Define-by-run space for OptunaSearch: loss and seed categorical, then only that loss's
    hyperparameters. Suggested names are ``hp/<loss>/<name>`` (distinct per loss, because Optuna
    refuses one name with two distributions); the returned ``arm/...`` keys give the same
    config shape as random search (Tune unflattens on '/')."""
    losses, seeds = list(cfg.search.losses), list(cfg.search.seeds)
    hps = cfg.search.hyperparameters

    def space(trial: Any) -> dict[str, Any]:
        loss = trial.suggest_categorical("arm/loss", losses) if len(losses) > 1 else losses[0]
        seed = trial.suggest_categorical("seed", seeds) if len(seeds) > 1 else seeds[0]
        params: dict[str, Any] = {}
        for name, s in hps.get(loss, {}).items():
            key = f"hp/{loss}/{name}"
            if s.kind == "fixed":
                params[name] = s.values[0]
            elif s.kind in ("choice", "grid"):
                params[name] = trial.suggest_categorical(key, list(s.values))
            else:
                lo, hi = float(s.values[0]), float(s.values[1])
                params[name] = trial.suggest_float(key, lo, hi, log=s.kind == "loguniform")
        out: dict[str, Any] = {"arm/id": loss, "arm/loss": loss, "seed": seed}
        out.update({f"arm/loss_params/{k}": v for k, v in params.items()})
        return out

    return space


def build_search_alg(cfg: SweepConfig) -> Any:
    """None for random search (Tune's grid/variant generator), an OptunaSearch otherwise."""
    if cfg.search.search_alg != "optuna":
        return None
    # Ray's wrapper imports without optuna and only asserts at construction time.
    if importlib.util.find_spec("optuna") is None:
        raise ImportError(f"{cfg.source}: search.search_alg: optuna needs the optuna package "
                          "(pip install -e .[optuna])")
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(
        space=optuna_space(cfg),
        metric=cfg.search.metric,
        mode=cfg.search.mode,
        seed=cfg.search.sample_seed,
    )


def build_scheduler(cfg: SweepConfig) -> Any:
    """ASHAScheduler for ``scheduler.type: asha``, else None (FIFO).

    Early stopping needs Ray's dashboard running: Ray Train frees a stopped trial's placement
    group only after asking the State API, which the dashboard serves.
    """
    sch = cfg.search.scheduler
    if sch.type == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    # stop_last_trials=False: otherwise ASHA stops every trial at max_t, i.e. at its last
    # validation report, before the workers' final report carrying the test results.
    return ASHAScheduler(
        stop_last_trials=False,
        time_attr=sch.time_attr,
        max_t=cfg.scheduler_max_t,
        grace_period=sch.grace_period,
        reduction_factor=sch.reduction_factor,
        brackets=sch.brackets,
    )


# ----------------------------------------------------------------------------- resources


def trial_resources(cfg: SweepConfig) -> dict[str, float]:
    """Everything one trial holds: its driver's custom resource plus its worker group."""
    r = cfg.resources
    need = {r.driver_resource: 1.0, "CPU": r.num_workers * r.cpus_per_worker}
    if r.use_gpu:
        need["GPU"] = r.num_workers * r.gpus_per_worker
    return need


def max_concurrent_trials(cfg: SweepConfig, cluster_resources: Mapping[str, float]) -> int:
    """Trials that can run at once on a cluster with these total resources.

    ``cluster_resources`` is e.g. ``ray.cluster_resources()`` or :func:`cluster_capacity` (an
    autoscaling cluster reports only its running nodes). The result is the smallest
    ``floor(available / needed)`` over the resources one trial needs, capped by
    ``resources.max_concurrent_trials`` and by the number of trials. It never exceeds what fits,
    because a trial whose worker group cannot be placed does not queue: its Train controller
    waits out ``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S`` and retries, holding its driver slot.

    Raises ValueError when one trial can never fit. Only totals are checked: a single worker
    that needs more GPUs than any one node has also never fits.
    """
    need = trial_resources(cfg)
    short = {k: v for k, v in need.items() if float(cluster_resources.get(k, 0.0)) + 1e-9 < v}
    if short:
        have = {k: float(cluster_resources.get(k, 0.0)) for k in need}
        hint = ""
        if cfg.resources.driver_resource in short:
            d = cfg.resources.driver_resource
            hint = (f"; declare {d} on the head node (ray.init(resources={{'{d}': N}}), "
                    f"ray start --resources='{{\"{d}\": N}}' or the node type's resources)")
        raise ValueError(
            f"{cfg.source}: sweep {cfg.name!r}: one trial needs {need} but the cluster has "
            f"{have}: {', '.join(short)} can never fit{hint}"
        )
    fits = min(
        math.floor(float(cluster_resources[k]) / v + 1e-9) for k, v in need.items() if v > 0
    )
    cap = cfg.resources.max_concurrent_trials or fits
    return max(1, min(fits, cap, count_trials(cfg)))


def cluster_capacity(cluster_config: str | Path | Mapping[str, Any]) -> dict[str, float]:
    """Total resources of a ``ray up`` config at full scale (head + every node type at its
    ``max_workers``), for :func:`max_concurrent_trials` before the autoscaler adds nodes.

    Needs explicit ``resources`` per node type; the ``local`` provider has none (its resources
    come from ``ray start`` flags), so use ``ray.cluster_resources()`` there.
    """
    if isinstance(cluster_config, Mapping):
        conf, src = dict(cluster_config), "<dict>"
    else:
        src = str(cluster_config)
        conf = yaml.safe_load(Path(cluster_config).read_text())
    types_ = conf.get("available_node_types")
    if not types_:
        raise ValueError(f"{src}: no available_node_types (local provider?): use "
                         "ray.cluster_resources() on the running cluster")
    head, global_max = conf.get("head_node_type"), int(conf.get("max_workers", 0))
    total: dict[str, float] = {}
    for tname, t in types_.items():
        count = 1 if tname == head else min(int(t.get("max_workers", global_max)), global_max)
        if not t.get("resources") and count:
            raise ValueError(f"{src}: node type {tname!r} declares no resources")
        for k, v in (t.get("resources") or {}).items():
            total[k] = total.get(k, 0.0) + float(v) * count
    return total


def tune_config_kwargs(
    cfg: SweepConfig, cluster_resources: Mapping[str, float]
) -> dict[str, Any]:
    """Keyword arguments for ``ray.tune.TuneConfig`` (metric, mode, samples, search, limit)."""
    return {
        "metric": cfg.search.metric,
        "mode": cfg.search.mode,
        # Random search: arms are already expanded, so Tune must not repeat the grid.
        "num_samples": cfg.search.num_samples if cfg.search.search_alg == "optuna" else 1,
        "scheduler": build_scheduler(cfg),
        "search_alg": build_search_alg(cfg),
        "max_concurrent_trials": max_concurrent_trials(cfg, cluster_resources),
    }


__all__ = [
    "TrialSpec", "build_arms", "build_param_space", "build_scheduler", "build_search_alg",
    "cluster_capacity", "count_trials", "max_concurrent_trials", "optuna_space", "sample",
    "trial_resources", "trial_spec", "tune_config_kwargs",
]
