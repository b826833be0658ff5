"""The pretraining stage of a sweep as one Ray Train run (DDP over the trials' workers), stored
once under ``<storage>/pretrain/<key>/`` and reused by later sweeps (see
:mod:`hytver_dist.run.pretrain` for the key and the stored payload)."""

from __future__ import annotations

from typing import Any

from ..files import exists
from ..run.config import RunConfig
from ..run.prepare import PreparedData
from ..run.pretrain import model_uri, pretrain_key, run_pretrain, save


def _pretrain_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker of the stage: train (DDP over the workers); rank 0 stores."""
    import ray.train
    import ray.train.torch

    from ..run.prepare import prepare_data

    cfg: RunConfig = config["run"]
    data = prepare_data(cfg.data, data_dir=config.get("data_dir"),
                        cache_dir=config.get("cache_dir"))
    payload = run_pretrain(cfg, data, ray.train.torch.get_device(),
                           wrap_model=ray.train.torch.prepare_model)
    if ray.train.get_context().get_world_rank() == 0:
        save(payload, config["uri"])
    ray.train.report({"best_val_dice": payload["best_val_dice"],
                      "best_iteration": payload["best_iteration"]})


def ensure_on_ray(cfg: RunConfig, data: PreparedData, storage: str, *, data_dir: str | None,
                  cache_dir: str | None, scaling: Any, failure: Any) -> tuple[str, bool]:
    """(weights URI, reused?) of the config's stage, run as one Ray Train run with the trials'
    ``scaling`` (``ray.train.ScalingConfig``) when the storage does not hold it yet."""
    import ray.train

    from .ray_compat import torch_trainer_class

    key = pretrain_key(cfg, data)
    uri = model_uri(storage, key)
    if exists(uri):
        return uri, True
    torch_trainer_class()(
        _pretrain_worker,
        train_loop_config={"run": cfg, "uri": uri, "data_dir": data_dir,
                           "cache_dir": cache_dir},
        scaling_config=scaling,
        run_config=ray.train.RunConfig(name=f"pretrain-{key}", storage_path=storage,
                                       failure_config=failure),
    ).fit()
    if not exists(uri):
        raise RuntimeError(f"pretraining run pretrain-{key} ended without writing {uri}")
    return uri, False


__all__ = ["ensure_on_ray"]
