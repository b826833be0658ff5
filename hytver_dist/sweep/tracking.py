"""Experiment tracking of a sweep: MLflow runs and TensorBoard event files (``tracking:``).

One parent MLflow run per sweep and one nested run per trial, all logged by the driver
process; run IDs in ``<results_dir>/mlflow/runs.json`` so a resumed sweep continues them.
What is logged: docs/sweeps.md (``tracking``); design: docs/architecture.md.
"""

from __future__ import annotations

import functools
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._extras import require_extra
from ..run.config import ConfigError
from .config import SweepConfig
from .mlflow_runs import (
    STORE_DIR,
    client,
    log_metrics,
    params,
    read_store,
    store_path,
    write_store,
)

EXTRA = "tracking"
TEST_MARKER = "test_n_cases"  # present on a trial's run once its test summary is logged


# ----------------------------------------------------------------------------- before Ray
def check_installed(cfg: SweepConfig) -> None:
    """``tracking.mlflow.enabled`` without mlflow fails here, before Ray starts, naming the
    extra."""
    if not cfg.tracking.mlflow.enabled:
        return
    try:
        require_extra(EXTRA, "mlflow")
    except ImportError as exc:
        raise ConfigError(f"{cfg.source}: tracking.mlflow.enabled: {exc}") from None


def tracking_uri(cfg: SweepConfig, results_dir: Path) -> str:
    """The configured URI, or a SQLite file under the results folder (MLflow 3 refuses its
    plain-directory store unless MLFLOW_ALLOW_FILE_STORE is set)."""
    return cfg.tracking.mlflow.tracking_uri or \
        f"sqlite:///{Path(results_dir).resolve() / STORE_DIR / 'mlflow.db'}"


def start(cfg: SweepConfig, results_dir: Path, experiment: str,
          resume: bool) -> dict[str, Any] | None:
    """Open (or, resuming, reopen) the sweep's parent run and write the run store the trial
    callback reads; returns the store (None when MLflow is off). Raises ValueError naming the
    key when the tracking URI cannot be used."""
    path = store_path(results_dir)
    old = read_store(path)
    m = cfg.tracking.mlflow
    if not m.enabled:
        if old is not None and old.get("enabled"):
            write_store(path, {**old, "enabled": False})  # a resumed sweep with MLflow off
        return None
    uri = tracking_uri(cfg, results_dir)
    name = m.experiment_name or cfg.name
    try:
        mc = client(uri)
        exp_id = _experiment(mc, name, uri, results_dir)
        same = (resume and old is not None and old.get("tracking_uri") == uri
                and old.get("experiment_id") == exp_id and old.get("parent_run_id"))
        if same:
            parent = old["parent_run_id"]
            mc.update_run(parent, status="RUNNING")
            runs = dict(old.get("runs") or {})
        else:
            parent = mc.create_run(exp_id, run_name=cfg.name, tags={
                **m.tags, "hytver.sweep": experiment}).info.run_id
            mc.log_batch(parent, params=params(sweep_params(cfg)))
            mc.log_text(parent, json.dumps(cfg.to_dict(), indent=1), "config.json")
            runs = {}
    except ConfigError as exc:
        raise ConfigError(f"{cfg.source}: {exc}") from None
    except Exception as exc:  # mlflow's and the transport's errors alike
        raise ValueError(f"{cfg.source}: tracking.mlflow.tracking_uri: {uri}: "
                         f"{type(exc).__name__}: {exc}") from None
    store = {"enabled": True, "tracking_uri": uri, "experiment_id": exp_id,
             "experiment_name": name, "parent_run_id": parent, "tags": dict(m.tags),
             "runs": runs}
    write_store(path, store)
    return store


def _experiment(mc: Any, name: str, uri: str, results_dir: Path) -> str:
    """The id of experiment ``name``, created when missing (artifacts under the results
    folder, unless a tracking server manages them)."""
    exp = mc.get_experiment_by_name(name)
    if exp is None:
        remote = uri.startswith(("http://", "https://", "databricks"))
        location = None if remote else (Path(results_dir).resolve() / STORE_DIR /
                                        "artifacts").as_uri()
        try:
            return mc.create_experiment(name, artifact_location=location)
        except Exception:  # created meanwhile by another sweep
            exp = mc.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage != "active":
        raise ConfigError(f"tracking.mlflow.experiment_name: MLflow experiment {name!r} is "
                          "deleted; restore it (mlflow experiments restore) or choose "
                          "another name")
    return exp.experiment_id


def sweep_params(cfg: SweepConfig) -> dict[str, Any]:
    s, t = cfg.search, cfg.training
    return {"sweep": cfg.name, "losses": ",".join(s.losses), "seeds": ",".join(map(str, s.seeds)),
            "seeds_per_trial": s.seeds_per_trial, "search_alg": s.search_alg,
            "scheduler": s.scheduler.type, "iterations": t.iterations, "lr": t.lr,
            "batch_size": t.batch_size, "eval_every": t.eval_every,
            "pretrain": cfg.pretrain.loss if cfg.pretrain else None}


# ----------------------------------------------------------------------------- on Ray
def console_lines(cfg: SweepConfig, experiment: str, store: dict[str, Any] | None) -> list[str]:
    """What to run to watch the sweep in TensorBoard and MLflow."""
    out = []
    if cfg.tracking.tensorboard:
        out.append(f"TensorBoard: tensorboard --logdir {shlex.quote(experiment)}")
    if store is not None:
        uri = store["tracking_uri"]
        if uri.startswith(("http://", "https://")):
            out.append(f"MLflow: {uri.rstrip('/')}/#/experiments/{store['experiment_id']}"
                       f"/runs/{store['parent_run_id']}")
        else:
            out.append(f"MLflow: mlflow ui --backend-store-uri {shlex.quote(uri)}  "
                       f"(experiment {store['experiment_name']!r})")
    return out


def callbacks(cfg: SweepConfig, results_dir: Path) -> list[Any]:
    """Tune callbacks of a new sweep: the MLflow trial logger (always there, idle while the
    run store says MLflow is off, so a resume can turn it on) and, with ``tensorboard:
    false``, the logger that keeps Tune from adding its TensorBoard one."""
    from .tracking_callbacks import MlflowTrialRuns, NoTensorBoard

    out: list[Any] = [MlflowTrialRuns(str(store_path(results_dir)))]
    if not cfg.tracking.tensorboard:
        out.append(NoTensorBoard())
    return out


# ----------------------------------------------------------------------------- after Tune
def _never_fails(fn: Callable[..., Any]) -> Callable[..., Any]:
    """After the trials, a tracking server that fails must not fail the sweep: its results
    are in the results folder; the warning says what MLflow lacks."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            print(f"warning: MLflow: {fn.__name__} failed: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)
            return None
    return wrapper


@_never_fails
def log_test_results(results_dir: Path) -> int:
    """Log each finished trial's test summary (means and medians over its cases) to its run,
    once; returns how many runs got one."""
    store = read_store(store_path(results_dir))
    if not store or not store.get("enabled"):
        return 0
    import pandas as pd

    from ..run.evaluate import summarize

    mc, runs, done = client(store["tracking_uri"]), store.get("runs") or {}, 0
    for status_file in sorted((Path(results_dir) / "trials").glob("*/status.json")):
        status = json.loads(status_file.read_text())
        run_id = runs.get(status["trial"].rsplit("-", 1)[-1])
        cases = status_file.parent / "cases.csv"
        if status.get("status") != "ok" or run_id is None or not cases.is_file():
            continue
        if TEST_MARKER in mc.get_run(run_id).data.metrics:
            continue  # logged before the sweep was resumed
        frame = pd.read_csv(cases, dtype={"case": str})
        summary = summarize(frame)
        values = {"test_n_cases": float(len(frame))}
        for name, row in summary.iterrows():  # name: a metric, or (class, metric) per class
            key = "/".join(map(str, name if isinstance(name, tuple) else (name,)))
            key = key.replace("negatives: ", "neg_")
            for stat in ("mean", "median"):
                values[f"test_{key}_{stat}"] = float(row[stat])
        log_metrics(mc, run_id, values, step=0)
        done += 1
    return done


@_never_fails
def finish(results_dir: Path, status: str, report_dir: Path | None = None) -> None:
    """Log the report's Table I, summary and box plots to the parent run and end it with
    ``status`` (FINISHED, FAILED, or KILLED for an interrupted sweep that may be resumed)."""
    store = read_store(store_path(results_dir))
    if not store or not store.get("enabled"):
        return
    mc, parent = client(store["tracking_uri"]), store["parent_run_id"]
    if report_dir is not None:
        report_dir = Path(report_dir)
        for f in [report_dir / "table1.csv", report_dir / "summary.md",
                  *sorted(report_dir.glob("box_*.png"))]:
            if f.is_file():
                mc.log_artifact(parent, str(f), "report")
    mc.set_terminated(parent, status=status)


__all__ = ["EXTRA", "callbacks", "check_installed", "console_lines", "finish",
           "log_test_results", "start", "tracking_uri"]
