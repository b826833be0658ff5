"""The MLflow side of a sweep's tracking, shared by the driver (:mod:`.tracking`) and its Tune
callback (:mod:`.tracking_callbacks`): the run store, the client, params and metrics.

The run store, ``<results_dir>/mlflow/runs.json``, holds the tracking URI, the experiment, the
sweep's run and each trial's run (trial id -> run id): what a resumed sweep continues.
"""

from __future__ import annotations

import inspect
import json
import math
import time
from pathlib import Path
from typing import Any

from ..files import read_text, write_text

STORE_DIR = "mlflow"
STORE_FILE = "runs.json"


def store_path(results_dir: Path) -> Path:
    return Path(results_dir) / STORE_DIR / STORE_FILE


def read_store(path: str | Path) -> dict[str, Any] | None:
    text = read_text(str(path))
    return None if text is None else json.loads(text)


def write_store(path: str | Path, store: dict[str, Any]) -> None:
    write_text(str(path), json.dumps(store, indent=1, sort_keys=True))


def client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def trial_params(spec: Any) -> dict[str, Any]:
    """A trial's params: loss, arm, seed(s) and every hyperparameter of the loss (its
    defaults filled in, so runs of one loss compare on the same columns)."""
    from ..losses import LOSSES

    cls = LOSSES[spec.loss]
    sig = inspect.signature(cls.__init__).parameters  # the formula's keywords, not the input form
    defaults = {n: sig[n].default for n in cls.hyperparameters()
                if n != "backend" and sig[n].default is not inspect.Parameter.empty}
    return {"loss": spec.loss, "arm": spec.arm_id, "seeds": spec.seed_label,
            **{f"loss.{k}": v for k, v in {**defaults, **spec.params}.items()}}


def params(values: dict[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    return [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v))
            for k, v in values.items()]


def log_metrics(mc: Any, run_id: str, values: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, step) for k, v in values.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)
               and not math.isinf(v)]
    if metrics:
        mc.log_batch(run_id, metrics=metrics)


__all__ = ["STORE_DIR", "STORE_FILE", "client", "log_metrics", "params", "read_store",
           "store_path", "trial_params", "write_store"]
