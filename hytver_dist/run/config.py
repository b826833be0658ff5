"""The run configuration (``data``, ``model``, ``pretrain``, ``training``, ``storage``), validated
once where the file is read, and the loading that the sweep's configuration shares. Errors read
``<file>: <key path>: <problem>``; validated objects are frozen. ``docs/sweeps.md`` lists the keys.
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
Count = Annotated[StrictInt, Field(ge=1)]
Spacing = Annotated[tuple[PositiveNumber, PositiveNumber, PositiveNumber], BeforeValidator(_triple)]
PatchEdge = Annotated[StrictInt, AfterValidator(_patch_edge)]
Value = Annotated[bool | int | float | str | None, BeforeValidator(_value)]
LossName = Annotated[str, AfterValidator(_known_loss)]
Text = Annotated[str, Field(min_length=1)]


class Section(BaseModel):
    """Base of every section: unknown keys are errors, and a validated section never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def with_value(self, key: str, value: Any) -> Self:
        """A copy with the dotted ``key`` (``"data.path"``) set to ``value`` (not validated)."""
        head, _, rest = key.partition(".")
        return self.model_copy(update={
            head: getattr(self, head).with_value(rest, value) if rest else value})


class SyntheticConfig(Section):
    n_cases: StrictInt = Field(12, ge=3)
    seed: StrictInt = 0
    size: Literal["tiny", "small", "full"] = "tiny"
    n_negative: StrictInt | None = Field(None, ge=0)
    classes: StrictInt = Field(3, ge=2)
    regions: StrictBool = False

    @model_validator(mode="after")
    def _negatives_fit(self) -> Self:
        if self.n_negative is not None and self.n_negative > self.n_cases:
            raise problem(f"must be in [0, n_cases={self.n_cases}] or null; got "
                          f"{self.n_negative}", ".n_negative")
        return self


class PreprocessingConfig(Section):
    target_spacing: Spacing | None = None


class SplitConfig(Section):
    preset: Literal["random", "coactseg", "file"] = "random"
    file: Text | None = None
    fold: StrictInt | None = Field(None, ge=0)
    n_test: Count | None = Field(None, validate_default=True)  # random: 4
    n_val: Count = 2
    seed: StrictInt = 0

    @field_validator("n_test")
    @classmethod
    def _n_test(cls, v: int | None, info: ValidationInfo) -> int | None:
        preset = info.data.get("preset", "random")
        if preset == "random":
            return 4 if v is None else v
        if v is not None:
            raise problem(f"must be null with preset {preset!r} (" + (
                "it fixes 8 test cases)" if preset == "coactseg" else "the file lists the test "
                "cases)"))
        return v

    @model_validator(mode="after")
    def _preset_rules(self) -> Self:
        if (self.preset == "file") != (self.file is not None):
            raise problem("set split.file exactly when preset is 'file'", ".file")
        if self.fold is not None and self.preset != "file":
            raise problem("only with preset 'file'", ".fold")
        if self.preset == "coactseg" and self.n_val >= 32:
            raise problem(f"must be < 32 (CoactSeg's training cases); got {self.n_val}", ".n_val")
        return self


class DataConfig(Section):
    path: str | None = None
    format: Literal["auto", "msseg2", "nnunet"] = "auto"
    synthetic: SyntheticConfig | None = Field(None, validate_default=True)
    preprocessing: PreprocessingConfig = PreprocessingConfig()
    split: SplitConfig = SplitConfig()

    @field_validator("synthetic")
    @classmethod
    def _only_without_path(cls, v: SyntheticConfig | None,
                           info: ValidationInfo) -> SyntheticConfig | None:
        if "path" not in info.data:  # an invalid path is reported there
            return v
        if info.data["path"] is not None and v is not None:
            raise problem("set only when data.path is null (synthetic data)")
        return v or (SyntheticConfig() if info.data["path"] is None else None)

    @model_validator(mode="after")
    def _split_fits(self) -> Self:
        if (syn := self.synthetic) is None:
            return self
        if self.split.preset != "random":
            raise problem(f"{self.split.preset!r} " + (
                "selects MSSEG-2 case IDs" if self.split.preset == "coactseg" else
                "lists case IDs of a dataset") + " and needs data.path; synthetic data uses "
                "'random'", ".split.preset")
        if (held := (self.split.n_test or 0) + self.split.n_val) >= syn.n_cases:
            raise problem(f"n_test + n_val = {held} leaves no training case out of "
                          f"synthetic.n_cases = {syn.n_cases}", ".split")
        return self


class ModelConfig(Section):
    n_filters: Count = 4
    activation: Literal["leaky_relu", "relu"] = "leaky_relu"
    dropout: Fraction = 0.0
    init_checkpoint: Text | None = None

    def vnet_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`hytver_dist.model.VNet`."""
        return self.model_dump(include={"n_filters", "activation", "dropout"})


def _schedule(cfg: Any) -> Any:
    """``eval_every`` fits in ``iterations`` (of a TrainingConfig or a PretrainConfig)."""
    if cfg.eval_every > cfg.iterations:
        raise problem(f"{cfg.eval_every} exceeds iterations ({cfg.iterations})", ".eval_every")
    return cfg


class TrainingConfig(Section):
    iterations: Count = 20
    batch_size: Count = 2
    patch_size: Annotated[tuple[PatchEdge, PatchEdge, PatchEdge],
                          BeforeValidator(_triple)] = (32, 32, 32)
    lr: PositiveNumber = 1e-3
    optimizer: Literal["adam"] = "adam"
    eval_every: Count = 10
    checkpoint_every: Count = 10
    val_patch_overlap: Fraction = 0.25
    amp: StrictBool = False
    backend: Literal["auto", "fused", "reference"] = "auto"
    loss_activation: Literal["auto", "sigmoid", "softmax"] = "auto"
    include_background: StrictBool | None = None

    @property
    def n_evaluations(self) -> int:
        return math.ceil(self.iterations / self.eval_every)

    @model_validator(mode="after")
    def _checkpoints_at_reports(self) -> Self:
        if _schedule(self).checkpoint_every % self.eval_every:  # a checkpoint rides on a report
            raise problem(f"must be a multiple of eval_every ({self.eval_every}); got "
                          f"{self.checkpoint_every}", ".checkpoint_every")
        return self


class PretrainConfig(Section):
    """A pretraining run made once before the trials; every trial fine-tunes from its best
    (validation) weights with a fresh optimizer. Batch and patch size come from ``training``."""

    loss: LossName = "dice_ce"
    hyperparameters: dict[str, Value] = {}
    iterations: Count = 240
    lr: PositiveNumber = 3e-3
    seed: StrictInt = 0
    eval_every: Count = 40

    @model_validator(mode="after")
    def _loss_accepts(self) -> Self:
        check_names(self.loss, self.hyperparameters, ".hyperparameters")
        check_values(self.loss, self.hyperparameters, ".hyperparameters",
                     str(self.hyperparameters))
        return _schedule(self)


class StorageConfig(Section):
    path: Text = "results"
    results_dir: str | None = None


class RunConfig(Section):
    """What one training run needs; :class:`hytver_dist.sweep.config.SweepConfig` adds the
    sweep's sections (:attr:`SWEEP_SECTIONS`, which a single run skips in a sweep's file)."""

    SWEEP_SECTIONS: ClassVar[tuple[str, ...]] = ("search", "resources", "report", "tracking")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    pretrain: PretrainConfig | None = None
    training: TrainingConfig = TrainingConfig()
    storage: StorageConfig = StorageConfig()

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
            from ..data.synth import grid_shape

            spacing = self.data.preprocessing.target_spacing
            shape = grid_shape(syn.size, spacing)
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
        try:
            cfg = cls.model_validate({k: v for k, v in data.items() if k in cls.model_fields
                                      or k not in RunConfig.SWEEP_SECTIONS})
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


def read_config_file(path_or_name: str | Path) -> tuple[str, Any]:
    """(source label, parsed YAML) of a config file, or of a shipped sweep given by its bare
    name (``default`` -> ``sweeps/default.yaml``)."""
    path = Path(path_or_name)
    if not (path.exists() or path.suffix in (".yaml", ".yml") or len(path.parts) > 1):
        path = SWEEPS_DIR / f"{path}.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        return str(path), yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """``data`` with ``KEY.PATH=VALUE`` items applied (values parsed as YAML), as the
    command-line ``--set`` does. Missing sections are created; validation comes after."""
    out = copy.deepcopy(dict(data))
    for item in overrides:
        key, sep, raw = item.partition("=")
        *parents, leaf = key.strip().split(".")
        if not sep or not all((*parents, leaf)):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. training.iterations=50")
        node = out
        for i, part in enumerate(parents):
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node := node[part], dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(parents[:i + 1])} is not a "
                                  f"section; got {node!r}")
        try:
            node[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: invalid YAML value: {exc}") from None
    return out


def add_override_argument(parser: Any) -> None:
    """The ``--set KEY=VALUE`` option of the command-line tools (argparse)."""
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        metavar="KEY=VALUE", help="override a config key, e.g. --set "
                        "training.iterations=50 (value parsed as YAML; repeatable)")
