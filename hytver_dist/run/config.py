"""The run configuration: what one training run reads from an experiment file (``data``,
``model``, ``pretrain``, ``training``, ``storage``), validated once where the file is read, and
the loading that the sweep's configuration (:mod:`hytver_dist.sweep.config`) shares: file and
name resolution, ``--set`` overrides, and errors as ``<file>: <key path>: <problem>`` with the
nearest valid key or loss. Validated objects are frozen. ``docs/sweeps.md`` lists the keys.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

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
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from typing_extensions import Self

SWEEPS_DIR = Path(__file__).resolve().parents[2] / "sweeps"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class ConfigError(ValueError):
    """A configuration problem, formatted as ``<file>: <key path>: <problem>``."""


def problem(message: str, at: str = "") -> PydanticCustomError:
    """An error to raise in a validator; ``at`` extends its key path (``".n_test"``, ``"[2]"``)."""
    return PydanticCustomError("config", message, {"at": at})


def suggest(name: str, valid: Sequence[str], what: str) -> str:
    """``unknown <what> 'x' (did you mean 'y'?); valid: ...`` (difflib's nearest match)."""
    close = difflib.get_close_matches(name, list(valid), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown {what} {name!r}{hint}; valid: {', '.join(valid)}"


def _losses() -> Any:
    from .. import losses  # on first use: imports torch

    return losses


def loss_names() -> tuple[str, ...]:
    """Loss names accepted in ``search.losses``, in registry order."""
    return tuple(_losses().LOSSES)


def check_names(loss: str, names: Iterable[str], at: str) -> None:
    """Every name is a keyword of ``loss`` but ``backend`` (that is ``training.backend``)."""
    valid = [n for n in _losses().LOSSES[loss].hyperparameters() if n != "backend"]
    for name in names:
        if name not in valid:
            raise problem(suggest(str(name), valid, f"hyperparameter of {loss!r}") if valid
                          else f"{loss!r} takes no hyperparameters", f"{at}.{name}")


def check_values(loss: str, params: Mapping[str, Any], at: str, shown: str) -> None:
    """The loss's own checks accept ``params`` (a bad value fails here, not on the cluster)."""
    try:
        _losses().get_loss(loss, backend="reference", **params)
    except (ValueError, TypeError) as exc:
        raise problem(f"{loss!r} rejects {shown}: {exc}", at) from None


def _known_loss(name: str) -> str:
    if name not in loss_names():
        raise problem(suggest(str(name), loss_names(), "loss"))
    return name


def _no_bool(v: Any) -> Any:
    if isinstance(v, bool):  # pydantic's lax float takes it as 0 or 1
        raise problem(f"expected a number; got {v!r}")
    return v


def _triple(v: Any) -> Any:
    """One value means the same on every axis (``patch_size: 32`` is a cube)."""
    if isinstance(v, (int, float, str)) and not isinstance(v, bool):
        return (v, v, v)
    if isinstance(v, (list, tuple)) and len(v) != 3:
        raise problem(f"expected 3 values; got {len(v)}")
    return v


def _value(v: Any) -> Any:
    if isinstance(v, str):
        with contextlib.suppress(ValueError):
            return float(v)
    elif v is not None and not isinstance(v, (bool, int, float)):
        raise problem(f"expected a number, string or bool; got {v!r}")
    return v


def _patch_edge(v: int) -> int:
    from ..model.vnet import DOWNSAMPLING

    if v < DOWNSAMPLING or v % DOWNSAMPLING:
        raise problem(f"must be a positive multiple of {DOWNSAMPLING} (the V-Net's "
                      f"down-sampling factor); got {v}")
    return v


# Numeric strings count as numbers: YAML 1.1 reads ``1e-3`` as a string.
Number = Annotated[float, BeforeValidator(_no_bool), Field(allow_inf_nan=False)]
PositiveNumber = Annotated[Number, Field(gt=0)]
Fraction = Annotated[Number, Field(ge=0.0, lt=1.0)]
Spacing = Annotated[tuple[PositiveNumber, PositiveNumber, PositiveNumber], BeforeValidator(_triple)]
PatchEdge = Annotated[StrictInt, AfterValidator(_patch_edge)]
Triple = Annotated[tuple[PatchEdge, PatchEdge, PatchEdge], BeforeValidator(_triple)]
Value = Annotated[bool | int | float | str | None, BeforeValidator(_value)]
LossName = Annotated[str, AfterValidator(_known_loss)]


class Section(BaseModel):
    """Base of every section: unknown keys are errors, and a validated section never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def with_value(self, key: str, value: Any) -> Self:
        """A copy with the dotted ``key`` (``"data.path"``) set to ``value`` (not validated)."""
        head, _, rest = key.partition(".")
        return self.model_copy(update={
            head: getattr(self, head).with_value(rest, value) if rest else value})


class SyntheticConfig(Section):
    """Generated MSSEG-2-like cases (``hytver_dist.synth``); only when ``data.path`` is null."""

    n_cases: StrictInt = Field(12, ge=3)
    seed: StrictInt = 0
    size: Literal["tiny", "small", "full"] = Field("tiny", description="voxels of 4, 2 or 1 mm")
    n_negative: StrictInt | None = Field(None, ge=0, description="cases without new lesions; "
                                         "null = each case with probability 11/40")
    classes: StrictInt = Field(3, ge=2, description="data.format nnunet: classes including "
                               "background (nested lesion labels)")
    regions: StrictBool = Field(False, description="data.format nnunet: three nested regions "
                                "(one sigmoid each) instead of classes")

    @field_validator("n_negative")
    @classmethod
    def _negatives_fit(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and (n := info.data.get("n_cases")) is not None and v > n:
            raise problem(f"must be in [0, n_cases={n}] or null; got {v}")
        return v

    def grid_shape(self, target_spacing: Sequence[float] | None) -> tuple[int, int, int]:
        """Voxels per axis of a generated case on the training grid."""
        from ..data.synth import grid_shape

        return grid_shape(self.size, target_spacing)


class PreprocessingConfig(Section):
    target_spacing: Spacing | None = Field(None, description="mm per axis; null = native grid")


class SplitConfig(Section):
    preset: Literal["random", "coactseg", "file"] = Field(
        "random", description="coactseg: CoactSeg's 32 training / 8 test IDs (needs "
        "data.path); file: the case lists of split.file")
    file: str | None = Field(None, min_length=1, description="preset file: a JSON {train, val, "
                             "test} of case IDs (val optional), or nnU-Net's splits_final.json "
                             "with split.fold (its val cases are the test cases here)")
    fold: StrictInt | None = Field(None, ge=0, description="preset file with a list of folds: "
                                   "the fold used")
    n_test: StrictInt | None = Field(None, ge=1, validate_default=True,
                                     description="random: default 4; coactseg, file: null")
    n_val: StrictInt = Field(2, ge=1, description="validation cases, out of the training ones")
    seed: StrictInt = 0

    @field_validator("n_test", "n_val")
    @classmethod
    def _preset_rules(cls, v: int | None, info: ValidationInfo) -> int | None:
        preset = info.data.get("preset")
        if preset == "file":
            if info.field_name == "n_test" and v is not None:
                raise problem("must be null with preset 'file' (the file lists the test cases)")
            return v
        if preset != "coactseg":
            return 4 if v is None else v
        if info.field_name == "n_test" and v is not None:
            raise problem("must be null with preset 'coactseg' (it fixes 8 test cases)")
        if info.field_name == "n_val" and v >= 32:  # type: ignore[operator]
            raise problem(f"must be < 32 (CoactSeg's training cases); got {v}")
        return v

    @model_validator(mode="after")
    def _file_rules(self) -> Self:
        if (self.preset == "file") != (self.file is not None):
            raise problem("set split.file exactly when preset is 'file'", ".file")
        if self.fold is not None and self.preset != "file":
            raise problem("only with preset 'file'", ".fold")
        return self


class DataConfig(Section):
    path: str | None = Field(None, description="MSSEG-2 training folder or nnU-Net v2 raw "
                             "dataset folder; null = synthetic data")
    format: Literal["auto", "msseg2", "nnunet"] = Field(
        "auto", description="auto: nnunet when the folder holds a dataset.json, else msseg2 "
        "(synthetic: msseg2)")
    synthetic: SyntheticConfig | None = Field(None, validate_default=True)
    preprocessing: PreprocessingConfig = Field(default_factory=PreprocessingConfig)
    split: SplitConfig = Field(default_factory=SplitConfig, validate_default=True)

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

    @field_validator("synthetic")
    @classmethod
    def _only_without_path(cls, v: SyntheticConfig | None,
                           info: ValidationInfo) -> SyntheticConfig | None:
        if "path" not in info.data:  # an invalid path is reported there
            return v
        if info.data["path"] is not None and v is not None:
            raise problem("set only when data.path is null (synthetic data)")
        return v or (SyntheticConfig() if info.data["path"] is None else None)

    @field_validator("split")
    @classmethod
    def _fits_synthetic(cls, split: SplitConfig, info: ValidationInfo) -> SplitConfig:
        if (syn := info.data.get("synthetic")) is None or info.data.get("path") is not None:
            return split
        if split.preset == "coactseg":
            raise problem("'coactseg' selects MSSEG-2 case IDs and needs data.path; synthetic "
                          "data uses 'random'", ".preset")
        if split.preset == "file":
            raise problem("'file' lists case IDs of a dataset and needs data.path; synthetic "
                          "data uses 'random'", ".preset")
        if (held := (split.n_test or 0) + split.n_val) >= syn.n_cases:
            raise problem(f"n_test + n_val = {held} leaves no training case out of "
                          f"synthetic.n_cases = {syn.n_cases}")
        return split


class ModelConfig(Section):
    """The V-Net (``hytver_dist.model.VNet``)."""

    n_filters: StrictInt = Field(4, ge=1, description="channels of the first level")
    activation: Literal["leaky_relu", "relu"] = "leaky_relu"
    dropout: Fraction = 0.0
    init_checkpoint: str | None = Field(None, min_length=1, description="initial weights: a "
                                        "V-Net state dict file (also CoactSeg's layout)")

    def vnet_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`hytver_dist.model.VNet`."""
        return self.model_dump(include={"n_filters", "activation", "dropout"})


def _schedule(cfg: Any) -> Any:
    """``eval_every`` fits in ``iterations`` (of a TrainingConfig or a PretrainConfig)."""
    if cfg.eval_every > cfg.iterations:
        raise problem(f"{cfg.eval_every} exceeds iterations ({cfg.iterations})", ".eval_every")
    return cfg


class TrainingConfig(Section):
    iterations: StrictInt = Field(20, ge=1, description="optimizer steps")
    batch_size: StrictInt = Field(2, ge=1, description="patches per step and worker")
    patch_size: Triple = Field((32, 32, 32), description="an int (cube) or 3 ints, multiples "
                               "of the V-Net's down-sampling factor (16)")
    lr: PositiveNumber = 1e-3
    optimizer: Literal["adam"] = "adam"
    eval_every: StrictInt = Field(10, ge=1, description="iterations between validations")
    checkpoint_every: StrictInt = Field(10, ge=1, description="a multiple of eval_every")
    val_patch_overlap: Fraction = Field(0.25, description="sliding-window overlap in [0, 1)")
    amp: StrictBool = False
    backend: Literal["auto", "fused", "reference"] = "auto"
    loss_activation: Literal["auto", "sigmoid", "softmax"] = Field(
        "auto", description="how the losses read the outputs: auto = softmax for datasets of "
        "classes (where the loss has it), sigmoid for regions and MSSEG-2")
    include_background: StrictBool | None = Field(
        None, description="softmax losses: whether the background class counts; null = the "
        "loss's default")

    @property
    def n_evaluations(self) -> int:
        return math.ceil(self.iterations / self.eval_every)

    @model_validator(mode="after")
    def _checkpoints_at_reports(self) -> Self:
        _schedule(self)
        if self.checkpoint_every % self.eval_every:  # a checkpoint rides on a report
            raise problem(f"must be a multiple of eval_every ({self.eval_every}); got "
                          f"{self.checkpoint_every}", ".checkpoint_every")
        return self


class PretrainConfig(Section):
    """A pretraining run made once before the trials; every trial fine-tunes from its best
    (validation) weights with a fresh optimizer. Batch and patch size come from ``training``."""

    loss: LossName = "dice_ce"
    hyperparameters: dict[str, Value] = Field(default_factory=dict)
    iterations: StrictInt = Field(240, ge=1)
    lr: PositiveNumber = 3e-3
    seed: StrictInt = 0
    eval_every: StrictInt = Field(40, ge=1)

    @model_validator(mode="after")
    def _loss_accepts(self) -> Self:
        check_names(self.loss, self.hyperparameters, ".hyperparameters")
        check_values(self.loss, self.hyperparameters, ".hyperparameters",
                     str(self.hyperparameters))
        return _schedule(self)


class StorageConfig(Section):
    path: str = Field("results", min_length=1, description="local directory, shared mount or "
                      "s3://bucket/prefix")
    results_dir: str | None = Field(None, description="a sweep's per-trial case CSVs; null = "
                                    "<path>/<name>/results")


class RunConfig(Section):
    """What one training run needs; :class:`hytver_dist.sweep.config.SweepConfig` adds the
    sweep's sections (:attr:`SWEEP_SECTIONS`, which a single run skips in a sweep's file)."""

    SWEEP_SECTIONS: ClassVar[tuple[str, ...]] = ("search", "resources", "report", "tracking")

    name: str = Field(pattern=NAME_PATTERN, description="names Ray's run directories; keep it "
                      "stable (resume finds runs by it)")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    pretrain: PretrainConfig | None = None
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)

    _source: str = PrivateAttr("<dict>")

    @property
    def source(self) -> str:
        """The file this config came from (``<dict>`` for a mapping), for error messages."""
        return self._source

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML/JSON-ready) that :meth:`load` reads back unchanged."""
        return self.model_dump(mode="json")

    def __eq__(self, other: object) -> bool:  # the same settings, whichever file
        return type(other) is type(self) and self.to_dict() == other.to_dict()  # type: ignore

    __hash__ = None  # type: ignore[assignment]

    @model_validator(mode="after")
    def _cross_section(self) -> Self:
        if (syn := self.data.synthetic) is not None:
            spacing = self.data.preprocessing.target_spacing
            shape = syn.grid_shape(spacing)
            for i, (p, s) in enumerate(zip(self.training.patch_size, shape, strict=True)):
                if p > s:
                    raise problem(f"{p} exceeds the synthetic grid {shape} (size {syn.size!r} "
                                  f"at {spacing or 'native'} mm)", f".training.patch_size[{i}]")
        if self.pretrain is not None and self.model.init_checkpoint is not None:
            raise problem("set either pretrain or model.init_checkpoint, not both (the "
                          "pretraining stage starts from random weights)", ".pretrain")
        return self

    @classmethod
    def load(cls, path_or_dict: str | Path | Mapping[str, Any], overrides: Sequence[str] = (),
             *, source: str | None = None) -> Self:
        """Validate a YAML path, a shipped sweep's name or a mapping, with ``--set`` style
        ``overrides`` applied first; ``source`` names a mapping in errors (``<dict>``).
        Raises :class:`ConfigError` naming the file (and overrides) and every problem."""
        if isinstance(path_or_dict, Mapping):
            source, data = source or "<dict>", path_or_dict
        else:
            source, data = read_config_file(path_or_dict)
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: <top level>: expected a mapping; got "
                              f"{type(data).__name__}")
        if overrides:
            source = f"{source} with --set {' '.join(overrides)}"
            data = apply_overrides(data, overrides)
        data = {k: v for k, v in data.items()
                if k in cls.model_fields or k not in RunConfig.SWEEP_SECTIONS}
        try:
            cfg = cls.model_validate(data)
        except ValidationError as exc:
            lines = (_error_line(source, err, cls) for err in exc.errors())
            raise ConfigError("\n".join(dict.fromkeys(lines))) from None
        cfg._source = source
        return cfg


def _error_line(source: str, err: Mapping[str, Any], root: type[BaseModel]) -> str:
    # A tagged union repeats its tag (a one-key mapping's key) in loc; a dict key adds "[key]".
    loc = [p for i, p in enumerate(err["loc"])
           if p != "[key]" and not (i and p == err["loc"][i - 1])]
    kind, ctx = err["type"], err.get("ctx") or {}
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
    path = (path + ctx.get("at", "")).lstrip(".") or "<top level>"
    if kind == "extra_forbidden":
        text = suggest(str(loc[-1]), _keys_at(root, loc[:-1]), "key")
    elif kind == "value_error":  # a ValueError of a validator: its own message
        text = str(ctx["error"])
    else:  # pydantic's message, with the value (this project's own messages show it already)
        text = err["msg"] + ("" if kind in ("config", "missing") else f"; got {err['input']!r}")
    return f"{source}: {path}: {text}"


def _keys_at(model: type[BaseModel] | None, loc: Sequence[Any]) -> list[str]:
    """The keys of the section at ``loc`` below ``model`` (for "did you mean")."""
    for part in loc:
        field = model.model_fields.get(part) if model and isinstance(part, str) else None
        kinds = (field.annotation, *getattr(field.annotation, "__args__", ())) if field else ()
        model = next((k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)),
                     None)
    return list(model.model_fields) if model else []


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A file path, or the bare name of a shipped sweep (``default`` -> ``sweeps/default.yaml``)."""
    p = Path(name_or_path)
    if p.exists() or p.suffix in (".yaml", ".yml") or len(p.parts) > 1:
        return p
    return SWEEPS_DIR / f"{p}.yaml"


def read_config_file(path_or_name: str | Path) -> tuple[str, Any]:
    """(source label, parsed YAML) of a config file or shipped sweep name."""
    path = resolve_config_path(path_or_name)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        return str(path), yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None


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
            if (child := node.get(part)) is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(parts[:i + 1])} is not a "
                                  f"section; got {child!r}")
            node = child
        node[parts[-1]] = value
    return out


def add_override_argument(parser: Any) -> None:
    """The ``--set KEY=VALUE`` option of the command-line tools (argparse)."""
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        metavar="KEY=VALUE", help="override a config key, e.g. --set "
                        "training.iterations=50 (value parsed as YAML; repeatable)")
