"""One training run: a V-Net trained with one loss and one seed, validated on held-out cases
(the command line is :mod:`hytver_dist.run.train_cli`).

:func:`train_loop` is a plain function of (run spec, data, device), used as is by each Ray Train
worker of a sweep: under an initialised ``torch.distributed`` process group it trains with
distributed data parallel (each rank samples its own patches) and shards validation.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .. import metrics
from ..data import PatchConfig, PatchSampler, PreprocessedCase
from ..losses import get_loss
from ..model import build_model, load_pretrained
from .config import ModelConfig, RunConfig, TrainingConfig
from .inference import sliding_window_predict
from .prepare import MSSEG2, AnyCase, DatasetInfo, PreparedData

# (metrics, checkpoint payload or None) -> None; called on every rank at each evaluation.
Reporter = Callable[[dict[str, float], dict[str, Any] | None], None]


@dataclass
class RunSpec:
    """Everything that defines one training run."""

    loss: str
    seed: int
    loss_params: dict[str, Any] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    @classmethod
    def from_config(cls, cfg: RunConfig, loss: str, seed: int,
                    loss_params: dict[str, Any] | None = None) -> RunSpec:
        return cls(loss, int(seed), dict(loss_params or {}), cfg.model, cfg.training)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (stored in checkpoints; a resume must find the same spec)."""
        return {"loss": self.loss, "seed": self.seed, "loss_params": dict(self.loss_params),
                "model": self.model.model_dump(mode="json"),
                "training": self.training.model_dump(mode="json")}


@dataclass
class TrainResult:
    iterations: int
    best_metric: float
    best_iteration: int
    best_state: dict[str, torch.Tensor]
    history: list[dict[str, float]]
    params_digest: str = ""
    """Hash of the final weights: equal on every rank of a data-parallel run."""
    patch_digest: str = ""
    """Hash of the training patches this process drew (its rank's sampling stream)."""
    init_report: str | None = None
    """Matched / missing keys of the initial weights (None: trained from scratch)."""


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """Hash of a state dict's tensors (names, dtypes, shapes and values)."""
    h = hashlib.blake2b(digest_size=16)
    for key, value in state.items():
        t = value.detach().to("cpu").contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    # Deterministic kernels where cuDNN offers a choice (same seed -> same run on one GPU).
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def case_image(case: AnyCase) -> torch.Tensor:
    """The network input of a whole case: MSSEG-2 [baseline, follow-up, follow-up - baseline],
    other datasets their channels."""
    if not isinstance(case, PreprocessedCase):
        return torch.from_numpy(case.network_input().copy())
    base = torch.tensor(np.asarray(case.baseline), dtype=torch.float32)
    follow = torch.tensor(np.asarray(case.followup), dtype=torch.float32)
    return torch.stack([base, follow, follow - base])


def patch_edge(training: TrainingConfig) -> int:
    sizes = set(training.patch_size)
    if len(sizes) != 1:
        raise ValueError(f"training.patch_size must be a cube for sliding-window inference, "
                         f"got {training.patch_size}")
    return sizes.pop()


def model_kwargs(model: ModelConfig, dataset: DatasetInfo) -> dict[str, Any]:
    """The V-Net's keyword arguments for ``dataset``: its channels in, its classes or regions
    out (MSSEG-2: the defaults, 3 in, 1 out)."""
    kwargs = model.vnet_kwargs()
    if dataset.format != "msseg2":
        kwargs.update(in_channels=dataset.in_channels, out_channels=dataset.out_channels)
    return kwargs


def loss_activation(training: TrainingConfig, dataset: DatasetInfo) -> str:
    """training.loss_activation, with ``auto`` resolved from the dataset."""
    act = training.loss_activation
    act = dataset.default_activation if act == "auto" else act
    if act == "softmax" and dataset.kind != "labels":
        raise ValueError(f"training.loss_activation softmax needs mutually exclusive classes; "
                         f"this dataset's outputs are {dataset.kind} (use sigmoid)")
    return act


def build_loss(spec: RunSpec, dataset: DatasetInfo) -> nn.Module:
    """The run's loss, reading the outputs as the dataset asks (:func:`loss_activation`)."""
    kwargs: dict[str, Any] = {"backend": spec.training.backend, **spec.loss_params}
    if loss_activation(spec.training, dataset) == "softmax":  # every loss has a softmax form
        kwargs["activation"] = "softmax"
        if spec.training.include_background is not None:  # a softmax setting only
            kwargs["include_background"] = spec.training.include_background
    return get_loss(spec.loss, **kwargs)


@functools.lru_cache(maxsize=8)
def _region_table(regions: tuple[tuple[int, ...], ...], device: torch.device) -> torch.Tensor:
    """bool (256, R): whether label value v belongs to region r (built once per device, not
    per training step)."""
    table = torch.zeros(256, len(regions), dtype=torch.bool)
    for r, values in enumerate(regions):
        table[list(values), r] = True
    return table.to(device)


def loss_target(mask: torch.Tensor, dataset: DatasetInfo, activation: str) -> torch.Tensor:
    """The loss's target from a batch of label-map patches (B, 1, *spatial): MSSEG-2 the
    0/1 mask itself; regions one 0/1 channel per region; classes under softmax the label map
    (integers), under sigmoid one 0/1 channel per class."""
    if dataset.kind == "binary":
        return mask
    labels = mask.to(torch.long)
    if dataset.kind == "regions":  # a (256, R) lookup from label value to region channels
        member = _region_table(dataset.region_values, labels.device)[labels[:, 0]]
        return member.movedim(-1, 1).float()
    if activation == "softmax":
        return labels
    return torch.cat([labels == c for c in range(dataset.out_channels)], dim=1).float()


def hard_prediction(probs: torch.Tensor, dataset: DatasetInfo,
                    activation: str = "softmax") -> np.ndarray:
    """The prediction on the preprocessed grid: MSSEG-2 a bool mask; classes a uint8 label map
    (softmax: the most probable class; sigmoid: the most probable foreground class where its
    probability is above 0.5, else background, since one-vs-rest sigmoids need not sum to 1);
    regions uint8 (R, *spatial) masks (probability > 0.5)."""
    if dataset.kind == "binary":
        return (probs[0] > 0.5).numpy()
    if dataset.kind == "labels":
        if activation == "softmax":
            return probs.argmax(dim=0).to(torch.uint8).numpy()
        best, cls = probs[1:].max(dim=0)
        return torch.where(best > 0.5, cls + 1, 0).to(torch.uint8).numpy()
    return (probs > 0.5).to(torch.uint8).numpy()


def class_masks(labels: np.ndarray, selector: Any, dataset: DatasetInfo,
                *, is_prediction: bool, index: int = 0) -> np.ndarray:
    """bool mask of one class or region: of a label map (ground truth, class predictions) or of
    a region prediction (R, *spatial)."""
    if dataset.kind == "regions" and is_prediction:
        return np.asarray(labels[index], dtype=bool)
    if isinstance(selector, tuple):
        return np.isin(labels, selector)
    return np.asarray(labels) == selector


def validation_scores(pred: np.ndarray, case: PreprocessedCase) -> dict[str, float]:
    """Per-case validation numbers on the preprocessed grid.

    ``dice`` counts an empty prediction of an empty ground truth as 1 (a perfect answer), so
    the selection metric stays defined on patients without new lesions.
    """
    gt = np.asarray(case.mask, dtype=bool)
    if not gt.any() and not pred.any():
        dice = 1.0
    else:
        dice = metrics.dice(pred, gt)
    f1 = metrics.lesion_f1(pred, gt, spacing=case.meta.spacing).f1 if gt.any() else math.nan
    return {"dice": dice, "lesion_f1": f1, "pred_voxels": float(pred.sum())}


def multiclass_scores(pred: np.ndarray, case: AnyCase, dataset: DatasetInfo) -> dict[str, float]:
    """Validation numbers of a case of several classes or regions: ``dice`` is the mean over
    the foreground classes (an empty prediction of an empty class counts 1), ``lesion_f1``
    the mean over the classes present, ``pred_voxels`` any foreground."""
    gt = np.asarray(case.mask)
    dices, f1s, fg = [], [], np.zeros(gt.shape, bool)
    for i, (_, sel) in enumerate(dataset.classes):
        p = class_masks(pred, sel, dataset, is_prediction=True, index=i)
        g = class_masks(gt, sel, dataset, is_prediction=False)
        fg |= p
        dices.append(1.0 if not g.any() and not p.any() else metrics.dice(p, g))
        if g.any():
            f1s.append(metrics.lesion_f1(p, g, spacing=case.meta.spacing).f1)
    return {"dice": float(np.mean(dices)),
            "lesion_f1": float(np.mean(f1s)) if f1s else math.nan,
            "pred_voxels": float(fg.sum())}


@torch.no_grad()
def validate(model: nn.Module, cases: list[AnyCase], training: TrainingConfig,
             device: torch.device, activation: str = "sigmoid",
             dataset: DatasetInfo = MSSEG2) -> dict[str, float]:
    """Mean validation scores over ``cases`` (sharded over ranks when distributed) of the
    predictions :func:`hard_prediction` makes. Datasets of several classes or regions score
    the mean over their foreground classes."""
    rank, world = _world()
    patch = patch_edge(training)
    mine = []
    for case in cases[rank::world]:
        probs = sliding_window_predict(model, case_image(case), patch=patch,
                                       overlap=training.val_patch_overlap, activation=activation)
        pred = hard_prediction(probs, dataset, activation)
        mine.append(validation_scores(pred, case) if dataset.kind == "binary"
                    else multiclass_scores(pred, case, dataset))
    rows = mine
    if world > 1:
        gathered: list[list[dict[str, float]]] = [[] for _ in range(world)]
        dist.all_gather_object(gathered, mine)
        rows = [r for part in gathered for r in part]
    with np.errstate(all="ignore"):
        dice = float(np.mean([r["dice"] for r in rows]))
        f1s = [r["lesion_f1"] for r in rows if not math.isnan(r["lesion_f1"])]
    return {"val_dice": dice, "val_lesion_f1": float(np.mean(f1s)) if f1s else math.nan,
            "val_pred_voxels": float(np.mean([r["pred_voxels"] for r in rows]))}


def _finite_everywhere(loss: torch.Tensor, world: int) -> bool:
    """Whether the loss is finite on every rank: all ranks must stop together, or the others
    would wait forever in the backward's all-reduce."""
    ok = torch.isfinite(loss.detach()).to(torch.int32).reshape(1)
    if world > 1:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def _sync_buffers(model: nn.Module, world: int) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics). Each rank's forward
    updates them from its own patches and DDP only broadcasts them at the next forward, so
    without this the ranks would validate, and evaluate, different models."""
    if world > 1:
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def _to_cpu(obj: Any) -> Any:
    """Tensors of a (nested) state, a model's or Adam's, copied to the CPU for a checkpoint."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def train_loop(spec: RunSpec, data: PreparedData, device: torch.device | str, *,
               resume: dict[str, Any] | None = None, report: Reporter | None = None,
               wrap_model: Callable[[nn.Module], nn.Module] | None = None,
               progress: bool = False,
               init: str | os.PathLike[str] | Mapping[str, Any] | None = None) -> TrainResult:
    """Train ``spec`` on ``data.part("train")``, validating on ``data.part("val")``.

    Adam, a fixed number of iterations of ``batch_size`` patches (lesion-centred when the case
    has new lesions, as in the paper). Patches of iteration ``i`` on rank ``r`` come from a
    generator seeded with ``(seed, r, i)``, so a resumed run draws what the uninterrupted run
    would have. Every ``eval_every`` iterations (and at the end) validation metrics go to
    ``report`` with, every ``checkpoint_every`` iterations, a checkpoint payload (for rank 0;
    other ranks get None). ``resume``: a payload from an earlier report. ``wrap_model``: e.g.
    ``ray.train.torch.prepare_model``; default DDP when a process group is initialised.
    ``init``: initial weights (a file or a state-dict mapping, see :func:`load_pretrained`)
    for a run that is not resumed; the optimizer starts fresh either way.
    """
    device = torch.device(device)
    training = spec.training
    rank, world = _world()
    seed_everything(spec.seed)
    # Same seed -> same initial weights on all ranks.
    dataset = data.dataset
    model = build_model(model_kwargs(spec.model, dataset)).to(device)
    init_report = None
    if init is not None and resume is None:
        loaded = load_pretrained(model, init)
        if not loaded.matched:
            raise ValueError(f"{loaded.source}: no key of this checkpoint fits the V-Net "
                             f"(model {spec.model.vnet_kwargs()}):\n{loaded}")
        init_report = str(loaded)
    torch.manual_seed(spec.seed + 7919 * rank)  # then per-rank streams (dropout masks)
    loss_fn = build_loss(spec, dataset)
    # Validation reads the outputs the way the loss trained them (sigmoid or softmax).
    activation = getattr(loss_fn, "activation", "sigmoid")
    optimizer = torch.optim.Adam(model.parameters(), lr=training.lr)
    start, best_metric, best_iteration, best_state, history = 0, -math.inf, 0, None, []
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        start, history = int(resume["iteration"]), list(resume["history"])
        best_metric, best_iteration = float(resume["best_metric"]), int(resume["best_iteration"])
        best_state = resume["best_state"]
        torch.set_rng_state(resume["torch_rng"])
        if device.type == "cuda" and resume.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(resume["cuda_rng"], device)
    if wrap_model is not None:
        net = wrap_model(model)
    elif world > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    else:
        net = model
    train_cases, val_cases = data.part("train"), data.part("val")
    sampler = PatchSampler(train_cases, PatchConfig(patch_size=training.patch_size))
    amp = training.amp and device.type in ("cuda", "cpu")
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=training.iterations, initial=start, desc=f"{spec.loss} s{spec.seed}",
                   unit="it", dynamic_ncols=True)
    losses: list[float] = []
    patches = hashlib.blake2b(digest_size=16)
    for it in range(start, training.iterations):
        net.train()
        rng = np.random.default_rng([spec.seed, rank, it])
        pairs = [sampler.sample(rng) for _ in range(training.batch_size)]
        image = torch.from_numpy(np.stack([p[0] for p in pairs]))
        patches.update(image.numpy())  # hashed in place, no copy
        image = image.to(device)
        mask = loss_target(torch.from_numpy(np.stack([p[1] for p in pairs])).to(device),
                           dataset, activation)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = net(image)
        loss = loss_fn(logits.float(), mask)  # losses in fp32 even under AMP
        if not _finite_everywhere(loss, world):
            where = f"; rank {rank} of {world}, all ranks stop" if world > 1 else ""
            raise FloatingPointError(f"loss {spec.loss!r} is {loss.item()} at iteration "
                                     f"{it + 1} (seed {spec.seed}{where}); a non-finite loss "
                                     "on any rank stops this run")
        optimizer.zero_grad(set_to_none=True)
        # oneDNN's bf16 Conv3d backward on the CPU (torch 2.13) intermittently returns
        # non-finite weight gradients for the deepest, 2-voxel-wide layers; the native kernels
        # (chosen when the backward runs) do not.
        with torch.backends.mkldnn.flags(enabled=not (amp and device.type == "cpu")):
            loss.backward()
        optimizer.step()
        losses.append(loss.item())
        done = it + 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if done % training.eval_every and done != training.iterations:
            continue
        _sync_buffers(model, world)
        scores = validate(model, val_cases, training, device, activation, dataset)
        row = {"iteration": done, "train_loss": float(np.mean(losses)), **scores}
        losses = []
        if scores["val_dice"] > best_metric or best_state is None:
            best_metric, best_iteration = scores["val_dice"], done
            best_state = _to_cpu(model.state_dict())
        row["best_val_dice"] = best_metric
        history.append(row)
        if bar is not None:
            bar.set_postfix(loss=f"{row['train_loss']:.4f}", val_dice=f"{row['val_dice']:.3f}")
        payload = None
        if rank == 0 and (done % training.checkpoint_every == 0 or done == training.iterations):
            payload = {"model": _to_cpu(model.state_dict()),
                       "optimizer": _to_cpu(optimizer.state_dict()),
                       "iteration": done, "best_state": best_state, "best_metric": best_metric,
                       "best_iteration": best_iteration, "history": list(history),
                       "torch_rng": torch.get_rng_state(),
                       "cuda_rng": (torch.cuda.get_rng_state(device)
                                    if device.type == "cuda" else None),
                       "spec": spec.to_dict(), **dataset.checkpoint_entry()}
        if report is not None:
            report(row, payload)
    if bar is not None:
        bar.close()
    if best_state is None:  # resumed from a finished run
        best_state = _to_cpu(model.state_dict())
    return TrainResult(training.iterations, best_metric, best_iteration, best_state, history,
                       state_digest(model.state_dict()), patches.hexdigest(), init_report)
