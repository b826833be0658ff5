"""Sweep configuration: YAML schema, validation, Ray Tune search space and trial concurrency.

A sweep trains one V-Net per (loss, hyperparameter set, seed) and evaluates it per case. The
YAML below is the whole schema; every key except ``name`` is optional and defaults to the value
shown (CPU-sized, so ``{name: x}`` alone is a runnable local sweep). ``sweeps/README.md`` has
the same schema with longer explanations.

.. code-block:: yaml

    name: my-sweep              # required; [A-Za-z0-9_.-], names the Tune and Train runs. Never
                                # put dates in it: a stable name is what lets `--resume` work.
    data:
      path: null                # MSSEG-2 training dir (one folder per patient); null = synthetic
      synthetic:                # only when path is null (hytver_dist.synth)
        n_cases: 12
        seed: 0
        size: tiny              # tiny (4 mm, 43x52x42) | small (2 mm) | full (1 mm)
        n_negative: null        # cases without new lesions; null = each with p = 11/40
      preprocessing:
        target_spacing: null    # mm per axis, e.g. [0.5, 0.75, 0.75]; null = native grid
      split:
        preset: random          # random | coactseg (CoactSeg's fixed 32 train / 8 test IDs)
        n_test: 4               # random only (coactseg fixes the 8 test cases)
        n_val: 2                # validation cases held out of the training cases
        seed: 0
    model: {n_filters: 4, activation: leaky_relu, dropout: 0.0}   # activation: leaky_relu | relu
    training:
      iterations: 20
      batch_size: 2
      patch_size: 32            # int (cube) or 3 ints, multiples of 16
      lr: 1.0e-3
      optimizer: adam
      eval_every: 10            # iterations between validations (= Tune reports)
      checkpoint_every: 10      # a multiple of eval_every (checkpoints ride on reports)
      val_patch_overlap: 0.25   # sliding-window overlap in [0, 1)
      amp: false
      backend: auto             # auto | fused | reference (loss implementation)
    search:
      losses: all               # `all` (the registry) or a list of registry names
      seeds: [0, 1]
      hyperparameters:          # per loss, per keyword of the loss; e.g.
        hytver:                 #   fixed:   beta: 0.7
          alpha: {uniform: [0.1, 0.9]}  # distributions: {uniform: [a, b]}, {loguniform: [a, b]},
          gamma: [0.3, 0.5]     #   {choice: [...]}; grid: a list or {grid: [...]}
      num_samples: 1            # random: samples per loss that has a distribution;
                                # optuna: total number of trials
      sample_seed: 0            # seeds the random-search sampler and Optuna's sampler
      metric: val_dice
      mode: max                 # max | min
      scheduler: {type: none}   # none | asha (max_t, grace_period, reduction_factor, brackets,
                                # time_attr); max_t null = number of evaluations
      search_alg: random        # random | optuna (needs `pip install -e .[optuna]`)
    resources:
      num_workers: 1            # Ray Train workers (DDP ranks) per trial
      use_gpu: false
      cpus_per_worker: 1.0
      gpus_per_worker: 1.0      # only with use_gpu; a fraction packs trials onto one GPU
      driver_resource: TRAIN_DRIVER  # custom resource each trial driver takes 1 of (CPU 0)
      max_concurrent_trials: null    # null = derived from the cluster's resources
      max_failures: 2           # ray.train.FailureConfig.max_failures (worker-group restarts)
      controller_failure_limit: 3    # ray.train.FailureConfig; -1 retries forever
      trial_max_failures: 0     # ray.tune.FailureConfig.max_failures (driver restarts)
    storage:
      path: results             # local dir, shared mount (NFS/EFS) or s3://bucket/prefix;
                                # must be shared by every node of a multi-node cluster
      results_dir: null         # per-case CSVs; null = <path>/<name>/results
    report: {enabled: true, out_dir: null, reference_loss: hytver, confidence: 0.95}

Errors raise :class:`SweepConfigError` (a ``ValueError``) as ``<file>: <key path>: <problem>``.

Search-space design (why not ``tune.sample_from``): :func:`build_arms` expands the per-loss
hyperparameters into *arms* (one loss + one concrete hyperparameter dict) and
:func:`build_param_space` grid-searches ``seed x arm``. Hyperparameters of one loss therefore
never multiply the trials of another, grids inside a loss are exhaustive, and each random sample
is drawn once (seeded by ``sample_seed`` and the loss name) and trained with *every* seed, so
seeds are true replicates that the report can average. ``sample_from`` would need one closure
per loss, could only sample (not grid), and would redraw hyperparameters per seed. Optuna cannot
take a grid, so with ``search_alg: optuna`` the space is a define-by-run function
(:func:`optuna_space`) that picks loss and seed as categoricals and only the chosen loss's
hyperparameters. Both produce the same trial config, read it with :func:`trial_spec`::

    {"seed": 0, "arm": {"id": "hytver-003", "loss": "hytver", "loss_params": {"alpha": 0.41}}}
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.util
import inspect
import math
import random
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, Literal, NoReturn, Union, get_args, get_origin, get_type_hints

import yaml

# The registry's names, used only when hytver_dist.losses cannot be imported (it imports torch).
FALLBACK_LOSSES: tuple[str, ...] = (
    "dice", "tversky", "focal_tversky", "logcosh_dice", "ce", "weighted_ce", "focal", "dice_ce",
    "focal_dice", "combo", "hytver", "symmetric_unified_focal", "asymmetric_unified_focal",
    "dice_pp",
)

# Keyword names per loss from shared/spec/losses.md; the registry's constructor signatures win.
_REGION = ("smooth", "per_sample")
FALLBACK_HYPERPARAMETERS: dict[str, tuple[str, ...]] = {
    "dice": _REGION,
    "tversky": ("alpha", *_REGION),
    "focal_tversky": ("alpha", "gamma", *_REGION),
    "logcosh_dice": _REGION,
    "ce": (),
    "weighted_ce": ("w_bg", "w_fg"),
    "focal": ("alpha", "gamma"),
    "dice_ce": ("lambda_dice", "lambda_ce", *_REGION),
    "focal_dice": ("lambda_dice", "lambda_focal", "alpha", "gamma", *_REGION),
    "combo": ("beta", "gamma", *_REGION),
    "hytver": ("alpha", "beta", "gamma", *_REGION),
    "symmetric_unified_focal": ("weight", "delta", "gamma"),
    "asymmetric_unified_focal": ("weight", "delta", "gamma"),
    "dice_pp": ("gamma",),
}
# Hyperparameters that are weights/shares in [0, 1] (spec: out-of-range values raise in the loss;
# catching them here saves a failed trial on the cluster). gamma is an exponent elsewhere.
_UNIT_INTERVAL = {"alpha", "beta", "delta", "weight"}
_UNIT_GAMMA_LOSSES = {"hytver", "combo", "symmetric_unified_focal", "asymmetric_unified_focal"}

SWEEPS_DIR = Path(__file__).resolve().parent.parent / "sweeps"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
Scalar = bool | int | float | str


class SweepConfigError(ValueError):
    """A sweep YAML problem, formatted as ``<file>: <key path>: <problem>``."""


class _Err:
    """Raises SweepConfigError prefixed with the config's source (file path or '<dict>')."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __call__(self, where: str, msg: str) -> NoReturn:
        raise SweepConfigError(f"{self.source}: {where}: {msg}")


# ----------------------------------------------------------------------------- loss registry


@functools.cache
def _registry() -> Mapping[str, Any] | None:
    try:  # lazy: importing the loss package pulls in torch (~3 s)
        from hytver_dist.losses import LOSSES  # type: ignore[attr-defined]
    except ImportError:
        return None
    return LOSSES


def valid_losses() -> tuple[str, ...]:
    """Loss names accepted in ``search.losses``: the registry's, else the fixed list."""
    reg = _registry()
    return tuple(reg) if reg else FALLBACK_LOSSES


def loss_hyperparameters(loss: str) -> tuple[str, ...] | None:
    """Keyword names a loss accepts; None = unknown (the constructor takes ``**kwargs``)."""
    reg = _registry()
    if reg and loss in reg:
        names = getattr(reg[loss], "hyperparameters", None)  # the registry's own list, if any
        if callable(names):
            return tuple(n for n in names() if n != "backend")
        try:
            sig = inspect.signature(reg[loss])
        except (TypeError, ValueError):
            return None
        params = [p for p in sig.parameters.values() if p.name != "self"]
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return None
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        # backend is a training setting (training.backend), not a loss hyperparameter.
        return tuple(p.name for p in params if p.kind in kinds and p.name != "backend")
    return FALLBACK_HYPERPARAMETERS.get(loss)


def _unknown(name: str, valid: tuple[str, ...] | list[str], what: str) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown {what} {name!r}{hint}; valid: {', '.join(valid)}"


# ----------------------------------------------------------------------------- schema


@dataclass
class ParamSpec:
    """One loss hyperparameter: a fixed value, a grid, or a distribution.

    ``kind`` fixed: ``values == (v,)``; grid/choice: the candidates; uniform/loguniform:
    ``(low, high)``. grid is exhaustive, choice is sampled (``num_samples`` times).
    """

    kind: Literal["fixed", "grid", "choice", "uniform", "loguniform"]
    values: tuple[Scalar, ...]

    @property
    def is_distribution(self) -> bool:
        return self.kind in ("choice", "uniform", "loguniform")

    def sample(self, rng: random.Random) -> Scalar:
        if self.kind == "choice":
            return self.values[rng.randrange(len(self.values))]
        lo, hi = float(self.values[0]), float(self.values[1])
        if self.kind == "uniform":
            x = rng.uniform(lo, hi)
        elif self.kind == "loguniform":
            x = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        else:
            raise ValueError(f"{self.kind} is not a distribution")
        return float(f"{x:.6g}")  # readable trial names and params JSON

    def to_yaml(self) -> Any:
        if self.kind == "fixed":
            return self.values[0]
        return {self.kind: list(self.values)}


# hytver_dist.synth: isotropic voxel size (mm) per preset, on a 172 x 208 x 168 mm head box.
SYNTH_VOXEL_MM = {"tiny": 4.0, "small": 2.0, "full": 1.0}
SYNTH_BOX_MM = (172.0, 208.0, 168.0)
PATCH_MULTIPLE = 16  # hytver_dist.model.vnet: four stride-2 levels


@dataclass
class SyntheticConfig:
    n_cases: int = 12
    seed: int = 0
    size: Literal["tiny", "small", "full"] = "tiny"
    n_negative: int | None = None

    def grid_shape(self, target_spacing: tuple[float, float, float] | None) -> tuple[int, ...]:
        """Voxels per axis of a generated head box on the training grid (before brain crop)."""
        spacing = target_spacing or (SYNTH_VOXEL_MM[self.size],) * 3
        return tuple(int(b // s) for b, s in zip(SYNTH_BOX_MM, spacing, strict=True))

    def _check(self, where: str, err: _Err) -> None:
        if self.n_cases < 3:
            err(f"{where}.n_cases", f"must be >= 3 (train, validation, test); got {self.n_cases}")
        if self.n_negative is not None and not 0 <= self.n_negative <= self.n_cases:
            err(f"{where}.n_negative", f"must be in [0, n_cases={self.n_cases}] or null; "
                f"got {self.n_negative}")


@dataclass
class PreprocessingConfig:
    target_spacing: tuple[float, float, float] | None = None

    def _check(self, where: str, err: _Err) -> None:
        for i, s in enumerate(self.target_spacing or ()):
            if not s > 0:
                err(f"{where}.target_spacing[{i}]", f"must be > 0 mm; got {s}")


@dataclass
class SplitConfig:
    preset: Literal["random", "coactseg"] = "random"
    n_test: int | None = None
    n_val: int = 2
    seed: int = 0

    def _check(self, where: str, err: _Err) -> None:
        if self.preset == "coactseg" and self.n_test is not None:
            err(f"{where}.n_test", "must be null with preset 'coactseg' (it fixes 8 test cases)")
        if self.preset == "random":
            if self.n_test is None:
                self.n_test = 4
            if self.n_test < 1:
                err(f"{where}.n_test", f"must be >= 1; got {self.n_test}")
        # Model selection must use validation cases, never the test cases (CoactSeg's leak).
        if self.n_val < 1:
            err(f"{where}.n_val", f"must be >= 1 (Tune's metric is a validation metric); "
                f"got {self.n_val}")
        if self.preset == "coactseg" and self.n_val >= 32:
            err(f"{where}.n_val", f"must be < 32 (CoactSeg's training cases); got {self.n_val}")


@dataclass
class DataConfig:
    path: str | None = None
    synthetic: SyntheticConfig | None = None
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    split: SplitConfig = field(default_factory=SplitConfig)

    @property
    def is_synthetic(self) -> bool:
        return self.path is None

    def _check(self, where: str, err: _Err) -> None:
        if self.path is not None and self.synthetic is not None:
            err(f"{where}.synthetic", "set only when data.path is null (synthetic data)")
        if self.path is None:
            self.synthetic = self.synthetic or SyntheticConfig()
            if self.split.preset == "coactseg":
                err(f"{where}.split.preset", "'coactseg' selects MSSEG-2 case IDs and needs "
                    "data.path; synthetic data uses 'random'")
            n_held = (self.split.n_test or 0) + self.split.n_val
            if n_held >= self.synthetic.n_cases:
                err(f"{where}.split", f"n_test + n_val = {n_held} leaves no training case out "
                    f"of synthetic.n_cases = {self.synthetic.n_cases}")


@dataclass
class ModelConfig:
    n_filters: int = 4
    activation: Literal["leaky_relu", "relu"] = "leaky_relu"
    dropout: float = 0.0

    def _check(self, where: str, err: _Err) -> None:
        if self.n_filters < 1:
            err(f"{where}.n_filters", f"must be >= 1; got {self.n_filters}")
        if not 0.0 <= self.dropout < 1.0:
            err(f"{where}.dropout", f"must be in [0, 1); got {self.dropout}")


@dataclass
class TrainingConfig:
    iterations: int = 20
    batch_size: int = 2
    patch_size: tuple[int, int, int] = (32, 32, 32)
    lr: float = 1e-3
    optimizer: Literal["adam"] = "adam"
    eval_every: int = 10
    checkpoint_every: int = 10
    val_patch_overlap: float = 0.25
    amp: bool = False
    backend: Literal["auto", "fused", "reference"] = "auto"

    @property
    def n_evaluations(self) -> int:
        return math.ceil(self.iterations / self.eval_every)

    def _check(self, where: str, err: _Err) -> None:
        for key in ("iterations", "batch_size", "eval_every", "checkpoint_every"):
            if getattr(self, key) < 1:
                err(f"{where}.{key}", f"must be >= 1; got {getattr(self, key)}")
        for i, s in enumerate(self.patch_size):
            if s < PATCH_MULTIPLE or s % PATCH_MULTIPLE:
                err(f"{where}.patch_size[{i}]", f"must be a positive multiple of "
                    f"{PATCH_MULTIPLE} (the V-Net downsamples 4 times); got {s}")
        if not self.lr > 0:
            err(f"{where}.lr", f"must be > 0; got {self.lr}")
        if self.eval_every > self.iterations:
            err(f"{where}.eval_every", f"{self.eval_every} exceeds iterations ({self.iterations})")
        if self.checkpoint_every % self.eval_every:
            # A checkpoint is attached to a ray.train.report call, which happens at evaluations.
            err(f"{where}.checkpoint_every", f"must be a multiple of eval_every "
                f"({self.eval_every}); got {self.checkpoint_every}")
        if not 0.0 <= self.val_patch_overlap < 1.0:
            err(f"{where}.val_patch_overlap", f"must be in [0, 1); got {self.val_patch_overlap}")


@dataclass
class SchedulerConfig:
    type: Literal["none", "asha"] = "none"
    max_t: int | None = None
    grace_period: int = 1
    reduction_factor: float = 3.0
    brackets: int = 1
    time_attr: str = "training_iteration"

    def _check(self, where: str, err: _Err) -> None:
        if self.grace_period < 1:
            err(f"{where}.grace_period", f"must be >= 1; got {self.grace_period}")
        if self.max_t is not None and self.max_t < self.grace_period:
            err(f"{where}.max_t", f"{self.max_t} < grace_period ({self.grace_period})")
        if not self.reduction_factor > 1:
            err(f"{where}.reduction_factor", f"must be > 1; got {self.reduction_factor}")
        if self.brackets < 1:
            err(f"{where}.brackets", f"must be >= 1; got {self.brackets}")


def _parse_losses(value: Any, where: str, err: _Err) -> tuple[str, ...]:
    valid = valid_losses()
    if value == "all":
        return valid
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        err(where, f"expected 'all' or a non-empty list of loss names; got {value!r}")
    out: list[str] = []
    for i, name in enumerate(value):
        if not isinstance(name, str):
            err(f"{where}[{i}]", f"expected a loss name; got {name!r}")
        if name not in valid:
            err(f"{where}[{i}]", _unknown(name, valid, "loss"))
        if name in out:
            err(f"{where}[{i}]", f"duplicate loss {name!r}")
        out.append(name)
    return tuple(out)


_DIST_KEYS = ("uniform", "loguniform", "choice", "grid")
_SPEC_HELP = "a value, a list (grid) or one of {uniform: [a, b]}, {loguniform: [a, b]}, " \
    "{choice: [...]}, {grid: [...]}"


def _scalar(v: Any) -> bool:
    return isinstance(v, (bool, int, float, str))


def _number(v: Any, where: str, err: _Err) -> float:
    if isinstance(v, bool):
        err(where, f"expected a number; got {v!r}")
    if isinstance(v, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
        try:
            v = float(v)
        except ValueError:
            err(where, f"expected a number; got {v!r}")
    if not isinstance(v, (int, float)):
        err(where, f"expected a number; got {v!r}")
    if not math.isfinite(v):
        err(where, f"expected a finite number; got {v!r}")
    return float(v)


def _coerce(v: Any) -> Any:
    """Numeric strings to float (YAML 1.1's `1e-3`); every other value unchanged."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _parse_spec(value: Any, where: str, err: _Err) -> ParamSpec:
    if value is None or _scalar(value):  # null is a value too (focal's alpha: no weighting)
        return ParamSpec("fixed", (_coerce(value),))
    if isinstance(value, list):
        value = {"grid": value}
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in _DIST_KEYS:
        err(where, f"expected {_SPEC_HELP}; got {value!r}")
    kind, arg = next(iter(value.items()))
    sub = f"{where}.{kind}"
    if kind in ("uniform", "loguniform"):
        if not isinstance(arg, list) or len(arg) != 2:
            err(sub, f"expected [low, high]; got {arg!r}")
        lo, hi = (_number(a, f"{sub}[{i}]", err) for i, a in enumerate(arg))
        if not lo < hi:
            err(sub, f"needs low < high; got [{lo}, {hi}]")
        if kind == "loguniform" and lo <= 0:
            err(sub, f"needs low > 0; got {lo}")
        return ParamSpec(kind, (lo, hi))
    if not isinstance(arg, list) or not arg:
        err(sub, f"expected a non-empty list; got {arg!r}")
    for i, v in enumerate(arg):
        if not _scalar(v):
            err(f"{sub}[{i}]", f"expected a number, string or bool; got {v!r}")
    arg = [_coerce(v) for v in arg]
    if len({repr(v) for v in arg}) != len(arg):
        err(sub, f"duplicate values in {arg!r}")
    return ParamSpec(kind, tuple(arg))


def _parse_hyperparameters(value: Any, where: str, err: _Err) -> dict[str, dict[str, ParamSpec]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        err(where, f"expected a mapping loss -> {{hyperparameter: spec}}; got {value!r}")
    valid = valid_losses()
    out: dict[str, dict[str, ParamSpec]] = {}
    for loss, params in value.items():
        lw = f"{where}.{loss}"
        if loss not in valid:
            err(lw, _unknown(str(loss), valid, "loss"))
        if params is None:
            params = {}
        if not isinstance(params, dict):
            err(lw, f"expected a mapping hyperparameter -> spec; got {params!r}")
        names = loss_hyperparameters(loss)
        specs: dict[str, ParamSpec] = {}
        for name, spec in params.items():
            pw = f"{lw}.{name}"
            if names is not None and name not in names:
                err(pw, _unknown(str(name), names, f"hyperparameter of {loss!r}")
                    if names else f"{loss!r} takes no hyperparameters")
            specs[name] = _parse_spec(spec, pw, err)
            _check_range(loss, name, specs[name], pw, err)
        out[loss] = specs
    return out


def _check_range(loss: str, name: str, spec: ParamSpec, where: str, err: _Err) -> None:
    unit = name in _UNIT_INTERVAL or (name == "gamma" and loss in _UNIT_GAMMA_LOSSES)
    if not unit:
        return
    for v in spec.values:
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            err(where, f"{name} of {loss!r} must be in [0, 1]; got {v!r}")


@dataclass
class SearchConfig:
    losses: tuple[str, ...] = field(
        default_factory=valid_losses, metadata={"parse": _parse_losses}
    )
    seeds: tuple[int, ...] = (0, 1)
    hyperparameters: dict[str, dict[str, ParamSpec]] = field(
        default_factory=dict, metadata={"parse": _parse_hyperparameters}
    )
    num_samples: int = 1
    sample_seed: int = 0
    metric: str = "val_dice"
    mode: Literal["max", "min"] = "max"
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    search_alg: Literal["random", "optuna"] = "random"

    @property
    def has_distributions(self) -> bool:
        return any(s.is_distribution for p in self.hyperparameters.values() for s in p.values())

    def _check(self, where: str, err: _Err) -> None:
        if not self.seeds:
            err(f"{where}.seeds", "must list at least one seed")
        for i, s in enumerate(self.seeds):
            if s in self.seeds[:i]:
                err(f"{where}.seeds[{i}]", f"duplicate seed {s}")
        for loss in self.hyperparameters:
            if loss not in self.losses:
                err(f"{where}.hyperparameters.{loss}", f"loss {loss!r} is not in search.losses "
                    f"({', '.join(self.losses)})")
        if self.num_samples < 1:
            err(f"{where}.num_samples", f"must be >= 1; got {self.num_samples}")
        if self.search_alg == "random" and self.num_samples > 1 and not self.has_distributions:
            err(f"{where}.num_samples", f"{self.num_samples} has no effect: no hyperparameter "
                "has a distribution (use search.seeds for replicates)")
        if not self.metric:
            err(f"{where}.metric", "must be a metric name reported by the trials")


@dataclass
class ResourcesConfig:
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    driver_resource: str = "TRAIN_DRIVER"
    max_concurrent_trials: int | None = None
    max_failures: int = 2
    controller_failure_limit: int = 3
    trial_max_failures: int = 0

    def _check(self, where: str, err: _Err) -> None:
        if self.num_workers < 1:
            # num_workers=0 (Train's local mode) fails inside Tune trials (ray.md §2).
            err(f"{where}.num_workers", f"must be >= 1; got {self.num_workers}")
        if not self.cpus_per_worker > 0:
            # {"CPU": 0} makes Ray Train raise "empty head and zero worker bundles".
            err(f"{where}.cpus_per_worker", f"must be > 0 (use e.g. 0.01); "
                f"got {self.cpus_per_worker}")
        if self.use_gpu:
            g = self.gpus_per_worker
            if not g > 0 or (g > 1 and g != int(g)):
                err(f"{where}.gpus_per_worker", f"must be a fraction in (0, 1] or a whole "
                    f"number; got {g}")
        if not self.driver_resource:
            err(f"{where}.driver_resource", "must name a custom resource, e.g. TRAIN_DRIVER")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            err(f"{where}.max_concurrent_trials", f"must be >= 1 or null; "
                f"got {self.max_concurrent_trials}")
        for key in ("max_failures", "controller_failure_limit", "trial_max_failures"):
            if getattr(self, key) < -1:
                err(f"{where}.{key}", f"must be >= -1 (-1 = unlimited); got {getattr(self, key)}")


@dataclass
class StorageConfig:
    path: str = "results"
    results_dir: str | None = None

    def _check(self, where: str, err: _Err) -> None:
        if not self.path:
            err(f"{where}.path", "must be a directory or a URI such as s3://bucket/prefix")


@dataclass
class ReportConfig:
    enabled: bool = True
    out_dir: str | None = None
    reference_loss: str = "hytver"
    confidence: float = 0.95

    def _check(self, where: str, err: _Err) -> None:
        valid = valid_losses()
        if self.reference_loss not in valid:
            err(f"{where}.reference_loss", _unknown(self.reference_loss, valid, "loss"))
        if not 0.0 < self.confidence < 1.0:
            err(f"{where}.confidence", f"must be in (0, 1); got {self.confidence}")


@dataclass
class SweepConfig:
    name: str
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    source: str = field(default="<dict>", compare=False, metadata={"internal": True})

    @property
    def results_dir(self) -> str:
        """Where trials write ``trials/<trial>/cases.csv`` (see ``hytver_dist.report``)."""
        if self.storage.results_dir:
            return self.storage.results_dir
        return f"{self.storage.path.rstrip('/')}/{self.name}/results"

    @property
    def report_dir(self) -> str:
        return self.report.out_dir or f"{self.results_dir.rstrip('/')}/report"

    @property
    def scheduler_max_t(self) -> int:
        return self.search.scheduler.max_t or self.training.n_evaluations

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML/JSON-ready) that :func:`load_sweep_config` reads back unchanged."""
        return _to_plain(self)

    def _check(self, where: str, err: _Err) -> None:
        if not _NAME_RE.match(self.name):
            err("name", f"must match {_NAME_RE.pattern} (it names Ray's run directories); "
                f"got {self.name!r}")
        syn = self.data.synthetic
        if syn is not None:
            spacing = self.data.preprocessing.target_spacing
            shape = syn.grid_shape(spacing)
            for i, (p, s) in enumerate(zip(self.training.patch_size, shape, strict=True)):
                if p > s:
                    err(f"training.patch_size[{i}]", f"{p} exceeds the synthetic grid {shape} "
                        f"(size {syn.size!r} at {spacing or 'native'} mm)")
        sch = self.search.scheduler
        if sch.type == "asha" and sch.grace_period > self.scheduler_max_t:
            err("search.scheduler.grace_period", f"{sch.grace_period} exceeds max_t "
                f"({self.scheduler_max_t} = number of evaluations)")


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, ParamSpec):
        return obj.to_yaml()
    if dataclasses.is_dataclass(obj):
        return {
            f.name: _to_plain(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if not f.metadata.get("internal")
        }
    if isinstance(obj, tuple):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    return obj


# ----------------------------------------------------------------------------- generic parser


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _parse_value(tp: Any, value: Any, where: str, err: _Err) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]  # only Optional[T] is used
        return _parse_value(inner, value, where, err)
    if origin is Literal:
        if value not in args:
            err(where, f"expected one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return _parse_dataclass(tp, value, where, err)
    if tp is bool:
        if not isinstance(value, bool):
            err(where, f"expected true or false; got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            err(where, f"expected an integer; got {value!r}")
        return value
    if tp is float:
        return _number(value, where, err)
    if tp is str:
        if not isinstance(value, str):
            err(where, f"expected a string; got {value!r}")
        return value
    if origin is tuple:
        variadic = len(args) == 2 and args[1] is Ellipsis
        if not variadic and _scalar(value) and not isinstance(value, (bool, str)):
            value = [value] * len(args)  # `patch_size: 32` means a cube
        if not isinstance(value, (list, tuple)):
            err(where, f"expected a list; got {value!r}")
        if not variadic and len(value) != len(args):
            err(where, f"expected {len(args)} values; got {len(value)}")
        elem = (args[0],) * len(value) if variadic else args
        return tuple(_parse_value(t, v, f"{where}[{i}]", err) for i, (t, v) in
                     enumerate(zip(elem, value, strict=True)))
    raise TypeError(f"sweep_config: unsupported field type {_type_name(tp)} at {where}")


def _parse_dataclass(cls: type, data: Any, where: str, err: _Err) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        err(where or "<top level>", f"expected a mapping; got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key in data:
        if key not in fields:
            err(f"{where}.{key}" if where else str(key), _unknown(str(key), list(fields), "key"))
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        fw = f"{where}.{name}" if where else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                err(fw, "is required")
            if dataclasses.is_dataclass(hints[name]):  # omitted section: defaults, checked
                kwargs[name] = _parse_dataclass(hints[name], {}, fw, err)
            continue
        parse = f.metadata.get("parse")
        kwargs[name] = parse(data[name], fw, err) if parse else _parse_value(
            hints[name], data[name], fw, err)
    obj = cls(**kwargs)
    _check_tree(obj, where, err)
    return obj


def _check_tree(obj: Any, where: str, err: _Err) -> None:
    check: Callable[[str, _Err], None] | None = getattr(obj, "_check", None)
    if check is not None:
        check(where, err)


# ----------------------------------------------------------------------------- loading


def resolve_sweep_path(name_or_path: str | Path) -> Path:
    """A file path, or a bare name of a shipped sweep (``default`` -> ``sweeps/default.yaml``)."""
    p = Path(name_or_path)
    if p.exists() or p.suffix in (".yaml", ".yml") or len(p.parts) > 1:
        return p
    return SWEEPS_DIR / f"{p}.yaml"


def load_sweep_config(path_or_dict: str | Path | Mapping[str, Any]) -> SweepConfig:
    """Load and validate a sweep from a YAML path, a shipped sweep's name, or a dict.

    Raises SweepConfigError (a ValueError) naming the file and the key path.
    """
    if isinstance(path_or_dict, Mapping):
        source, data = "<dict>", dict(path_or_dict)
    else:
        path = resolve_sweep_path(path_or_dict)
        source = str(path)
        if not path.is_file():
            raise SweepConfigError(f"{source}: file not found")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise SweepConfigError(f"{source}: invalid YAML: {e}") from e
    err = _Err(source)
    if not isinstance(data, Mapping):
        err("<top level>", f"expected a mapping; got {type(data).__name__}")
    cfg = _parse_dataclass(SweepConfig, data, "", err)
    cfg.source = source
    return cfg


# ----------------------------------------------------------------------------- search space


@dataclass(frozen=True)
class TrialSpec:
    """What one trial trains, read from a Tune trial config by :func:`trial_spec`."""

    arm_id: str
    loss: str
    seed: int
    params: dict[str, Any]


def trial_spec(config: Mapping[str, Any]) -> TrialSpec:
    """Loss, seed and loss hyperparameters of a trial config (random search or Optuna)."""
    arm = config["arm"]
    params = dict(arm.get("loss_params") or {})
    return TrialSpec(arm.get("id", arm["loss"]), arm["loss"], int(config["seed"]), params)


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
                params.update({k: s.sample(rng) for k, s in dists.items()})
                sets.append({k: params[k] for k in specs})  # keep the YAML's key order
        for i, params in enumerate(sets):
            arm_id = loss if len(sets) == 1 else f"{loss}-{i:03d}"
            arms.append({"id": arm_id, "loss": loss, "loss_params": params})
    return arms


def count_trials(cfg: SweepConfig) -> int:
    """Trials the sweep runs: seeds x arms (random search) or num_samples (Optuna)."""
    if cfg.search.search_alg == "optuna":
        return cfg.search.num_samples
    return len(cfg.search.seeds) * len(build_arms(cfg))


def build_param_space(cfg: SweepConfig) -> dict[str, Any]:
    """Ray Tune ``param_space``: ``grid_search`` over seed x arm (see the module docstring).

    With ``search_alg: optuna`` it is ``{}``: the space lives in :func:`build_search_alg`
    (Optuna rejects grid_search, and a Tune space next to a define-by-run one is an error).
    """
    from ray import tune

    if cfg.search.search_alg == "optuna":
        return {}
    return {
        "seed": tune.grid_search(list(cfg.search.seeds)),
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

    Early stopping needs Ray's dashboard running, or stopped trials leak placement groups.
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
    because a trial whose worker group cannot be placed waits and, after
    RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, retries (ray.md §3).

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
    "FALLBACK_LOSSES", "ParamSpec", "SweepConfig", "SweepConfigError", "TrialSpec",
    "build_arms", "build_param_space", "build_scheduler", "build_search_alg", "cluster_capacity",
    "count_trials", "load_sweep_config", "loss_hyperparameters", "max_concurrent_trials",
    "optuna_space", "resolve_sweep_path", "trial_resources", "trial_spec", "tune_config_kwargs",
    "valid_losses",
]
