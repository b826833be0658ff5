"""The study as a Ray Tune sweep: one trial per (loss, hyperparameters, seed), each a Ray Train
``TorchTrainer`` run (data-parallel workers, checkpoints, restarts), then the report.

``python -m hytver_dist.sweep [--config sweeps/NAME.yaml] [--address auto] [--resume] ...``
joins a running cluster when there is one, else starts an embedded local Ray. How a sweep
runs: docs/architecture.md; flags: docs/cli.md; sweep files: docs/sweeps.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..files import is_uri, normalize, write_text
from ..report.build import CURVES_FILE, SWEEP_FACTS_FILE, unrepeated_rows
from ..run.config import ConfigError, RunConfig, add_override_argument
from . import tracking, trial_files
from .config import ResourcesConfig, SweepConfig, json_schema
from .lock import SweepRunning, sweep_lock
from .progress import final_summary, make_callback, ray_output_to
from .ray_compat import set_local_env, started_cluster_address
from .search import (
    build_param_space,
    cluster_capacity,
    count_trials,
    trial_spec,
    tune_config_kwargs,
)

CHECKPOINT_FILE = "checkpoint.pt"
# Written by `ray up` on the head node: the autoscaler's node types.
RAY_UP_CONFIG = Path("~/ray_bootstrap_config.yaml").expanduser()

# --------------------------------------------------------------------------- worker side
def train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: for each seed of the trial in turn, train (reports + checkpoints)
    and evaluate the test cases; the seeds share this process, its imports and its data."""
    import ray.train

    from ..model import load_checkpoint
    from ..run.prepare import prepare_data
    from ..run.pretrain import open_init

    cfg: RunConfig = config["run"]
    seeds = [int(s) for s in config["seeds"]]
    out = trial_files.run_dir(config["storage"], config["trial_id"])
    # A trial restarted after its work was done (the driver died between the final report and
    # Tune's record of it): report the stored result; no data, no training, no evaluation.
    stored = trial_files.read_final(out, seeds)
    if stored is not None:
        ray.train.report({**stored, "final_from_storage": 1})
        return
    data = prepare_data(cfg.data, data_dir=config.get("data_dir"),
                        cache_dir=config.get("cache_dir"))
    # A checkpoint belongs to the seed being trained when it was written; the seeds before it
    # are finished and their test rows are already in the run directory.
    resume, first = None, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = load_checkpoint(Path(d) / CHECKPOINT_FILE)
        seed = int(resume["spec"]["seed"])
        if seed not in seeds:
            raise ValueError(f"{checkpoint.path}: a checkpoint of seed {seed}, which is not one "
                             f"of this trial's seeds {seeds}")
        first = seeds.index(seed)
    init = open_init(config.get("init"))
    # Rank 0: the test rows of the finished seeds, as in the run directory (read once, on a
    # restart that skips seeds; then kept here).
    written = None
    if first > 0 and ray.train.get_context().get_world_rank() == 0:
        written = trial_files.read_cases(f"{out}/{trial_files.CASES_FILE}")
    work, bests = 0.0, []
    for i in range(first, len(seeds)):
        started = time.perf_counter()
        final, written = _train_one_seed(config, cfg, data, seeds[i], i,
                                         resume if i == first else None, init, out, written)
        work += time.perf_counter() - started
        bests.append(final["best_val_dice"])
    # The last validation row comes first (Tune checks every result for the sweep's metric).
    # After a restart, best_val_dice and work_s cover the seeds this attempt trained.
    metrics = {**final, "done_training": 1, "best_val_dice": sum(bests) / len(bests),
               "seeds_done": len(seeds), "work_s": work}
    if ray.train.get_context().get_world_rank() == 0:
        trial_files.write_final(out, seeds, metrics)  # after the cases file: the work is done
    ray.train.report(metrics)


def _train_one_seed(config: dict[str, Any], cfg: RunConfig, data: Any, seed: int, index: int,
                    resume: dict[str, Any] | None, init: Any, out: str,
                    written: Any) -> tuple[dict[str, Any], Any]:
    """Train one seed of the trial, evaluate it on the test cases and write them with
    ``written`` (the earlier seeds' rows) to the run directory's cases file (rank 0). Returns
    its last validation row with its best score, and (rank 0) the rows now written."""
    import pandas as pd
    import ray.train
    import ray.train.torch
    import torch

    from ..model import build_model
    from ..run.evaluate import evaluate_model
    from ..run.train import RunSpec, loss_activation, model_kwargs, train_loop

    spec = RunSpec.from_config(cfg, config["loss"], seed, config["loss_params"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()

    def report(row: dict[str, float], payload: dict[str, Any] | None) -> None:
        row = {**row, "seed": seed, "seed_index": index}
        if payload is None:
            ray.train.report(row)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(payload, Path(d) / CHECKPOINT_FILE)
            ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(d))

    result = train_loop(spec, data, device, resume=resume, report=report,
                        wrap_model=ray.train.torch.prepare_model, init=init)
    if result.init_report and rank == 0 and index == 0:
        print(result.init_report, flush=True)  # matched / missing keys of the initial weights
    workers = _gather(world, {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(),
                              "pid": os.getpid(), "seed": seed,
                              "params_digest": result.params_digest,
                              "patch_digest": result.patch_digest})
    # Test evaluation, sharded over the ranks; rank 0 writes every case to the run directory.
    model = build_model(model_kwargs(spec.model, data.dataset)).to(device)
    model.load_state_dict(result.best_state)
    test = data.part("test")
    mine = [c.id for c in test[rank::world]]
    subset = dataclasses.replace(data, split=type(data.split)(
        data.split.train, data.split.val, tuple(mine), data.split.meta))
    rows = _gather(world, evaluate_model(
        model, subset, spec.training,
        activation=loss_activation(spec.training, data.dataset)).to_dict("records"))
    rows = [r for part in rows for r in part]
    if rank == 0:
        order = {c.id: i for i, c in enumerate(test)}
        frame = pd.DataFrame(sorted(rows, key=lambda r: order[r["case"]]))  # stable: classes
        frame.insert(0, "seed", seed)
        if written is not None:  # the seeds before this one (a rerun of this seed replaces it)
            frame = pd.concat([written[written["seed"] != seed], frame], ignore_index=True)
        write_text(f"{out}/{trial_files.CASES_FILE}", frame.to_csv(index=False))
        write_text(f"{out}/{trial_files.WORKERS_FILE}",
                               json.dumps(workers, indent=1))
        written = frame
    return {**result.history[-1], "seed": seed, "seed_index": index,
            "iteration": result.iterations, "best_val_dice": result.best_metric,
            "best_iteration": result.best_iteration, "n_test_cases": len(rows),
            # Where rank 0 finished (Tune's node_ip / pid are the trial driver's).
            "node_id": workers[0]["node_id"], "worker_pid": os.getpid()}, written


def _gather(world: int, obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` without a process group)."""
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------------------- trial side
def scaling_and_failure(r: ResourcesConfig) -> tuple[Any, Any]:
    """The ``ScalingConfig`` and ``FailureConfig`` of every Train run of the sweep."""
    import ray.train

    per_worker = {"CPU": r.cpus_per_worker}
    if r.use_gpu:
        per_worker["GPU"] = r.gpus_per_worker
    return (ray.train.ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu,
                                    resources_per_worker=per_worker),
            ray.train.FailureConfig(max_failures=r.max_failures,
                                    controller_failure_limit=r.controller_failure_limit))


def run_trial(config: dict[str, Any], run: RunConfig, resources: ResourcesConfig, storage: str,
              data_dir: str | None, cache_dir: str | None, init: str | None = None) -> None:
    """One Tune trial = one Train run (the driver of its worker group), training the trial's
    seeds one after another on the same workers, each of which receives ``run``."""
    import ray.train
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from .ray_compat import torch_trainer_class

    spec = trial_spec(config)
    scaling, failure = scaling_and_failure(resources)
    trial_id = ray.tune.get_context().get_trial_id()
    trainer = torch_trainer_class()(
        train_worker,
        train_loop_config={"run": run, "loss": spec.loss, "seeds": list(spec.seeds),
                           "loss_params": spec.params, "data_dir": data_dir,
                           "cache_dir": cache_dir, "storage": storage, "trial_id": trial_id,
                           "init": init},
        scaling_config=scaling,
        run_config=ray.train.RunConfig(
            name=trial_files.run_name(trial_id), storage_path=storage, failure_config=failure,
            # One kept checkpoint: a restart needs only the latest.
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            callbacks=[TuneReportCallback()]),
    )
    trainer.fit()


def trial_name(trial: Any) -> str:
    """Readable, unique trial names: ``<arm>-seed<k>-<trial id>`` (``seed0_1_2``: a group)."""
    spec = trial_spec(trial.config)
    return f"{spec.arm_id}-seed{spec.seed_label}-{trial.trial_id}"


# ---------------------------------------------------------------------------- driver side
def storage_root(cfg: RunConfig) -> str:
    """Absolute local path or URI where Tune and Train keep experiment state."""
    return normalize(cfg.storage.path)


def connect(address: str | None, cfg: SweepConfig, num_cpus: int | None) -> dict[str, Any]:
    """Join ``address`` (or a running cluster), else start an embedded local Ray that declares
    the driver resource. Returns info for the user (mode, dashboard URL)."""
    import ray

    if address is None and os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]
    if address is None and started_cluster_address() is not None:
        try:
            ctx = ray.init(address="auto", logging_level="WARNING")
            return {"mode": "existing cluster", "dashboard": ctx.dashboard_url}
        except ConnectionError:
            pass
    if address is not None:
        ctx = ray.init(address=address, logging_level="WARNING")
        return {"mode": f"cluster at {address}", "dashboard": ctx.dashboard_url}
    set_local_env()
    cpus = num_cpus or os.cpu_count() or 1
    # The State API (served by the dashboard) lets each Train run's placement-group cleaner
    # see its controller end and exit; without it stopped trials leak placement groups and
    # every cleaner polls (and logs) once a second for the rest of the sweep.
    ctx = ray.init(num_cpus=cpus, resources={cfg.resources.driver_resource: cpus},
                   include_dashboard=True, logging_level="WARNING")
    return {"mode": f"embedded local Ray ({cpus} CPUs)", "dashboard": ctx.dashboard_url}


def cluster_resources() -> dict[str, float]:
    """Resources to size concurrency by: the running cluster's, or, on a ``ray up`` head, the
    autoscaler's full-scale capacity when larger."""
    import ray

    have = {k: float(v) for k, v in ray.cluster_resources().items()}
    if RAY_UP_CONFIG.is_file():
        try:
            full = cluster_capacity(RAY_UP_CONFIG)
        except ValueError:  # local provider: resources come from `ray start` flags
            return have
        return {k: max(have.get(k, 0.0), full.get(k, 0.0)) for k in set(have) | set(full)}
    return have


def check_worker_fits(cfg: SweepConfig) -> None:
    """Fail fast when no single node (running, or a ``ray up`` node type) can host one Train
    worker: totals alone miss e.g. ``cpus_per_worker: 2`` on 1-CPU nodes, which would otherwise
    wait out Train's worker-group start timeout on every retry."""
    import ray
    import yaml

    r = cfg.resources
    need = {"CPU": r.cpus_per_worker, **({"GPU": r.gpus_per_worker} if r.use_gpu else {})}
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if RAY_UP_CONFIG.is_file():
        types_ = (yaml.safe_load(RAY_UP_CONFIG.read_text()) or {}).get("available_node_types") or {}
        nodes += [t.get("resources") or {} for t in types_.values()]
    if not any(all(float(n.get(k, 0.0)) + 1e-9 >= v for k, v in need.items()) for n in nodes):
        largest = {k: max((float(n.get(k, 0.0)) for n in nodes), default=0.0) for k in need}
        raise ValueError(f"{cfg.source}: sweep {cfg.name!r}: one Train worker needs {need} on a "
                         f"single node, but no node has that much (largest per resource: "
                         f"{largest}); lower resources.cpus_per_worker/gpus_per_worker")


class SweepInterrupted(KeyboardInterrupt):
    """The sweep was stopped (SIGINT/Ctrl-C, SIGUSR1) before every trial ended; its state is
    saved and ``--resume`` (``run_sweep(resume=True)``) continues it. ``main`` exits 130."""


class SweepFailed(RuntimeError):
    """No trial of the sweep finished (all failed or were stopped); ``main`` exits 1."""


def _failure_summary(cfg: SweepConfig, results_dir: Path) -> str:
    """One line per trial that did not finish, from the status files just written."""
    lines = []
    for path in sorted((results_dir / "trials").glob("*/status.json")):
        status = json.loads(path.read_text())
        lines.append(f"  {status['trial']}: {status['status']}: {status.get('error')}")
    return (f"sweep {cfg.name!r}: none of its {count_trials(cfg)} trials finished; no report "
            f"(statuses in {results_dir / 'trials'}):\n" + "\n".join(lines))


def unfinished_trials(cfg: SweepConfig, experiment: str, grid: Any) -> int:
    """Trials that an interrupt (SIGINT/Ctrl-C, SIGUSR1) left unfinished, 0 for a complete run.

    Tune returns normally after an interrupt and, cleaning up, marks its live trials
    TERMINATED in memory, so the grid cannot tell; the experiment state it saved just before
    can. Trials the searcher had not generated yet count too.
    """
    total = count_trials(cfg)
    done = [r for r in grid if r.error is not None or (r.metrics or {}).get("done_training")]
    if len(done) >= total:
        return 0
    from ray.tune import ExperimentAnalysis

    try:
        trials = ExperimentAnalysis(experiment).trials
    except Exception:  # unreadable state: judge by the grid alone
        return max(0, total - len(grid))
    live = sum(t.status not in ("TERMINATED", "ERROR") for t in trials)
    return live + max(0, total - len(trials))


def collect_results(grid: Any, results_dir: Path, storage: str, *,
                    interrupted: bool = False) -> tuple[int, int]:
    """Write ``trials/<trial>/cases.csv`` and ``status.json`` from Tune's results and the
    ``cases.csv`` each trial's rank 0 wrote into its run directory under ``storage``; returns
    (ok, not ok) counts: trials that failed or were stopped early (status ``stopped``).
    ``interrupted``: skip trials with neither results nor an error (they continue on resume)
    instead of marking them failed."""
    ok = failed = 0
    kept: list[Any] = []  # the case rows written so far
    for result in grid:
        metrics = result.metrics or {}
        config = result.config or {}
        name = Path(result.path).name if result.path else metrics.get("trial_id", "unknown")
        trial_id = metrics.get("trial_id") or name.rsplit("-", 1)[-1]
        spec = trial_spec(config) if config else None
        out = results_dir / "trials" / name
        status: dict[str, Any] = {"trial": name, "loss": spec.loss if spec else None,
                                  "seed": spec.seed_label if spec else None}
        done = result.error is None and metrics.get("done_training")
        if interrupted and result.error is None and not done:
            continue
        out.mkdir(parents=True, exist_ok=True)
        if spec is not None:
            write_curves(result, spec, name, out / CURVES_FILE)
        cases_path = f"{trial_files.run_dir(storage, trial_id)}/{trial_files.CASES_FILE}"
        frame = trial_files.read_cases(cases_path) if done else None
        if frame is not None:
            have = set(frame["seed"]) if "seed" in frame else set()
            missing = sorted(set(spec.seeds) - have)
        if frame is not None and not missing:
            seeds = frame.pop("seed")
            frame.insert(0, "params", json.dumps(spec.params, sort_keys=True))
            frame.insert(0, "seed", seeds)
            frame.insert(0, "loss", spec.loss)
            frame.insert(0, "trial", name)
            frame, repeat = unrepeated_rows(kept, frame, results_dir / "trials")
            status.update(status="ok", best_val_dice=metrics.get("best_val_dice"),
                          work_s=metrics.get("work_s"))
            if frame is None:  # the same rows with other values in another trial
                status.update(status="failed", error=repeat)
                failed += 1
            else:
                if repeat is not None:
                    status.update(status="duplicate" if frame.empty else "ok", note=repeat)
                if not frame.empty:
                    frame.to_csv(out / "cases.csv", index=False)
                    kept.append(frame)
                ok += 1
            if frame is None or frame.empty:
                (out / "cases.csv").unlink(missing_ok=True)  # from an earlier collection
        elif frame is not None:
            status.update(status="failed", error=f"{cases_path}: no rows for seed(s) "
                          f"{', '.join(map(str, missing))} of the trial")
            failed += 1
        elif done:
            status.update(status="failed", error=f"{cases_path}: missing (the trial finished "
                          "but its test results are not on the storage)")
            failed += 1
        elif result.error is None:
            # Ended cleanly before its test evaluation: stopped early by the scheduler (ASHA).
            status.update(status="stopped", error="stopped early by the scheduler at iteration "
                          f"{metrics.get('iteration')} (val_dice {metrics.get('val_dice')}); "
                          "not evaluated on the test cases")
            failed += 1
        else:
            status.update(status="failed", error=_short_error(result.error))
            failed += 1
        (out / "status.json").write_text(json.dumps(status, indent=1, default=str))
    return ok, failed


def write_curves(result: Any, spec: Any, name: str, path: Path) -> None:
    """The trial's validation history (``iteration``, ``train_loss``, ``val_dice`` per seed)
    from Tune's record of its reports; a report repeated after a restart counts once."""
    try:
        frame = result.metrics_dataframe
    except Exception:  # noqa: BLE001 - no progress file (a trial that never reported)
        frame = None
    wanted = ["seed", "iteration", "train_loss", "val_dice"]
    if frame is None or frame.empty or not {"iteration", "val_dice"} <= set(frame.columns):
        return
    if "seed" not in frame.columns:
        frame = frame.assign(seed=spec.seeds[0])
    frame = frame[[c for c in wanted if c in frame.columns]].dropna(subset=["val_dice"])
    frame = frame.drop_duplicates(["seed", "iteration"], keep="last")
    frame.insert(0, "params", json.dumps(spec.params, sort_keys=True))
    frame.insert(0, "loss", spec.loss)
    frame.insert(0, "trial", name)
    frame.sort_values(["seed", "iteration"]).to_csv(path, index=False)


def _short_error(error: BaseException | str) -> str:
    """The innermost line that says what went wrong (Ray wraps worker errors several times)."""
    text = str(error)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for i in range(len(lines) - 1, -1, -1):
        ln = lines[i]
        if any(k in ln for k in ("DataError", "Error:", "Error(", "Exception:")):
            if ln.endswith(":") and i + 1 < len(lines):  # "ControllerError: ... error:" + why
                ln = f"{ln} {lines[i + 1]}"
            return ln[:500]
    return (lines[-1] if lines else repr(error))[:500]


def _preflight(cfg: SweepConfig, data_dir: str | None, root: str) -> None:
    """Bad paths fail here, naming the path, before Ray starts or any trial is scheduled."""
    from ..run.prepare import data_format
    from .preflight import check_data_dir, check_storage

    if data_dir is not None:
        check_data_dir(data_dir, "--data", data_format(cfg.data, data_dir))
    else:
        check_data_dir(cfg.data.path, "data.path", data_format(cfg.data, cfg.data.path))
    check_storage(root)


def write_sweep_facts(results_dir: Path, facts: dict[str, Any]) -> None:
    """``<results_dir>/sweep.json``: wall times and trial slots, for the report's utilisation
    (a resumed sweep overwrites it with the resumed part's numbers)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    keep = {k: v for k, v in facts.items() if k not in ("unfinished", "ok")}
    (results_dir / SWEEP_FACTS_FILE).write_text(json.dumps(keep, indent=1,
                                                                       default=str))


def _run_tuner(cfg: SweepConfig, info: dict[str, Any], out: Any, root: str, experiment: str,
               results_dir: Path, init: str | None, data_dir: str | None,
               cache_dir: str | None, restore: bool, retry_errored: bool,
               callbacks: Sequence[Any], verbose: int, log_path: Path,
               tracked: dict[str, Any] | None = None) -> dict[str, Any]:
    """The part of :func:`run_sweep` on a connected Ray: the pretraining stage, then Tune.
    ``restore``: continue the existing experiment (run_sweep checked there is one to resume)."""
    from ray import tune

    total = count_trials(cfg)

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    say(f"sweep {cfg.name!r}: {total} trials on {info['mode']}")
    if info.get("dashboard"):
        say(f"Ray dashboard: http://{info['dashboard']}")
    if verbose == 0:
        say(f"Ray's output: {log_path} (--verbose shows it here)")
    for line in tracking.console_lines(cfg, experiment, tracked):
        say(line)
    kwargs = tune_config_kwargs(cfg, cluster_resources())
    check_worker_fits(cfg)
    facts: dict[str, Any] = {"slots": kwargs["max_concurrent_trials"], "pretrain_s": 0.0}
    if cfg.pretrain is not None:
        from ..run.prepare import prepare_data
        from .pretrain import ensure_on_ray

        t0 = time.perf_counter()
        # Prepared here once (synthetic data generated, volumes cached) before any worker.
        data = prepare_data(cfg.data, data_dir=data_dir, cache_dir=cache_dir)
        facts["data_s"] = time.perf_counter() - t0
        scaling, failure = scaling_and_failure(cfg.resources)
        say(f"pretraining ({cfg.pretrain.loss}, {cfg.pretrain.iterations} iterations) ...")
        t0 = time.perf_counter()
        init, reused = ensure_on_ray(cfg.run, data, root, data_dir=data_dir, cache_dir=cache_dir,
                                     scaling=scaling, failure=failure)
        facts["pretrain_s"] = time.perf_counter() - t0
        took = "reused" if reused else f"{facts['pretrain_s']:.0f} s"
        say(f"pretrained model ({took}): {init}")
    elif init is not None:
        say(f"every trial starts from {init}")
    say(f"up to {kwargs['max_concurrent_trials']} trials at a time; experiment state in "
        f"{experiment}")
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, run=cfg.run, resources=cfg.resources, storage=root,
                             data_dir=data_dir, cache_dir=cache_dir, init=init),
        {cfg.resources.driver_resource: 1})
    out.flush()
    progress = make_callback(total, cfg.search.metric, cfg.search.mode, out.fileno())

    if restore:
        say(f"resuming {experiment}: finished trials are kept, unfinished ones continue "
            "from their last checkpoint")
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True,
                                   resume_errored=retry_errored)
    else:
        tuner = tune.Tuner(
            trainable, param_space=build_param_space(cfg),
            # reuse_actors: a trial's driver process (torch and Ray Train imported) serves
            # the next trial instead of a fresh one starting for each.
            tune_config=tune.TuneConfig(**kwargs, reuse_actors=True,
                                        trial_name_creator=trial_name,
                                        trial_dirname_creator=trial_name),
            run_config=tune.RunConfig(
                name=cfg.name, storage_path=root, verbose=verbose,
                failure_config=tune.FailureConfig(
                    max_failures=cfg.resources.trial_max_failures),
                callbacks=[progress, *tracking.callbacks(cfg, results_dir), *callbacks]))
    start = time.perf_counter()
    grid = tuner.fit()
    unfinished = unfinished_trials(cfg, experiment, grid)
    ok, failed = collect_results(grid, results_dir, root, interrupted=unfinished > 0)
    tracking.log_test_results(results_dir)
    facts["trials_wall_s"] = time.perf_counter() - start
    say(f"{ok} trials finished, {failed} failed in {facts['trials_wall_s']:.0f} s; "
        f"per-case results in {results_dir / 'trials'}")
    return {**facts, "unfinished": unfinished, "ok": ok, "failed": failed}


def run_sweep(cfg: SweepConfig, *, address: str | None = None, storage: str | None = None,
              resume: bool = False, retry_errored: bool = False, data_dir: str | None = None,
              cache_dir: str | None = None, num_cpus: int | None = None,
              callbacks: Sequence[Any] = (), verbose: int = 0) -> Path | None:
    """Run (or resume) the sweep ``cfg``; returns the report's summary path (None if disabled).

    ``callbacks``: extra ``ray.tune.Callback`` objects (progress hooks, tests). ``verbose``:
    0 = compact progress on the console and Ray's output in ``<results_dir>/logs/ray.log``;
    1 or 2 = Ray's output (and Tune's status tables at that level) on the console too. Raises
    :class:`SweepInterrupted` when Tune stopped early on SIGINT (finished trials' results are
    written, nothing else; resume continues), :class:`SweepFailed` when no trial finished, and,
    before Ray starts, ``DataError``/``PermissionError``/``FileExistsError`` for bad paths or
    an existing sweep without ``resume``, and :class:`~hytver_dist.sweep.lock.SweepRunning`
    when another process runs the same sweep (same storage and name).
    """
    if storage is not None:
        cfg = cfg.with_value("storage.path", storage)
    if cfg.data.path is not None and not is_uri(cfg.data.path):
        # Workers run in other directories (and on other nodes): resolve here, once.
        cfg = cfg.with_value("data.path", str(Path(cfg.data.path).expanduser().resolve()))
    root = storage_root(cfg)
    experiment = f"{root.rstrip('/')}/{cfg.name}"
    # Per-case CSVs are written by this driver, so they need a local (or mounted) path.
    results_dir = Path(cfg.results_dir if not is_uri(cfg.results_dir)
                       else Path("results") / cfg.name / "results").resolve()
    init = cfg.model.init_checkpoint
    if init is not None and not is_uri(init):
        init = str(Path(init).expanduser().resolve())
        cfg = cfg.with_value("model.init_checkpoint", init)
        if not Path(init).is_file():
            raise FileNotFoundError(f"{cfg.source}: model.init_checkpoint: {init} not found")
    _preflight(cfg, data_dir, root)  # before resolving: "" must fail, not become the cwd
    tracking.check_installed(cfg)
    data_dir = None if data_dir is None else str(Path(data_dir).resolve())
    cache_dir = None if cache_dir is None else str(Path(cache_dir).resolve())
    with sweep_lock(experiment, cfg.name):  # before the existence check, until the end
        return _run_locked(cfg, root, experiment, results_dir, init, address=address,
                           resume=resume, retry_errored=retry_errored, data_dir=data_dir,
                           cache_dir=cache_dir, num_cpus=num_cpus, callbacks=callbacks,
                           verbose=verbose)


def _run_locked(cfg: SweepConfig, root: str, experiment: str, results_dir: Path, init: str | None,
                *, address: str | None, resume: bool, retry_errored: bool,
                data_dir: str | None, cache_dir: str | None, num_cpus: int | None,
                callbacks: Sequence[Any], verbose: int) -> Path | None:
    """:func:`run_sweep` once it holds the experiment's lock."""
    import ray
    from ray import tune

    exists = tune.Tuner.can_restore(experiment)
    if exists and not resume:
        raise FileExistsError(f"sweep {cfg.name!r} already exists at {experiment}: "
                              "pass --resume to continue it, or change name/storage")
    sweep_start = time.perf_counter()
    log_path = results_dir / "logs" / "ray.log"
    status, report = "FAILED", None  # the MLflow parent run's end, should anything below raise
    try:
        with ray_output_to(log_path, verbose > 0) as out:
            tracked = tracking.start(cfg, results_dir, experiment, resume and exists)
            info = connect(address, cfg, num_cpus)
            try:
                summary_info = _run_tuner(cfg, info, out, root, experiment, results_dir, init,
                                          data_dir, cache_dir, resume and exists,
                                          retry_errored, callbacks, verbose, log_path, tracked)
            finally:
                ray.shutdown()
        unfinished, ok = summary_info["unfinished"], summary_info["ok"]
        summary_info["total_wall_s"] = time.perf_counter() - sweep_start
        summary_info["resumed"] = resume
        write_sweep_facts(results_dir, summary_info)
        if unfinished:
            status = "KILLED"  # resumable
            raise SweepInterrupted(f"sweep {cfg.name!r} interrupted with {unfinished} of "
                                   f"{count_trials(cfg)} trials unfinished; its state is "
                                   "saved: rerun the same command with --resume to continue it")
        if ok == 0:
            raise SweepFailed(_failure_summary(cfg, results_dir))
        if cfg.report.enabled:
            from ..report import build_report

            report = Path(cfg.report.out_dir or results_dir / "report")
            summary = build_report(results_dir, report,
                                   reference_loss=cfg.report.reference_loss,
                                   confidence=cfg.report.confidence)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracking.finish(results_dir, status, report if status == "FINISHED" else None)
    if not cfg.report.enabled:
        return None
    statuses = [json.loads(p.read_text())
                for p in sorted((results_dir / "trials").glob("*/status.json"))]
    print(final_summary(statuses, summary, report / "table1.csv"))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hytver_dist.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "--sweep", default="default", dest="config",
                        help="sweep YAML: a path or a name under sweeps/ (default: default)")
    parser.add_argument("--address", help="Ray cluster address (e.g. auto); default: a running "
                        "cluster if any, else an embedded local Ray")
    parser.add_argument("--storage", help="experiment storage: local dir, shared mount or "
                        "s3://... (overrides storage.path)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted sweep (finished trials are not rerun)")
    parser.add_argument("--retry-errored", action="store_true",
                        help="with --resume: also restart trials that failed")
    parser.add_argument("--data", help="MSSEG-2 or nnU-Net v2 raw dataset directory (overrides "
                        "data.path)")
    parser.add_argument("--cache", help="cache for synthetic data and preprocessed cases "
                        "(default $HYTVER_CACHE or ~/.cache/hytver_dist)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray")
    parser.add_argument("--verbose", "-v", action="count", default=0,
                        help="show Ray's output live (-vv: also Tune's status tables)")
    add_override_argument(parser)
    parser.add_argument("--print-schema", action="store_true",
                        help="print the config's JSON schema and exit")
    args = parser.parse_args(argv)
    if args.print_schema:
        print(json.dumps(json_schema(), indent=2))
        return 0
    try:
        cfg = SweepConfig.load(args.config, args.overrides)
        run_sweep(cfg, address=args.address, storage=args.storage, resume=args.resume,
                  retry_errored=args.retry_errored, data_dir=args.data, cache_dir=args.cache,
                  num_cpus=args.num_cpus, verbose=args.verbose)
    except (ConfigError, ValueError, FileExistsError, FileNotFoundError,
            PermissionError, SweepRunning) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SweepInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return 130
    except SweepFailed as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
