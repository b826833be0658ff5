"""The HyTver/CoactSeg V-Net, its config builder and checkpoint loading."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping

from hytver_dist.model.checkpoint import (
    CheckpointError,
    LoadReport,
    load_checkpoint,
    load_pretrained,
    load_weights_only,
    save_atomic,
)
from hytver_dist.model.vnet import DOWNSAMPLING, VNet, count_parameters

__all__ = ["DOWNSAMPLING", "CheckpointError", "LoadReport", "VNet", "build_model",
           "count_parameters", "load_checkpoint", "load_pretrained", "load_weights_only",
           "save_atomic"]

_NAMES = ("vnet", "coactseg_vnet")


def build_model(config: Mapping[str, object] | object) -> VNet:
    """Build a :class:`VNet` from a config mapping (or a config dataclass, via ``asdict``).

    Accepts the model section itself or a full config holding it under ``"model"``. Keys are
    ``VNet``'s keyword arguments plus an optional ``"name"``/``"arch"`` (``"vnet"``). Unknown
    keys raise ``ValueError`` naming them (a typo must not silently train the default model).

    Example: ``build_model({"name": "vnet", "n_filters": 16, "activation": "leakyrelu"})``.
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, Mapping):
        raise ValueError(f"model config must be a mapping, got {type(config).__name__}")
    cfg = dict(config)
    if isinstance(cfg.get("model"), Mapping):
        cfg = dict(cfg["model"])  # type: ignore[arg-type]
    name = None
    for key in ("name", "arch"):
        if key in cfg:
            name = cfg.pop(key)
    if name is not None and str(name).lower() not in _NAMES:
        raise ValueError(f"unknown model name {name!r}; expected one of {_NAMES}")
    allowed = set(inspect.signature(VNet.__init__).parameters) - {"self"}
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(f"unknown model config keys {unknown}; allowed: {sorted(allowed)}")
    return VNet(**cfg)  # type: ignore[arg-type]
