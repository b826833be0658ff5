"""The ``tracking:`` section of a sweep file: MLflow runs and TensorBoard event files.

A field of :class:`hytver_dist.sweep.config.SweepConfig`; what the keys do is in
:mod:`hytver_dist.sweep.tracking` and ``docs/sweeps.md``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict, Field, StrictBool, field_validator

from ..run.config import Section

# A URI names its store by its scheme: http(s)://, sqlite:///, postgresql://, file:///, ...
URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _tag_value(v: Any) -> Any:
    """Tag values are strings in MLflow; YAML scalars (``round: 2``) are written as text."""
    if isinstance(v, (bool, int, float)):
        return str(v).lower() if isinstance(v, bool) else str(v)
    return v


class _Section(Section):  # unknown keys are errors, validated sections frozen
    model_config = ConfigDict(use_attribute_docstrings=True)


class MlflowConfig(_Section):
    """One MLflow run per trial (params, a metric point per validation, the test summary) under
    a parent run for the sweep (the report's files as artifacts). Needs the ``tracking``
    extra."""

    enabled: StrictBool = False
    tracking_uri: str | None = Field(None, min_length=1)
    """null = ``sqlite:///<results_dir>/mlflow/mlflow.db`` (a local file under the results
    folder); or a tracking server (``http://host:5000``) or a store on shared storage."""
    experiment_name: str | None = Field(None, min_length=1)
    """null = the sweep's name."""
    tags: dict[str, Annotated[str, BeforeValidator(_tag_value)]] = Field(default_factory=dict)
    """Tags of the sweep's run and of every trial's run."""

    @field_validator("tracking_uri")
    @classmethod
    def _is_uri(cls, v: str | None) -> str | None:
        if v is not None and not URI_SCHEME.match(v):
            raise ValueError(f"expected a URI (http://host:5000, sqlite:////path/mlflow.db, "
                             f"postgresql://..., file:///path); got {v!r}")
        return v


class TrackingConfig(_Section):
    """Where a sweep's curves go besides Tune's own files."""

    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    tensorboard: StrictBool = True
    """Tune writes TensorBoard event files into each trial's directory (tensorboardX); the
    console prints the ``tensorboard --logdir`` command."""


__all__ = ["MlflowConfig", "TrackingConfig"]
