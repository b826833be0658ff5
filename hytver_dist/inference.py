"""Sliding-window inference over whole volumes (CoactSeg/HyTver protocol: 80-cubed windows,
probabilities averaged where windows overlap, threshold 0.5)."""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn


def window_starts(size: int, patch: int, stride: int) -> list[int]:
    """Start offsets covering [0, size) with windows of ``patch``; the last one ends at size.

    Starts step by ``stride`` (1 <= stride <= patch, else some voxels would be skipped), the
    last one moved back to ``size - patch``. ``size <= patch`` gives ``[0]`` (one window, to be
    padded by the caller).
    """
    for name, value in (("size", size), ("patch", patch), ("stride", stride)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if stride > patch:
        raise ValueError(f"stride {stride} > patch {patch} would leave voxels uncovered")
    if size <= patch:
        return [0]
    n = math.ceil((size - patch) / stride) + 1
    return sorted({min(i * stride, size - patch) for i in range(n)})


@torch.no_grad()
def sliding_window_probabilities(model: nn.Module, image: torch.Tensor, patch: int = 80,
                                 overlap: float = 0.75, batch_size: int = 4) -> torch.Tensor:
    """Foreground probabilities of ``model`` over ``image`` (C, D, H, W) -> (D, H, W), float32.

    Windows of ``patch`` voxels per axis step by ``patch * (1 - overlap)`` (CoactSeg: patch 80,
    stride 20, i.e. overlap 0.75); sigmoid probabilities are averaged uniformly where windows
    overlap. Volumes smaller than a window are zero-padded, then cropped back.

    The model runs in eval mode (batch norm with running statistics, no dropout; its previous
    mode is restored afterwards) and must map ``(B, C, patch, patch, patch)`` to
    ``(B, K, patch, patch, patch)`` logits; channel 0 is the foreground logit. A model without
    parameters runs on ``image``'s device.
    """
    if image.dim() != 4:
        raise ValueError(f"image must be (C, D, H, W), got shape {tuple(image.shape)}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    for name, value in (("patch", patch), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    spatial = tuple(image.shape[1:])
    pad = [max(patch - s, 0) for s in spatial]
    if any(pad):
        # F.pad takes the last axis first.
        image = F.pad(image, [p for d in reversed(pad) for p in (0, d)])
    padded = tuple(image.shape[1:])
    stride = max(1, int(round(patch * (1 - overlap))))
    starts = list(itertools.product(*(window_starts(s, patch, stride) for s in padded)))
    param = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = param.device if param is not None else image.device
    total = torch.zeros(padded, dtype=torch.float32, device=device)
    count = torch.zeros(padded, dtype=torch.float32, device=device)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        for i in range(0, len(starts), batch_size):
            chunk = starts[i:i + batch_size]
            windows = torch.stack([image[:, z:z + patch, y:y + patch, x:x + patch]
                                   for z, y, x in chunk]).to(device)
            logits = model(windows)
            expected = (len(chunk), patch, patch, patch)
            if (logits.dim() != 5 or logits.shape[1] < 1
                    or (logits.shape[0], *logits.shape[2:]) != expected):
                raise ValueError(f"model output must be (B, K, {patch}, {patch}, {patch}) for "
                                 f"{len(chunk)} windows, got {tuple(logits.shape)}")
            probs = torch.sigmoid(logits.float())[:, 0]
            for (z, y, x), prob in zip(chunk, probs, strict=True):
                total[z:z + patch, y:y + patch, x:x + patch] += prob
                count[z:z + patch, y:y + patch, x:x + patch] += 1
    finally:
        for m, training in modes:  # per module: a partly frozen model keeps its mix
            m.training = training
    out = total / count
    return out[:spatial[0], :spatial[1], :spatial[2]].cpu()
