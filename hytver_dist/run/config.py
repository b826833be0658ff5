"""Configuration of training runs and sweeps: pydantic models, loading, overrides, JSON schema.

One YAML file describes an experiment. ``train``, ``evaluate`` and data preparation read its
``data``, ``model`` and ``training`` sections; the sweep also reads ``search``, ``resources``,
``storage`` and ``report``. Every key except ``name`` is optional; ``docs/sweeps.md`` lists the
keys, their defaults and meanings (a test keeps that page and these models in step), and
``python -m hytver_dist.sweep --print-schema`` prints the JSON schema for editors.

Validation happens when a file is loaded, before anything runs. Unknown keys are errors, and
every error is a :class:`ConfigError` (a ``ValueError``) formatted as
``<file>: <key path>: <problem>``, with the nearest valid key or loss name when there is one.
Loss hyperparameters are checked by constructing the loss with them (:func:`get_loss`), so the
loss classes stay the single source of their own ranges.

This module imports neither Ray nor the sweep code: the single-run path depends on it, not the
other way round. The loss registry (and with it torch) is imported on first use.
"""

from __future__ import annotations

import copy
import difflib
import functools
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_serializer,
    model_validator,
)

from .tracking_config import TrackingConfig

SWEEPS_DIR = Path(__file__).resolve().parents[2] / "sweeps"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
Scalar = bool | int | float | str | None


class ConfigError(ValueError):
    """A configuration problem, formatted as ``<file>: <key path>: <problem>``."""


class KeyProblem(ValueError):
    """Raised by validators: ``message`` about the key at ``path``, relative to the model
    being validated (``".split.n_test"``, ``"[2]"``, or ``""`` for the model itself)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


def suggest(name: str, valid: Sequence[str], what: str) -> str:
    """``unknown <what> 'x' (did you mean 'y'?); valid: ...`` (difflib's nearest match)."""
    close = difflib.get_close_matches(name, list(valid), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown {what} {name!r}{hint}; valid: {', '.join(valid)}"


# ----------------------------------------------------------------------------- loss registry


@functools.cache
def _registry() -> Mapping[str, Any]:
    from ..losses import LOSSES  # lazy: imports torch

    return LOSSES


def _get_loss(name: str, **params: Any) -> Any:
    from ..losses import get_loss

    return get_loss(name, **params)


def loss_names() -> tuple[str, ...]:
    """Loss names accepted in ``search.losses``, in registry order."""
    return tuple(_registry())


def loss_hyperparameters(loss: str) -> tuple[str, ...]:
    """Keyword names of a loss, without ``backend`` (that is ``training.backend``)."""
    return tuple(n for n in _registry()[loss].hyperparameters() if n != "backend")


def _known_loss(name: str, path: str = "") -> str:
    """``name`` if it is a registry loss, else a KeyProblem at ``path`` with a suggestion."""
    if name not in loss_names():
        raise KeyProblem(path, suggest(str(name), loss_names(), "loss"))
    return name


def _check_hyperparameter_names(loss: str, given: Any, path: str) -> None:
    """Every key of ``given`` is a keyword of ``loss`` (KeyProblem at ``path.<key>``)."""
    names = loss_hyperparameters(loss)
    for name in given:
        if name not in names:
            raise KeyProblem(f"{path}.{name}", suggest(
                str(name), names, f"hyperparameter of {loss!r}") if names
                else f"{loss!r} takes no hyperparameters")


# ----------------------------------------------------------------------------- value types


def _number(v: Any) -> Any:
    """Numbers and numeric strings (YAML 1.1 reads ``1e-3`` as a string); never booleans."""
    if isinstance(v, bool):
        raise ValueError(f"expected a number; got {v!r}")
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            raise ValueError(f"expected a number; got {v!r}") from None
    return v


def _triple(v: Any) -> Any:
    """One value means the same on every axis (``patch_size: 32`` is a cube)."""
    if isinstance(v, (int, float, str)) and not isinstance(v, bool):
        return (v, v, v)
    if isinstance(v, (list, tuple)) and len(v) != 3:
        raise ValueError(f"expected 3 values; got {len(v)}")
    return v


Number = Annotated[float, BeforeValidator(_number), Field(allow_inf_nan=False)]
PositiveNumber = Annotated[float, BeforeValidator(_number), Field(gt=0, allow_inf_nan=False)]
Triple = Annotated[tuple[StrictInt, StrictInt, StrictInt], BeforeValidator(_triple)]
Spacing = Annotated[tuple[PositiveNumber, PositiveNumber, PositiveNumber],
                    BeforeValidator(_triple)]
Fraction = Annotated[Number, Field(ge=0.0, lt=1.0)]


class Section(BaseModel):
    """Base of every section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


# ----------------------------------------------------------------------------- data


class SyntheticConfig(Section):
    """Generated MSSEG-2-like cases (``hytver_dist.synth``); only when ``data.path`` is null."""

    n_cases: StrictInt = Field(12, ge=3)
    """Number of cases (at least one each for training, validation and test)."""
    seed: StrictInt = 0
    size: Literal["tiny", "small", "full"] = "tiny"
    """Isotropic voxel size: tiny 4 mm, small 2 mm, full 1 mm."""
    n_negative: StrictInt | None = Field(None, ge=0)
    """Cases without new lesions; null = each case with probability 11/40 (as in MSSEG-2)."""
    classes: StrictInt = Field(3, ge=2)
    """data.format nnunet: classes including background (nested lesion labels)."""
    regions: StrictBool = False
    """data.format nnunet: three nested regions (sigmoid per region) instead of classes."""

    @model_validator(mode="after")
    def _negatives_fit(self) -> SyntheticConfig:
        if self.n_negative is not None and self.n_negative > self.n_cases:
            raise KeyProblem(".n_negative", f"must be in [0, n_cases={self.n_cases}] or null; "
                             f"got {self.n_negative}")
        return self

    def grid_shape(self, target_spacing: Sequence[float] | None) -> tuple[int, int, int]:
        """Voxels per axis of a generated case on the training grid."""
        from ..data.synth import grid_shape

        return grid_shape(self.size, target_spacing)


class PreprocessingConfig(Section):
    target_spacing: Spacing | None = None
    """Resampling grid in mm per axis, e.g. [0.5, 0.75, 0.75]; null keeps the native grid."""


class SplitConfig(Section):
    preset: Literal["random", "coactseg", "file"] = "random"
    """random; coactseg: CoactSeg's fixed 32 training / 8 test case IDs (needs data.path);
    file: the case lists of split.file."""
    file: str | None = Field(None, min_length=1)
    """preset file: a JSON {train, val, test} of case IDs (val optional: then n_val cases come
    out of train), or nnU-Net's splits_final.json with split.fold (its val cases are the
    test cases here)."""
    fold: StrictInt | None = Field(None, ge=0)
    """preset file with a list of folds (splits_final.json): the fold used."""
    n_test: StrictInt | None = Field(None, ge=1)
    """Test cases with preset random (default 4); must be null with coactseg."""
    n_val: StrictInt = Field(2, ge=1)
    """Validation cases held out of the training cases: model selection never sees the test
    cases."""
    seed: StrictInt = 0

    @model_validator(mode="after")
    def _preset_rules(self) -> SplitConfig:
        if (self.preset == "file") != (self.file is not None):
            raise KeyProblem(".file", "set split.file exactly when preset is 'file'")
        if self.fold is not None and self.preset != "file":
            raise KeyProblem(".fold", "only with preset 'file'")
        if self.preset == "file":
            if self.n_test is not None:
                raise KeyProblem(".n_test", "must be null with preset 'file' (the file lists "
                                 "the test cases)")
            return self
        if self.preset == "coactseg":
            if self.n_test is not None:
                raise KeyProblem(".n_test", "must be null with preset 'coactseg' (it fixes 8 "
                                 "test cases)")
            if self.n_val >= 32:
                raise KeyProblem(".n_val", f"must be < 32 (CoactSeg's training cases); "
                                 f"got {self.n_val}")
        elif self.n_test is None:
            self.n_test = 4
        return self


class DataConfig(Section):
    path: str | None = None
    """MSSEG-2 training folder (one folder per patient) or nnU-Net v2 raw dataset folder
    (dataset.json, imagesTr, labelsTr); null = synthetic data."""
    format: Literal["auto", "msseg2", "nnunet"] = "auto"
    """auto: nnunet when the folder holds a dataset.json, else msseg2 (synthetic: msseg2)."""
    synthetic: SyntheticConfig | None = None
    preprocessing: PreprocessingConfig = Field(default_factory=PreprocessingConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)

    @property
    def is_synthetic(self) -> bool:
        return self.path is None

    def resolved_format(self, path: str | Path | None = None) -> str:
        """msseg2 or nnunet for the folder ``path`` (default data.path)."""
        if self.format != "auto":
            return self.format
        path = path if path is not None else self.path
        if path is None:
            return "msseg2"
        return "nnunet" if (Path(path) / "dataset.json").is_file() else "msseg2"

    @model_validator(mode="after")
    def _source_rules(self) -> DataConfig:
        if self.path is not None:
            if self.synthetic is not None:
                raise KeyProblem(".synthetic", "set only when data.path is null (synthetic "
                                 "data)")
            return self
        self.synthetic = self.synthetic or SyntheticConfig()
        if self.split.preset == "coactseg":
            raise KeyProblem(".split.preset", "'coactseg' selects MSSEG-2 case IDs and needs "
                             "data.path; synthetic data uses 'random'")
        if self.split.preset == "file":
            raise KeyProblem(".split.preset", "'file' lists case IDs of a dataset and needs "
                             "data.path; synthetic data uses 'random'")
        held = (self.split.n_test or 0) + self.split.n_val
        if held >= self.synthetic.n_cases:
            raise KeyProblem(".split", f"n_test + n_val = {held} leaves no training case out "
                             f"of synthetic.n_cases = {self.synthetic.n_cases}")
        return self


# ----------------------------------------------------------------------------- model, training


class ModelConfig(Section):
    """The V-Net (``hytver_dist.model.VNet``)."""

    n_filters: StrictInt = Field(4, ge=1)
    """Channels of the first level (CoactSeg: 16)."""
    activation: Literal["leaky_relu", "relu"] = "leaky_relu"
    dropout: Fraction = 0.0
    init_checkpoint: str | None = Field(None, min_length=1)
    """Initial weights: a V-Net state dict file (also CoactSeg's layout, through
    ``load_pretrained``); every run fine-tunes from it with a fresh optimizer."""

    def vnet_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`hytver_dist.model.VNet`."""
        return {"n_filters": self.n_filters, "activation": self.activation,
                "dropout": self.dropout}


class TrainingConfig(Section):
    iterations: StrictInt = Field(20, ge=1)
    """Optimizer steps."""
    batch_size: StrictInt = Field(2, ge=1)
    """Patches per step and worker."""
    patch_size: Triple = (32, 32, 32)
    """An int (cube) or 3 ints, multiples of the V-Net's down-sampling factor (16)."""
    lr: PositiveNumber = 1e-3
    optimizer: Literal["adam"] = "adam"
    eval_every: StrictInt = Field(10, ge=1)
    """Iterations between validations; each is one report to Tune."""
    checkpoint_every: StrictInt = Field(10, ge=1)
    """A multiple of eval_every: checkpoints travel with reports."""
    val_patch_overlap: Fraction = 0.25
    """Sliding-window overlap in [0, 1) (CoactSeg: 80-voxel windows at stride 20 = 0.75)."""
    amp: StrictBool = False
    backend: Literal["auto", "fused", "reference"] = "auto"
    """Loss implementation."""
    loss_activation: Literal["auto", "sigmoid", "softmax"] = "auto"
    """How the losses read the outputs: auto = softmax for datasets of classes (nnU-Net labels),
    sigmoid for regions and MSSEG-2."""
    include_background: StrictBool | None = None
    """Softmax losses: whether the background class counts; null = the loss's default."""

    @property
    def n_evaluations(self) -> int:
        return math.ceil(self.iterations / self.eval_every)

    @field_validator("patch_size")
    @classmethod
    def _patch_multiple(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        from ..model.vnet import DOWNSAMPLING

        for i, s in enumerate(v):
            if s < DOWNSAMPLING or s % DOWNSAMPLING:
                raise KeyProblem(f"[{i}]", f"must be a positive multiple of {DOWNSAMPLING} "
                                 f"(the V-Net's down-sampling factor); got {s}")
        return v

    @model_validator(mode="after")
    def _schedule(self) -> TrainingConfig:
        if self.eval_every > self.iterations:
            raise KeyProblem(".eval_every", f"{self.eval_every} exceeds iterations "
                             f"({self.iterations})")
        if self.checkpoint_every % self.eval_every:
            # A checkpoint rides on a ray.train.report call, and reports happen at evaluations.
            raise KeyProblem(".checkpoint_every", f"must be a multiple of eval_every "
                             f"({self.eval_every}); got {self.checkpoint_every}")
        return self


# ----------------------------------------------------------------------------- search

_DISTRIBUTIONS = ("uniform", "loguniform", "choice", "grid")
_SPEC_HELP = ("a value, a list (grid) or one of {uniform: [a, b]}, {loguniform: [a, b]}, "
              "{choice: [...]}, {grid: [...]}")
_SPEC_SCHEMA = {
    "description": "A fixed value, a list (grid), or one of {uniform: [low, high]}, "
                   "{loguniform: [low, high]}, {choice: [...]}, {grid: [...]}",
    "anyOf": [
        {"type": ["number", "string", "boolean", "null"]},
        {"type": "array", "minItems": 1},
        {"type": "object", "minProperties": 1, "maxProperties": 1,
         "properties": {k: {"type": "array", "minItems": 1} for k in _DISTRIBUTIONS},
         "additionalProperties": False},
    ],
}


def _coerce(v: Any) -> Any:
    """Numeric strings to float (YAML 1.1's ``1e-3``); everything else unchanged."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


class ParamSpec(BaseModel):
    """One loss hyperparameter: a fixed value, a grid, or a distribution.

    ``kind`` fixed: ``values == (v,)``; grid/choice: the candidates; uniform/loguniform:
    ``(low, high)``. A grid is exhaustive, a choice is sampled (``num_samples`` times).
    Written in YAML as ``0.7``, ``[0.3, 0.5]`` or ``{uniform: [0.1, 0.9]}``.
    """

    model_config = ConfigDict(frozen=True)

    kind: Literal["fixed", "grid", "choice", "uniform", "loguniform"]
    values: tuple[Scalar, ...]

    @property
    def is_distribution(self) -> bool:
        return self.kind in ("choice", "uniform", "loguniform")

    def candidates(self) -> tuple[Scalar, ...]:
        """Values that bound what the spec can produce (every value, or the two ends)."""
        return self.values

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, Mapping) and set(value) == {"kind", "values"}:
            return value  # already parsed (model_dump(mode="python") round trip)
        if value is None or isinstance(value, (bool, int, float, str)):
            return {"kind": "fixed", "values": (_coerce(value),)}
        if isinstance(value, list):
            value = {"grid": value}
        if not isinstance(value, Mapping) or len(value) != 1 or \
                next(iter(value)) not in _DISTRIBUTIONS:
            raise KeyProblem("", f"expected {_SPEC_HELP}; got {value!r}")
        kind, arg = next(iter(value.items()))
        if kind in ("uniform", "loguniform"):
            if not isinstance(arg, list) or len(arg) != 2:
                raise KeyProblem(f".{kind}", f"expected [low, high]; got {arg!r}")
            bounds = []
            for i, a in enumerate(arg):
                a = _coerce(a)
                if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a):
                    raise KeyProblem(f".{kind}[{i}]", f"expected a finite number; got {a!r}")
                bounds.append(float(a))
            lo, hi = bounds
            if not lo < hi:
                raise KeyProblem(f".{kind}", f"needs low < high; got [{lo}, {hi}]")
            if kind == "loguniform" and lo <= 0:
                raise KeyProblem(f".{kind}", f"needs low > 0; got {lo}")
            return {"kind": kind, "values": (lo, hi)}
        if not isinstance(arg, list) or not arg:
            raise KeyProblem(f".{kind}", f"expected a non-empty list; got {arg!r}")
        for i, v in enumerate(arg):
            if v is not None and not isinstance(v, (bool, int, float, str)):
                raise KeyProblem(f".{kind}[{i}]", f"expected a number, string or bool; "
                                 f"got {v!r}")
        arg = [_coerce(v) for v in arg]
        if len({repr(v) for v in arg}) != len(arg):
            raise KeyProblem(f".{kind}", f"duplicate values in {arg!r}")
        return {"kind": kind, "values": tuple(arg)}

    @model_serializer
    def _to_yaml(self) -> Any:
        if self.kind == "fixed":
            return self.values[0]
        return {self.kind: list(self.values)}

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        return dict(_SPEC_SCHEMA)


class SchedulerConfig(Section):
    type: Literal["none", "asha"] = "none"
    """none (FIFO: every trial runs to the end) or asha (early stopping)."""
    max_t: StrictInt | None = Field(None, ge=1)
    """ASHA's horizon in time_attr units; null = the number of evaluations."""
    grace_period: StrictInt = Field(1, ge=1)
    reduction_factor: Annotated[Number, Field(gt=1)] = 3.0
    brackets: StrictInt = Field(1, ge=1)
    time_attr: str = "training_iteration"

    @model_validator(mode="after")
    def _horizon(self) -> SchedulerConfig:
        if self.max_t is not None and self.max_t < self.grace_period:
            raise KeyProblem(".max_t", f"{self.max_t} < grace_period ({self.grace_period})")
        return self


def _parse_losses(value: Any) -> Any:
    valid = loss_names()
    if value == "all":
        return valid
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise KeyProblem("", f"expected 'all' or a non-empty list of loss names; got {value!r}")
    for i, name in enumerate(value):
        if not isinstance(name, str):
            raise KeyProblem(f"[{i}]", f"expected a loss name; got {name!r}")
        _known_loss(name, f"[{i}]")
        if name in value[:i]:
            raise KeyProblem(f"[{i}]", f"duplicate loss {name!r}")
    return tuple(value)


def _parse_hyperparameters(value: Any) -> Any:
    """Loss and hyperparameter names, checked against the registry (with suggestions)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise KeyProblem("", f"expected a mapping loss -> {{hyperparameter: spec}}; "
                         f"got {value!r}")
    out: dict[str, Any] = {}
    for loss, params in value.items():
        _known_loss(loss, f".{loss}")
        params = {} if params is None else params
        if not isinstance(params, Mapping):
            raise KeyProblem(f".{loss}", f"expected a mapping hyperparameter -> spec; "
                             f"got {params!r}")
        _check_hyperparameter_names(loss, params, f".{loss}")
        out[loss] = dict(params)
    return out


LossName = Annotated[str, AfterValidator(lambda name: _known_loss(name))]
LossList = Annotated[
    tuple[str, ...], BeforeValidator(_parse_losses),
    WithJsonSchema({"description": "'all' (the registry) or a list of loss names",
                    "anyOf": [{"const": "all"}, {"type": "array", "items": {"type": "string"},
                                                 "minItems": 1}]}),
]
Hyperparameters = Annotated[dict[str, dict[str, ParamSpec]],
                            BeforeValidator(_parse_hyperparameters)]


class SearchConfig(Section):
    losses: LossList = Field(default_factory=loss_names)
    seeds: tuple[StrictInt, ...] = Field((0, 1), min_length=1)
    """Training seeds; every hyperparameter set is trained with every seed."""
    seeds_per_trial: StrictInt = Field(1, ge=1)
    """Seeds one trial trains one after another on the same (warm) Train workers: the seeds
    are cut into groups of this size in their order, one trial per group. Larger groups spend
    less of the sweep starting trials and more training; 1 gives every seed its own trial (the
    most parallelism). Only with ``scheduler: none`` and ``search_alg: random``."""
    hyperparameters: Hyperparameters = Field(default_factory=dict)
    """Per loss, per keyword: a ParamSpec. Keywords left out keep the loss's defaults."""
    num_samples: StrictInt = Field(1, ge=1)
    """Random search: draws per grid point of each loss with a distribution. Optuna: trials."""
    sample_seed: StrictInt = 0
    metric: str = Field("val_dice", min_length=1)
    mode: Literal["max", "min"] = "max"
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    search_alg: Literal["random", "optuna"] = "random"

    @property
    def seed_groups(self) -> list[tuple[int, ...]]:
        """The seeds of each trial of one hyperparameter set (``seeds_per_trial`` at a time)."""
        k = self.seeds_per_trial
        return [tuple(self.seeds[i:i + k]) for i in range(0, len(self.seeds), k)]

    @property
    def has_distributions(self) -> bool:
        return any(s.is_distribution for p in self.hyperparameters.values() for s in p.values())

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: tuple[int, ...]) -> tuple[int, ...]:
        for i, s in enumerate(seeds):
            if s in seeds[:i]:
                raise KeyProblem(f"[{i}]", f"duplicate seed {s}")
        return seeds

    @model_validator(mode="after")
    def _consistent(self) -> SearchConfig:
        for loss, specs in self.hyperparameters.items():
            if loss not in self.losses:
                raise KeyProblem(f".hyperparameters.{loss}", f"loss {loss!r} is not in "
                                 f"search.losses ({', '.join(self.losses)})")
            _check_loss_accepts(loss, specs)
        if self.seeds_per_trial > 1 and self.search_alg == "optuna":
            raise KeyProblem(".seeds_per_trial", "must be 1 with search_alg: optuna (Optuna "
                             "picks one seed per trial)")
        if self.seeds_per_trial > 1 and self.scheduler.type != "none":
            raise KeyProblem(".seeds_per_trial", f"must be 1 with scheduler: "
                             f"{self.scheduler.type} (it would compare one seed of a trial "
                             "with another seed of another trial)")
        if self.search_alg == "random" and self.num_samples > 1 and not self.has_distributions:
            raise KeyProblem(".num_samples", f"{self.num_samples} has no effect: no "
                             "hyperparameter has a distribution (use search.seeds for "
                             "replicates)")
        return self


def _check_loss_accepts(loss: str, specs: Mapping[str, ParamSpec]) -> None:
    """Construct the loss with every candidate of every hyperparameter (the others at their
    first value): the loss's own argument checks decide, so a bad value fails here and not in
    a trial on the cluster. Interval distributions are checked at both ends."""
    first = {name: s.values[0] for name, s in specs.items()}
    for name, spec in specs.items():
        for value in spec.candidates():
            try:
                _get_loss(loss, backend="reference", **{**first, name: value})
            except (ValueError, TypeError) as exc:
                raise KeyProblem(f".hyperparameters.{loss}.{name}",
                                 f"{loss!r} rejects {name}={value!r}: {exc}") from None


# ----------------------------------------------------------------------------- pretraining


class PretrainConfig(Section):
    """A pretraining run made once before the trials; every trial fine-tunes from its best
    (validation) weights with a fresh optimizer. Batch and patch size come from ``training``."""

    loss: LossName = "dice_ce"
    """Registry name of the pretraining loss."""
    hyperparameters: dict[str, Scalar] = Field(default_factory=dict)
    """Fixed keyword arguments of that loss."""
    iterations: StrictInt = Field(240, ge=1)
    lr: PositiveNumber = 3e-3
    seed: StrictInt = 0
    eval_every: StrictInt = Field(40, ge=1)
    """Iterations between validations (the best validated weights are kept)."""

    @model_validator(mode="after")
    def _loss_accepts(self) -> PretrainConfig:
        _check_hyperparameter_names(self.loss, self.hyperparameters, ".hyperparameters")
        try:
            _get_loss(self.loss, backend="reference", **self.hyperparameters)
        except (ValueError, TypeError) as exc:
            raise KeyProblem(".hyperparameters", f"{self.loss!r} rejects "
                             f"{self.hyperparameters}: {exc}") from None
        if self.eval_every > self.iterations:
            raise KeyProblem(".eval_every", f"{self.eval_every} exceeds iterations "
                             f"({self.iterations})")
        return self


# ----------------------------------------------------------------------------- resources etc.


class ResourcesConfig(Section):
    num_workers: StrictInt = Field(1, ge=1)
    """Ray Train workers (DDP ranks) per trial; >= 1, since Train's local mode (0) does not run
    inside Tune trials."""
    use_gpu: StrictBool = False
    cpus_per_worker: PositiveNumber = 1.0
    """> 0: a bundle without resources is refused by Ray's placement groups."""
    gpus_per_worker: PositiveNumber = 1.0
    """With use_gpu: a fraction in (0, 1] (several trials share a GPU) or a whole number."""
    driver_resource: str = Field("TRAIN_DRIVER", min_length=1)
    """Custom resource each trial driver takes one of, with 0 CPU."""
    max_concurrent_trials: StrictInt | None = Field(None, ge=1)
    """null = derived from the cluster's resources; a number caps it."""
    max_failures: StrictInt = Field(2, ge=-1)
    """ray.train.FailureConfig.max_failures: worker-group restarts (-1 = unlimited)."""
    controller_failure_limit: StrictInt = Field(3, ge=-1)
    """ray.train.FailureConfig.controller_failure_limit (-1 = unlimited)."""
    trial_max_failures: StrictInt = Field(0, ge=-1)
    """ray.tune.FailureConfig.max_failures: restarts of a dead trial driver."""

    @model_validator(mode="after")
    def _gpu_share(self) -> ResourcesConfig:
        g = self.gpus_per_worker
        if self.use_gpu and g > 1 and g != int(g):
            raise KeyProblem(".gpus_per_worker", f"must be a fraction in (0, 1] or a whole "
                             f"number; got {g}")
        return self


class StorageConfig(Section):
    path: str = Field("results", min_length=1)
    """Ray's storage_path: a local directory, a shared mount or s3://bucket/prefix."""
    results_dir: str | None = None
    """Per-trial case CSVs; null = <path>/<name>/results."""


class ReportConfig(Section):
    enabled: StrictBool = True
    out_dir: str | None = None
    """null = <results_dir>/report."""
    reference_loss: LossName = "hytver"
    """The paired tests compare every loss with this one."""
    confidence: Annotated[Number, Field(gt=0.0, lt=1.0)] = 0.95


# ----------------------------------------------------------------------------- the whole file


class Config(Section):
    """One experiment file: the run settings plus the sweep's search, resources and storage."""

    name: str
    """Names the Tune experiment and the Train runs; keep it stable (resume finds runs by it)."""
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    pretrain: PretrainConfig | None = None
    """null = no pretraining stage (trials start from model.init_checkpoint or at random)."""
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    _source: str = PrivateAttr("<dict>")

    @property
    def source(self) -> str:
        """The file this config came from (``<dict>`` for a mapping), for error messages."""
        return self._source

    @property
    def results_dir(self) -> str:
        """Where trials write ``trials/<trial>/cases.csv``."""
        if self.storage.results_dir:
            return self.storage.results_dir
        return f"{self.storage.path.rstrip('/')}/{self.name}/results"

    @property
    def scheduler_max_t(self) -> int:
        return self.search.scheduler.max_t or self.training.n_evaluations

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML/JSON-ready) that :func:`load_config` reads back unchanged."""
        return self.model_dump(mode="json")

    def __eq__(self, other: object) -> bool:
        # The same settings are the same config, whichever file they came from.
        return isinstance(other, Config) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable, like every pydantic model

    @field_validator("name")
    @classmethod
    def _stable_name(cls, v: str) -> str:
        if not re.match(NAME_PATTERN, v):
            raise KeyProblem("", f"must match {NAME_PATTERN} (it names Ray's run "
                             f"directories); got {v!r}")
        return v

    @model_validator(mode="after")
    def _cross_section(self) -> Config:
        syn = self.data.synthetic
        if syn is not None:
            spacing = self.data.preprocessing.target_spacing
            shape = syn.grid_shape(spacing)
            for i, (p, s) in enumerate(zip(self.training.patch_size, shape, strict=True)):
                if p > s:
                    raise KeyProblem(f".training.patch_size[{i}]", f"{p} exceeds the synthetic "
                                     f"grid {shape} (size {syn.size!r} at "
                                     f"{spacing or 'native'} mm)")
        if self.pretrain is not None and self.model.init_checkpoint is not None:
            raise KeyProblem(".pretrain", "set either pretrain or model.init_checkpoint, not "
                             "both (the pretraining stage starts from random weights)")
        sch = self.search.scheduler
        if sch.type == "asha" and sch.grace_period > self.scheduler_max_t:
            raise KeyProblem(".search.scheduler.grace_period", f"{sch.grace_period} exceeds "
                             f"max_t ({self.scheduler_max_t} = number of evaluations)")
        return self


def json_schema() -> dict[str, Any]:
    """JSON schema of a config file (for editors: yaml-language-server, VS Code)."""
    return Config.model_json_schema()


# ----------------------------------------------------------------------------- errors


def _key_path(loc: Sequence[Any], extra: str = "") -> str:
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc) + extra
    return text.lstrip(".") or "<top level>"


def _section_at(loc: Sequence[Any]) -> type[BaseModel] | None:
    """The model class that holds the key at ``loc`` (to list its valid keys)."""
    cls: type[BaseModel] | None = Config
    for part in loc:
        field = cls.model_fields.get(part) if cls and isinstance(part, str) else None
        if field is None:
            return None
        cls = _model_class(field.annotation)
    return cls


def _model_class(annotation: Any) -> type[BaseModel] | None:
    # BaseModel, not Section: sections may live in their own modules (tracking_config).
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):  # Optional[Section]
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _describe(err: Mapping[str, Any]) -> tuple[str, str]:
    """(key path, problem) of one pydantic error, in this project's wording."""
    kind, loc, got = err["type"], tuple(err["loc"]), err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "value_error" and isinstance(ctx.get("error"), KeyProblem):
        return _key_path(loc, ctx["error"].path), str(ctx["error"])
    if kind == "extra_forbidden":
        section = _section_at(loc[:-1])
        valid = list(section.model_fields) if section else []
        return _key_path(loc), suggest(str(loc[-1]), valid, "key")
    if kind == "value_error":
        return _key_path(loc), str(ctx.get("error", err["msg"]))
    messages = {
        "missing": "is required",
        "int_type": f"expected an integer; got {got!r}",
        "bool_type": f"expected true or false; got {got!r}",
        "string_type": f"expected a string; got {got!r}",
        "float_type": f"expected a number; got {got!r}",
        "finite_number": f"expected a finite number; got {got!r}",
        "literal_error": f"expected {ctx.get('expected')}; got {got!r}",
        "greater_than": f"must be > {ctx.get('gt')}; got {got!r}",
        "greater_than_equal": f"must be >= {ctx.get('ge')}; got {got!r}",
        "less_than": f"must be < {ctx.get('lt')}; got {got!r}",
        "less_than_equal": f"must be <= {ctx.get('le')}; got {got!r}",
        "model_type": f"expected a mapping; got {got!r}",
        "dict_type": f"expected a mapping; got {got!r}",
        "tuple_type": f"expected a list; got {got!r}",
        "too_short": f"must not be empty; got {got!r}",
        "string_too_short": f"must not be empty; got {got!r}",
    }
    return _key_path(loc), messages.get(kind, f"{err['msg']}; got {got!r}")


def _raise(source: str, exc: ValidationError) -> None:
    lines = [f"{source}: {path}: {problem}" for path, problem in map(_describe, exc.errors())]
    raise ConfigError("\n".join(dict.fromkeys(lines))) from None


# ----------------------------------------------------------------------------- loading


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A file path, or the bare name of a shipped sweep (``default`` -> ``sweeps/default.yaml``)."""
    p = Path(name_or_path)
    if p.exists() or p.suffix in (".yaml", ".yml") or len(p.parts) > 1:
        return p
    return SWEEPS_DIR / f"{p}.yaml"


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``data`` with ``KEY.PATH=VALUE`` items applied (values parsed as YAML), as the
    command-line ``--set`` does. Missing sections are created; validation comes after."""
    out = copy.deepcopy(dict(data))
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. "
                              "training.iterations=50")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: invalid YAML value: {exc}") from None
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(parts[:i + 1])} is not a "
                                  f"section; got {child!r}")
            node = child
        node[parts[-1]] = value
    return out


def read_config_file(path_or_name: str | Path) -> tuple[str, Any]:
    """(source label, parsed YAML) of a config file or shipped sweep name."""
    path = resolve_config_path(path_or_name)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        return str(path), yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None


def load_config(path_or_dict: str | Path | Mapping[str, Any],
                overrides: Sequence[str] = (), *, source: str | None = None) -> Config:
    """Load and validate a config from a YAML path, a shipped sweep's name, or a mapping,
    with ``--set`` style ``overrides`` applied first.

    ``source`` names a mapping's origin in errors (default ``<dict>``). Raises
    :class:`ConfigError` naming the file (and the overrides) and the key path.
    """
    if isinstance(path_or_dict, Mapping):
        source, data = source or "<dict>", dict(path_or_dict)
    else:
        source, data = read_config_file(path_or_dict)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: <top level>: expected a mapping; got "
                          f"{type(data).__name__}")
    if overrides:
        source = f"{source} with --set {' '.join(overrides)}"
        data = apply_overrides(data, overrides)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        _raise(source, exc)
    cfg._source = source
    return cfg


def add_override_argument(parser: Any) -> None:
    """The ``--set KEY=VALUE`` option of the command-line tools (argparse)."""
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        metavar="KEY=VALUE",
                        help="override a config key, e.g. --set training.iterations=50 "
                        "(value parsed as YAML; repeatable)")


__all__ = [
    "Config", "ConfigError", "DataConfig", "ModelConfig", "ParamSpec", "PreprocessingConfig",
    "PretrainConfig",
    "ReportConfig", "ResourcesConfig", "SchedulerConfig", "SearchConfig", "SplitConfig",
    "StorageConfig", "SyntheticConfig", "TrainingConfig", "add_override_argument",
    "apply_overrides", "json_schema", "load_config", "loss_hyperparameters", "loss_names",
    "resolve_config_path",
]
