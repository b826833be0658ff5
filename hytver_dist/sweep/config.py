"""The sweep configuration: the run configuration (:class:`hytver_dist.run.config.RunConfig`)
plus the search space, the scheduler, Ray's resources, the report and tracking, in one file.
``SweepConfig.load`` validates it once; trials and their workers receive only
:attr:`SweepConfig.run`. ``python -m hytver_dist.sweep --print-schema`` prints its JSON schema.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    RootModel,
    StrictBool,
    StrictInt,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)
from typing_extensions import Self

from ..run.config import (
    Count,
    LossName,
    Number,
    PositiveNumber,
    RunConfig,
    Section,
    Text,
    Value,
    check_names,
    check_values,
    loss_names,
    problem,
)


def _unique(what: str) -> AfterValidator:
    def check(values: tuple[Any, ...]) -> tuple[Any, ...]:
        seen = [repr(v) for v in values]  # repr: 1, 1.0 and True are different values
        for i, v in enumerate(values):
            if seen[i] in seen[:i]:
                raise problem(f"duplicate {what} {v!r}", f"[{i}]")
        return values

    return AfterValidator(check)


def _ordered(v: tuple[float, ...]) -> tuple[float, ...]:
    if not v[0] < v[1]:
        raise problem(f"needs low < high; got [{v[0]}, {v[1]}]")
    return v


Candidates = Annotated[tuple[Value, ...], Field(min_length=1), _unique("value")]
Pair = Field(min_length=2, max_length=2)  # [low, high]
Bounds = Annotated[tuple[Number, ...], Pair, AfterValidator(_ordered)]


class Fixed(RootModel[Value]):
    """A fixed value (``alpha: 0.7``); the other kinds are one-key mappings named by kind."""

    model_config = ConfigDict(frozen=True)
    kind: ClassVar[str] = "fixed"
    is_distribution: ClassVar[bool] = False
    values = property(lambda self: (self.root,))


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    is_distribution: ClassVar[bool] = True
    kind = property(lambda self: next(iter(type(self).model_fields)))
    values = property(lambda self: getattr(self, self.kind))  # candidates, or the two ends


class Grid(_Spec):  # exhaustive: [0.3, 0.5] or {grid: [0.3, 0.5]}
    is_distribution: ClassVar[bool] = False
    grid: Candidates


class Choice(_Spec):  # sampled num_samples times
    choice: Candidates


class Uniform(_Spec):
    uniform: Bounds


class LogUniform(_Spec):
    loguniform: Annotated[tuple[PositiveNumber, ...], Pair, AfterValidator(_ordered)]


def _spec_kind(v: Any) -> str | None:
    if isinstance(v, (Fixed, _Spec)):
        return v.kind
    if isinstance(v, Mapping):
        return next(iter(v)) if len(v) == 1 else None
    if isinstance(v, (list, tuple)):
        return "grid"
    return "fixed" if v is None or isinstance(v, (bool, int, float, str)) else None


def _all_losses(v: Any) -> Any:
    if v == "all":
        return loss_names()
    if not isinstance(v, (list, tuple)) or not v:
        raise problem(f"expected 'all' or a non-empty list of loss names; got {v!r}")
    return v


_none_is_empty = BeforeValidator(lambda v: {} if v is None else v)
# One loss hyperparameter (``kind``, ``values``, ``is_distribution``); a list is a grid.
ParamSpec = Annotated[
    Annotated[Fixed, Tag("fixed")]
    | Annotated[Grid, BeforeValidator(lambda v: {"grid": v} if isinstance(v, (list, tuple))
                                      else v, json_schema_input_type=list[Value] | Grid),
                Tag("grid")]
    | Annotated[Choice, Tag("choice")]
    | Annotated[Uniform, Tag("uniform")]
    | Annotated[LogUniform, Tag("loguniform")],
    Discriminator(_spec_kind, custom_error_type="param_spec", custom_error_message=(
        "expected a value, a list (grid) or one of {uniform: [a, b]}, {loguniform: [a, b]}, "
        "{choice: [...]}, {grid: [...]}"))]


class SchedulerConfig(Section):
    type: Literal["none", "asha"] = "none"
    max_t: Count | None = None  # null = number of evaluations
    grace_period: Count = 1
    reduction_factor: Annotated[Number, Field(gt=1)] = 3.0
    brackets: Count = 1
    time_attr: str = "training_iteration"


class SearchConfig(Section):
    losses: Annotated[tuple[LossName, ...], _unique("loss"), BeforeValidator(
        _all_losses, json_schema_input_type=Literal["all"] | list[str])] = Field(
        default_factory=loss_names)
    seeds: Annotated[tuple[StrictInt, ...], Field(min_length=1), _unique("seed")] = (0, 1)
    seeds_per_trial: Count = 1
    hyperparameters: Annotated[dict[LossName, Annotated[dict[str, ParamSpec], _none_is_empty]],
                               _none_is_empty] = Field(default_factory=dict)
    num_samples: Count = 1
    sample_seed: StrictInt = 0
    metric: Text = "val_dice"
    mode: Literal["max", "min"] = "max"
    scheduler: SchedulerConfig = SchedulerConfig()
    search_alg: Literal["random", "optuna"] = "random"

    @property
    def seed_groups(self) -> list[tuple[int, ...]]:
        """The seeds of each trial of one hyperparameter set (``seeds_per_trial`` at a time)."""
        k = self.seeds_per_trial
        return [tuple(self.seeds[i:i + k]) for i in range(0, len(self.seeds), k)]

    @property
    def has_distributions(self) -> bool:
        return any(s.is_distribution for p in self.hyperparameters.values() for s in p.values())

    @field_validator("hyperparameters")
    @classmethod
    def _losses_accept(cls, value: dict[str, dict[str, Any]], info: ValidationInfo) -> Any:
        """Construct each loss with every candidate of every hyperparameter (the others at
        their first value); interval distributions are checked at both ends."""
        for loss, specs in value.items():
            if (losses := info.data.get("losses")) is not None and loss not in losses:
                raise problem(f"loss {loss!r} is not in search.losses ({', '.join(losses)})",
                              f".{loss}")
            check_names(loss, specs, f".{loss}")
            first = {name: s.values[0] for name, s in specs.items()}
            for name, spec in specs.items():
                for v in spec.values:
                    check_values(loss, {**first, name: v}, f".{loss}.{name}", f"{name}={v!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.seeds_per_trial > 1 and self.search_alg == "optuna":
            raise problem("must be 1 with search_alg: optuna (Optuna picks one seed per "
                          "trial)", ".seeds_per_trial")
        if self.seeds_per_trial > 1 and self.scheduler.type != "none":
            raise problem(f"must be 1 with scheduler: {self.scheduler.type} (it would compare "
                          "one seed of a trial with another seed of another trial)",
                          ".seeds_per_trial")
        if self.search_alg == "random" and self.num_samples > 1 and not self.has_distributions:
            raise problem(f"{self.num_samples} has no effect: no hyperparameter has a "
                          "distribution (use search.seeds for replicates)", ".num_samples")
        return self


class ResourcesConfig(Section):
    num_workers: Count = 1
    use_gpu: StrictBool = False
    cpus_per_worker: PositiveNumber = 1.0
    gpus_per_worker: PositiveNumber = 1.0
    driver_resource: Text = "TRAIN_DRIVER"
    max_concurrent_trials: Count | None = None
    max_failures: StrictInt = Field(2, ge=-1)
    controller_failure_limit: StrictInt = Field(3, ge=-1)
    trial_max_failures: StrictInt = Field(0, ge=-1)

    @field_validator("gpus_per_worker")
    @classmethod
    def _gpu_share(cls, g: float, info: ValidationInfo) -> float:
        if info.data.get("use_gpu") and g > 1 and g != int(g):
            raise problem(f"must be a fraction in (0, 1] or a whole number; got {g}")
        return g


class ReportConfig(Section):
    enabled: StrictBool = True
    out_dir: str | None = None
    reference_loss: LossName = "hytver"
    confidence: Annotated[Number, Field(gt=0.0, lt=1.0)] = 0.95


def _uri(v: str) -> str:  # a URI names its store by its scheme
    if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", v):
        raise problem("expected a URI (http://host:5000, sqlite:////path/mlflow.db, "
                      f"postgresql://..., file:///path); got {v!r}")
    return v


def _tag_value(v: Any) -> Any:  # MLflow tags are text: YAML's ``round: 2`` is written "2"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v) if isinstance(v, (int, float)) else v


class MlflowConfig(Section):
    enabled: StrictBool = False
    tracking_uri: Annotated[Text, AfterValidator(_uri)] | None = None
    experiment_name: Text | None = None
    tags: dict[str, Annotated[str, BeforeValidator(_tag_value)]] = {}


class TrackingConfig(Section):
    mlflow: MlflowConfig = MlflowConfig()
    tensorboard: StrictBool = True


class SweepConfig(RunConfig):
    """A sweep file: the run settings (:class:`RunConfig`'s keys, at the top level as in the
    file) plus the search, the Ray resources, the report and tracking."""

    search: SearchConfig = Field(default_factory=SearchConfig)  # losses: the registry, on use
    resources: ResourcesConfig = ResourcesConfig()
    report: ReportConfig = ReportConfig()
    tracking: TrackingConfig = TrackingConfig()

    @property
    def run(self) -> RunConfig:
        """The run settings alone (already validated): what trials and workers receive."""
        run = RunConfig.model_construct(**{k: getattr(self, k) for k in RunConfig.model_fields})
        run._source = self.source
        return run

    @property
    def results_dir(self) -> str:
        """Where trials write ``trials/<trial>/cases.csv``."""
        if self.storage.results_dir:
            return self.storage.results_dir
        return f"{self.storage.path.rstrip('/')}/{self.name}/results"

    @property
    def scheduler_max_t(self) -> int:
        return self.search.scheduler.max_t or self.training.n_evaluations

    @model_validator(mode="after")
    def _grace_fits(self) -> Self:
        sch = self.search.scheduler
        if sch.max_t is not None and sch.max_t < sch.grace_period:
            raise problem(f"{sch.max_t} < grace_period ({sch.grace_period})",
                          ".search.scheduler.max_t")
        if sch.type == "asha" and sch.grace_period > self.scheduler_max_t:
            raise problem(f"{sch.grace_period} exceeds max_t ({self.scheduler_max_t} = number "
                          "of evaluations)", ".search.scheduler.grace_period")
        return self


def json_schema() -> dict[str, Any]:
    """JSON schema of a sweep file (for editors: yaml-language-server, VS Code)."""
    return SweepConfig.model_json_schema()
