"""Sliding-window inference over whole volumes (CoactSeg/HyTver protocol: 80-cubed windows,
probabilities averaged where windows overlap, threshold 0.5), on MONAI's
``sliding_window_inference``."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from torch import nn

from ..losses._inputs import check_activation


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def sliding_window_probabilities(model: nn.Module, image: torch.Tensor, patch: int = 80,
                                 overlap: float = 0.75, batch_size: int = 4) -> torch.Tensor:
    """Foreground probabilities (the sigmoid of output channel 0) of ``model`` over ``image``
    (C, D, H, W) -> (D, H, W), float32 on the CPU; see :func:`sliding_window_predict`."""
    return sliding_window_predict(model, image, patch, overlap, batch_size, channels=1)[0]


@torch.no_grad()
def sliding_window_predict(model: nn.Module, image: torch.Tensor, patch: int = 80,
                           overlap: float = 0.75, batch_size: int = 4, *,
                           activation: str = "sigmoid",
                           channels: int | None = None) -> torch.Tensor:
    """Probabilities of ``model`` over ``image`` (C, D, H, W) -> (K, D, H, W), float32 on the
    CPU: the sigmoid of each output channel, or the softmax over them (``activation``);
    ``channels`` keeps only the first ones (sigmoid only).

    Windows of ``patch`` voxels per axis step by ``max(1, int(patch * (1 - overlap)))`` (MONAI's
    rule; CoactSeg: patch 80, overlap 0.75, stride 20), the last window of an axis moved back to
    end at the volume's edge; sigmoid probabilities are averaged uniformly where windows
    overlap (MONAI ``mode="constant"``). A volume shorter than a window on some axis is
    zero-padded at its end on that axis (not on both sides, as MONAI would: the voxels keep
    their position inside the window, as in the training patches), then cropped back.

    The model runs in eval mode (batch norm with running statistics, no dropout; every module's
    previous mode is restored afterwards) on its own device, and must map
    ``(B, C, patch, patch, patch)`` to ``(B, K, patch, patch, patch)`` logits. A model without
    parameters runs on ``image``'s device.
    """
    check_activation(activation)
    if channels is not None and activation != "sigmoid":
        raise ValueError("channels selects sigmoid outputs only; softmax needs every class")
    if image.dim() != 4:
        raise ValueError(f"image must be (C, D, H, W), got shape {tuple(image.shape)}")
    if not (isinstance(overlap, (int, float)) and 0.0 <= overlap < 1.0):
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    patch = _positive_int("patch", patch)
    batch_size = _positive_int("batch_size", batch_size)
    spatial = tuple(image.shape[1:])
    pad = [max(patch - s, 0) for s in spatial]
    if any(pad):
        image = F.pad(image, [p for d in reversed(pad) for p in (0, d)])  # last axis first
    param = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = param.device if param is not None else image.device

    def predictor(windows: torch.Tensor) -> torch.Tensor:
        logits = model(windows)
        expected = (windows.shape[0], patch, patch, patch)
        if (logits.dim() != 5 or logits.shape[1] < 1
                or (logits.shape[0], *logits.shape[2:]) != expected):
            raise ValueError(f"model output must be (B, K, {patch}, {patch}, {patch}) for "
                             f"{windows.shape[0]} windows, got {tuple(logits.shape)}")
        if activation == "softmax":
            if logits.shape[1] < 2:
                raise ValueError(f"softmax needs at least 2 output channels, got "
                                 f"{logits.shape[1]}")
            return torch.softmax(logits.float(), dim=1)  # average probabilities, not logits
        return torch.sigmoid(logits[:, :channels].float())

    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        out = sliding_window_inference(
            image[None].to(device), roi_size=(patch,) * 3, sw_batch_size=batch_size,
            predictor=predictor, overlap=float(overlap), mode="constant",
            padding_mode="constant", sw_device=device, device=device, progress=False)
    finally:
        for m, training in modes:  # per module: a partly frozen model keeps its mix
            m.training = training
    probs = out[0, :, :spatial[0], :spatial[1], :spatial[2]]
    return probs.float().cpu().as_subclass(torch.Tensor)
