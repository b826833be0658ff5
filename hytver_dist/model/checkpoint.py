"""Load (CoactSeg-style) checkpoints into a :class:`~hytver_dist.model.vnet.VNet` with a report."""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..files import write_bytes

#: Keys under which training scripts nest the weights (CoactSeg saves a raw state_dict).
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")
#: Prefixes added by DistributedDataParallel/DataParallel and by torch.compile.
_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did, key by key.

    ``matched``: loaded as is; ``mapped``: loaded after converting a 2-class softmax head to one
    logit (included in ``matched``); ``missing``: model keys absent from the checkpoint (left at
    their current values); ``unexpected``: checkpoint keys the model lacks (ignored);
    ``shape_mismatched``: ``(key, checkpoint shape, model shape)``, not loaded.
    """

    source: str
    matched: list[str] = field(default_factory=list)
    mapped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(
        default_factory=list
    )
    stripped_prefixes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every model key was loaded and nothing was left over."""
        return not (self.missing or self.unexpected or self.shape_mismatched)

    def __str__(self) -> str:
        lines = [
            f"load_pretrained({self.source}): {len(self.matched)} matched "
            f"({len(self.mapped)} mapped), {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.shape_mismatched)} shape-mismatched"
        ]
        if self.stripped_prefixes:
            lines.append(f"  stripped prefixes: {', '.join(self.stripped_prefixes)}")
        for title, keys in (("mapped", self.mapped), ("missing", self.missing),
                            ("unexpected", self.unexpected)):
            if keys:
                lines.append(f"  {title}: {', '.join(keys)}")
        for key, ckpt_shape, model_shape in self.shape_mismatched:
            lines.append(f"  shape mismatch: {key} checkpoint {ckpt_shape} vs model {model_shape}")
        return "\n".join(lines)


def _unwrap(obj: object) -> Mapping[str, object]:
    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    return obj


def _strip(state: Mapping[str, object], report: LoadReport) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue  # e.g. epoch counters stored next to tensors
        stripped = True
        while stripped:
            stripped = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix):]
                    stripped = True
                    if prefix not in report.stripped_prefixes:
                        report.stripped_prefixes.append(prefix)
        out[key] = value
    return out


def _softmax_to_logit(t: torch.Tensor) -> torch.Tensor:
    # softmax([z0, z1])[1] == sigmoid(z1 - z0) and z is linear in (w, b): exact conversion.
    return t[1:2] - t[0:1]


def load_pretrained(
    model: nn.Module,
    path: str | os.PathLike[str] | Mapping[str, object],
    strict: bool = False,
) -> LoadReport:
    """Load weights from ``path`` into ``model`` and report matched/missing/unexpected keys.

    ``path`` is a ``torch.save`` file (read by :func:`load_weights_only`: a pickled object is
    refused with :class:`CheckpointError`) or an in-memory mapping. Accepted layouts: a raw
    state dict, or a dict holding it under ``"state_dict"``, ``"model"``, ``"model_state_dict"``
    or ``"net"``. ``"module."`` (DDP) and ``"_orig_mod."`` (``torch.compile``) prefixes are
    stripped.

    Head mapping: when the model has one output channel and the checkpoint's final 1x1x1 conv
    (same key, see ``VNet.output_keys``) has two, the two-class softmax head is converted
    exactly to one logit, ``w = w[1] - w[0]``, ``b = b[1] - b[0]``. Only the same-named head is
    mapped: CoactSeg's ``decoder.out_conv_3`` maps onto ``head="coactseg"``; for
    ``head="single"`` CoactSeg's head keys are reported as unexpected and ours as missing
    (different input features, no faithful mapping). ReLU vs LeakyReLU changes no key.

    Args:
        model: the model to fill in place.
        path: checkpoint file or mapping.
        strict: if True, raise ``RuntimeError`` (model untouched) unless ``report.ok``.

    Returns:
        A :class:`LoadReport`.
    """
    if isinstance(path, Mapping):
        source, raw = "<mapping>", path
    else:
        source = os.fspath(path)
        raw = load_weights_only(source)
    report = LoadReport(source=source)
    ckpt = _strip(_unwrap(raw), report)
    target = model.state_dict()
    head_keys = set(getattr(model, "output_keys", ()))

    to_load: dict[str, torch.Tensor] = {}
    for key, value in ckpt.items():
        if key not in target:
            report.unexpected.append(key)
            continue
        want = tuple(target[key].shape)
        if tuple(value.shape) == want:
            to_load[key] = value
            report.matched.append(key)
        elif key in head_keys and value.shape[0] == 2 and want[0] == 1 \
                and tuple(value.shape[1:]) == want[1:]:
            to_load[key] = _softmax_to_logit(value)
            report.matched.append(key)
            report.mapped.append(key)
        else:
            report.shape_mismatched.append((key, tuple(value.shape), want))
    report.missing = [k for k in target if k not in ckpt]

    if strict and not report.ok:
        raise RuntimeError(f"strict load failed, model left unchanged:\n{report}")
    model.load_state_dict(to_load, strict=False)
    return report


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely (or at all); the message names the file."""


def load_weights_only(source: str, data: bytes | None = None) -> Any:
    """``torch.load`` of the file ``source`` (or of its bytes ``data``) with
    ``weights_only=True``, every failure a :class:`CheckpointError` naming ``source``.

    Checkpoints and weights live on shared storage that several people write, and unpickling
    an arbitrary object runs code, so only tensors and plain types (dicts, lists, numbers,
    strings) load; a file holding anything else is refused.
    """
    try:
        return torch.load(source if data is None else io.BytesIO(data), map_location="cpu",
                          weights_only=True)
    except pickle.UnpicklingError as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{source}: refused: the checkpoint holds a pickled object "
                              f"that is not a tensor or plain type, and loading it could run "
                              f"code ({why})") from None
    except (OSError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"{source}: unreadable checkpoint ({exc})") from None


def load_checkpoint(path: str | os.PathLike[str], data: bytes | None = None) -> dict[str, Any]:
    """A training checkpoint (``checkpoint.pt``, ``best_model.pt``) as a dict, loaded by
    :func:`load_weights_only` from the file or its bytes ``data`` (a pickled object is refused
    with :class:`CheckpointError`)."""
    source = os.fspath(path)
    payload = load_weights_only(source, data)
    if not isinstance(payload, dict):
        raise CheckpointError(f"{source}: expected a dict, got {type(payload).__name__}")
    return payload


def save_atomic(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` that never leaves half a file: written under a temporary name, then
    renamed (a local path or a URI, see :mod:`hytver_dist.files`)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(os.fspath(path), buf.getvalue())
