"""``python -m hytver_dist.train``: one training run from a config file, resumable.

``python -m hytver_dist.train --config sweeps/default.yaml --loss hytver --seed 0`` trains on
the config's data (its ``data``, ``model`` and ``training`` sections, see ``docs/sweeps.md``;
``--set training.iterations=50`` overrides any key), writes ``checkpoint.pt`` (resumable,
every ``checkpoint_every`` iterations), ``metrics.csv`` and ``best_model.pt`` (chosen on the
validation cases, never the test cases) into the run directory; ``--resume`` continues from
the checkpoint.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..data import DataError
from ..files import normalize
from ..losses import get_loss
from ..model import CheckpointError, load_checkpoint, save_atomic
from .config import ConfigError, RunConfig, add_override_argument
from .prepare import prepare_data
from .pretrain import ensure_local, open_init
from .train import RunSpec, train_loop


def _parse_params(items: list[str]) -> dict[str, Any]:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--param expects KEY=VALUE, got {item!r}")
        if key == "backend":
            raise SystemExit("--param backend=...: the loss backend is training.backend in the "
                             "config, not a loss hyperparameter")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def _append_row(path: Path, row: dict[str, float]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hytver_dist.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="default",
                        help="sweep YAML (path, or a name under sweeps/); default: default")
    parser.add_argument("--loss", default="hytver", help="registry name (default hytver)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="loss hyperparameter, e.g. --param alpha=0.7 (repeatable)")
    parser.add_argument("--data", help="MSSEG-2 or nnU-Net v2 raw dataset directory (overrides "
                        "data.path)")
    parser.add_argument("--out", help="run directory (default <storage>/<name>/train/<loss>-"
                        "seed<seed>)")
    parser.add_argument("--iterations", type=int, help="set training.iterations, with "
                        "eval_every and checkpoint_every capped to it")
    add_override_argument(parser)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resume", action="store_true", help="continue from checkpoint.pt")
    parser.add_argument("--cache", help="cache directory (default $HYTVER_CACHE or "
                        "~/.cache/hytver_dist)")
    parser.add_argument("--init-checkpoint", metavar="PATH", help="start from these weights "
                        "(sets model.init_checkpoint; CoactSeg layout accepted)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    if args.init_checkpoint:
        args.overrides.append(f"model.init_checkpoint={args.init_checkpoint}")
    try:
        cfg = RunConfig.load(args.config, args.overrides)
        if args.iterations is not None:
            every = min(cfg.training.eval_every, args.iterations)
            cfg = RunConfig.load(args.config, [*args.overrides,
                                             f"training.iterations={args.iterations}",
                                             f"training.eval_every={every}",
                                             f"training.checkpoint_every={every}"])
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    spec = RunSpec.from_config(cfg, args.loss, args.seed, _parse_params(args.param))
    get_loss(spec.loss, **spec.loss_params)  # fail now on a bad name or hyperparameter
    out = Path(args.out or Path(cfg.storage.path) / cfg.name / "train" /
               f"{spec.loss}-seed{spec.seed}")
    ckpt_path, metrics_path = out / "checkpoint.pt", out / "metrics.csv"
    resume = None
    if args.resume:
        if not ckpt_path.is_file():
            raise SystemExit(f"--resume: no checkpoint at {ckpt_path}")
        try:
            resume = load_checkpoint(ckpt_path)
        except CheckpointError as exc:
            raise SystemExit(f"--resume: {exc}") from None
        if resume["spec"] != spec.to_dict():
            raise SystemExit(f"--resume: {ckpt_path} was written for another run spec:\n"
                             f"{resume['spec']}")
        print(f"resuming {out} from iteration {resume['iteration']}")
        # Rows written after the last checkpoint will be written again: restart the CSV from
        # the checkpoint's history.
        metrics_path.unlink(missing_ok=True)
        for row in resume["history"]:
            _append_row(metrics_path, row)
    elif ckpt_path.exists():
        raise SystemExit(f"{out} already holds a run: pass --resume or another --out")

    try:
        data = prepare_data(cfg.data, data_dir=args.data, cache_dir=args.cache)
    except DataError as exc:
        raise SystemExit(f"error: {'--data' if args.data else 'data.path'}: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    print(f"data: {data.root} (train {len(data.split.train)}, val {len(data.split.val)}, "
          f"test {len(data.split.test)} cases)")
    (out / "run.json").write_text(json.dumps({"spec": spec.to_dict(), "config": cfg.to_dict(),
                                              "split": data.split.as_dict()}, indent=1,
                                             default=str))

    def report(row: dict[str, float], payload: dict[str, Any] | None) -> None:
        _append_row(metrics_path, row)
        if payload is not None:
            save_atomic(payload, ckpt_path)

    init = cfg.model.init_checkpoint
    if cfg.pretrain is not None and resume is None:
        init, reused = ensure_local(cfg, data, normalize(cfg.storage.path), args.device)
        print(f"pretrained model ({'reused' if reused else 'trained now'}): {init}")
    if init is not None:
        init = open_init(init)
    start = time.perf_counter()
    result = train_loop(spec, data, args.device, resume=resume, report=report,
                        progress=not args.no_progress, init=init)
    if result.init_report:
        print(result.init_report)
    best = {"model": result.best_state, "spec": spec.to_dict(),
            "best_val_dice": result.best_metric, "best_iteration": result.best_iteration,
            "split": data.split.as_dict(), **data.dataset.checkpoint_entry()}
    save_atomic(best, out / "best_model.pt")
    print(f"done in {time.perf_counter() - start:.1f} s: best val_dice {result.best_metric:.4f} "
          f"at iteration {result.best_iteration}; {out / 'best_model.pt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
