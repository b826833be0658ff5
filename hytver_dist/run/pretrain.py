"""The initial model of a sweep or a training run: a pretraining stage made once (stored under
``<storage>/pretrain/<key>/model.pt``, ``key`` a hash of everything that determines it, and
reused by any run with the same key), or a given checkpoint (``model.init_checkpoint``).
Details: docs/sweeps.md (``pretrain`` and ``model.init_checkpoint``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..files import exists, is_uri, read_bytes
from ..model import load_checkpoint, save_atomic
from .config import RunConfig
from .prepare import PreparedData
from .train import RunSpec, model_kwargs, train_loop

MODEL_FILE = "model.pt"


# Data keys added for other datasets: counted only when set, so that the keys of earlier
# sweeps, and with them their stored weights, stay valid.
_NEW_DATA_KEYS = {"format": "auto", "synthetic.classes": 3, "synthetic.regions": False,
                  "split.file": None, "split.fold": None}


def _data_key(cfg: RunConfig) -> dict:
    data = cfg.data.model_dump(mode="json", exclude={"path"})
    for dotted, default in _NEW_DATA_KEYS.items():
        *parents, leaf = dotted.split(".")
        node = data
        for p in parents:
            node = node.get(p) or {}
        if leaf in node and node[leaf] == default:
            del node[leaf]
    return data


def pretrain_key(cfg: RunConfig, data: PreparedData) -> str:
    """16 hex digits of a hash of what determines the pretrained weights."""
    assert cfg.pretrain is not None
    what = {
        "data": _data_key(cfg),
        # Synthetic data is fully described by its settings; a real dataset by its folder.
        "source": "synthetic" if cfg.data.path is None else str(data.root),
        "split": data.split.as_dict(),
        # Channels in and out follow the dataset (MSSEG-2: the V-Net's defaults, not listed).
        "model": model_kwargs(cfg.model, data.dataset),
        "pretrain": cfg.pretrain.model_dump(mode="json"),
        "batch": cfg.training.batch_size,
        "patch": list(cfg.training.patch_size),
    }
    if cfg.training.loss_activation != "auto" or cfg.training.include_background is not None:
        # How the loss reads the outputs changes the weights (absent at the defaults, so the
        # keys of earlier sweeps stay valid).
        what["outputs"] = [cfg.training.loss_activation, cfg.training.include_background]
    text = json.dumps(what, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pretrain_spec(cfg: RunConfig) -> RunSpec:
    """The run spec of the pretraining stage (no checkpoints: it is short and stored once)."""
    p = cfg.pretrain
    assert p is not None
    # checkpoint_every: any multiple of eval_every; nothing receives the stage's reports.
    training = cfg.training.model_copy(update={
        "iterations": p.iterations, "lr": p.lr, "eval_every": p.eval_every,
        "checkpoint_every": p.iterations * p.eval_every})
    return RunSpec(p.loss, p.seed, dict(p.hyperparameters), cfg.model, training)


def model_uri(storage: str, key: str) -> str:
    """Where the stage's weights live: a local path or a URI (``s3://...``)."""
    return f"{storage.rstrip('/')}/pretrain/{key}/{MODEL_FILE}"


def save(payload: Mapping[str, Any], uri: str) -> None:
    """Write ``payload`` to a temporary name, then move it into place (readers never see half
    a file; local and ``s3://`` alike)."""
    save_atomic(dict(payload), uri)


def load_state(uri: str) -> dict[str, Any]:
    """The payload of a stored stage (weights only: a pickled object is refused with
    :class:`~hytver_dist.model.CheckpointError`)."""
    data = read_bytes(uri)
    if data is None:
        raise FileNotFoundError(f"{uri}: no pretrained model there")
    return load_checkpoint(uri, data)


def open_init(init: str | None) -> str | dict[str, Any] | None:
    """Initial weights as :func:`hytver_dist.run.train.train_loop` takes them: a local path as
    is, the payload behind a URI (``s3://``, ``file://``) read through pyarrow."""
    return load_state(init) if init is not None and is_uri(init) else init


def run_pretrain(cfg: RunConfig, data: PreparedData, device: torch.device | str, *,
                 wrap_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None
                 ) -> dict[str, Any]:
    """Train the stage; returns the payload stored by :func:`save` (best weights + facts)."""
    spec = pretrain_spec(cfg)
    result = train_loop(spec, data, device, wrap_model=wrap_model)
    return {"model": result.best_state, "loss": spec.loss, "seed": spec.seed,
            "iterations": result.iterations, "best_val_dice": result.best_metric,
            "best_iteration": result.best_iteration}


def ensure_local(cfg: RunConfig, data: PreparedData, storage: str,
                 device: torch.device | str = "cpu") -> tuple[str, bool]:
    """(weights URI, reused?) of the config's stage, trained in this process when missing."""
    uri = model_uri(storage, pretrain_key(cfg, data))
    if exists(uri):
        return uri, True
    save(run_pretrain(cfg, data, device), uri)
    return uri, False


__all__ = ["MODEL_FILE", "ensure_local", "load_state", "model_uri",
           "open_init", "pretrain_key", "pretrain_spec", "run_pretrain", "save"]
