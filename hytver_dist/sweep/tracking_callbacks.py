"""The Tune callbacks of :mod:`hytver_dist.sweep.tracking` (this module imports Ray).

Module-level classes: Tune pickles a sweep's callbacks with the experiment and a resumed sweep
unpickles them, so they are found by reference and run the installed code.

Not Ray's ``MLflowLoggerCallback``: it keeps its trial -> run map in memory (a resumed sweep
would open a second run per trial), logs every Tune result (the final report repeats the last
validation) and has no parent run.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.tune import Callback
from ray.tune.logger import TBXLoggerCallback

from .mlflow_runs import client, log_metrics, params, read_store, trial_params, write_store
from .search import trial_spec

log = logging.getLogger(__name__)


def metric_key(name: str, seed: int, grouped: bool) -> str:
    """A trial of several seeds logs one curve per seed (``val_dice/seed1``)."""
    return f"{name}/seed{seed}" if grouped else name


def validation_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The training loop's validation row inside a Tune result (not Tune's own fields)."""
    return {k: v for k, v in result.items()
            if (k == "train_loss" or k.startswith(("val_", "best_val_")))
            and isinstance(v, (int, float)) and not isinstance(v, bool)}


class MlflowTrialRuns(Callback):
    """One MLflow run per trial, nested under the sweep's run; the run IDs live in the run
    store (``store``, a JSON file the driver wrote before Tune started)."""

    def __init__(self, store: str) -> None:
        self.store_file = store
        self._reset()

    def _reset(self) -> None:
        self._store: dict[str, Any] | None = None
        self._client: Any = None
        self._logged: dict[str, set[tuple[int, int]]] = {}  # trial id -> (seed, iteration)

    def __getstate__(self) -> dict[str, Any]:
        return {"store_file": self.store_file}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.store_file = state["store_file"]
        self._reset()

    def setup(self, **info: Any) -> None:
        self._reset()
        store = read_store(self.store_file)
        if store and store.get("enabled"):
            self._store, self._client = store, client(store["tracking_uri"])

    def _run(self, trial: Any) -> str:
        """The trial's run: the stored one, else a new one (stored before anything is logged
        to it, so a driver killed now still finds it)."""
        assert self._store is not None
        runs, tid = self._store["runs"], trial.trial_id
        spec = trial_spec(trial.config)
        if tid in runs:
            run_id = runs[tid]
            if tid not in self._logged:  # resumed: what was logged before counts
                self._logged[tid] = {
                    (seed, int(m.step)) for seed in spec.seeds
                    for m in self._client.get_metric_history(
                        run_id, metric_key("train_loss", seed, len(spec.seeds) > 1))}
            return run_id
        tags = {**self._store["tags"], "mlflow.parentRunId": self._store["parent_run_id"],
                "hytver.trial_id": tid}
        run_id = self._client.create_run(self._store["experiment_id"], run_name=str(trial),
                                         tags=tags).info.run_id
        runs[tid] = run_id
        write_store(self.store_file, self._store)
        self._client.log_batch(run_id, params=params(trial_params(spec)))
        self._logged[tid] = set()
        return run_id

    def _safely(self, what: str, trial: Any, fn: Any) -> None:
        # A tracking server's hiccup must not stop the sweep: the trial's files hold it all.
        try:
            fn()
        except Exception as exc:
            log.warning("MLflow: %s of trial %s failed: %s", what, trial, exc)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self._client is not None:
            self._safely("start", trial, lambda: self._client.update_run(self._run(trial),
                                                                         status="RUNNING"))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        if self._client is None or "iteration" not in result:
            return

        def log() -> None:
            run_id = self._run(trial)
            seed, step = int(result.get("seed", 0)), int(result["iteration"])
            # Seen already: repeated after a restart from an earlier checkpoint, or the final
            # report, which repeats the last validation (logged from it only when the driver
            # was dead when that validation was made).
            if (seed, step) in self._logged[trial.trial_id]:
                return
            grouped = len(trial_spec(trial.config).seeds) > 1
            values = validation_metrics(result)
            if result.get("done_training") and grouped:
                values.pop("best_val_dice", None)  # there: the mean over the trial's seeds
            log_metrics(self._client, run_id, {metric_key(k, seed, grouped): v
                                               for k, v in values.items()}, step)
            self._logged[trial.trial_id].add((seed, step))

        self._safely("result", trial, log)

    def _end(self, trial: Any, status: str) -> None:
        if self._client is not None:
            self._safely("end", trial,
                         lambda: self._client.set_terminated(self._run(trial), status=status))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "FAILED")


class NoTensorBoard(TBXLoggerCallback):
    """``tensorboard: false``: Tune adds its TensorBoard logger unless one is given, so this
    one, which writes nothing, is given."""

    def __init__(self) -> None:  # no tensorboardX writer
        self._trial_writer: dict[Any, Any] = {}
        self._trial_result: dict[Any, Any] = {}

    def log_trial_start(self, trial: Any) -> None:
        pass

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        pass

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        pass


__all__ = ["MlflowTrialRuns", "NoTensorBoard", "metric_key", "validation_metrics"]
