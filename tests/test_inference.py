"""Sliding-window inference: window placement, exact averages, padding, MONAI parity, errors.

Three oracles: a brute-force loop written here (every window, zero padding at the end, uniform
average of sigmoid probabilities), models computing a known function (a constant, the input
channel, a fixed per-window pattern), and MONAI's ``sliding_window_inference`` called directly
(mode="constant") where the two agree: every axis at least one patch long (MONAI alone pads
symmetrically, this module pads at the end).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hytver_dist.run.inference import (
    sliding_window_predict,
    sliding_window_probabilities,
)


def _starts(size: int, patch: int, stride: int) -> list[int]:
    """Independent window placement: every multiple of stride that fits, plus size - patch."""
    if size <= patch:
        return [0]
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def _brute_force(model: nn.Module, image: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """One window at a time, float64 accumulation, zero padding at the high end of each axis."""
    spatial = image.shape[1:]
    pad = [max(patch - s, 0) for s in spatial]
    padded = F.pad(image, [0, pad[2], 0, pad[1], 0, pad[0]])
    size = padded.shape[1:]
    total = torch.zeros(size, dtype=torch.float64)
    count = torch.zeros(size, dtype=torch.float64)
    with torch.no_grad():
        for z, y, x in itertools.product(*(_starts(s, patch, stride) for s in size)):
            window = padded[None, :, z:z + patch, y:y + patch, x:x + patch]
            total[z:z + patch, y:y + patch, x:x + patch] += torch.sigmoid(model(window)[0, 0])
            count[z:z + patch, y:y + patch, x:x + patch] += 1
    assert bool((count > 0).all())
    return (total / count)[:spatial[0], :spatial[1], :spatial[2]].float()


def _conv_model(in_channels: int = 2, seed: int = 0) -> nn.Module:
    """Two 3x3x3 convs with zero padding: the output depends on where the window's edges are."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv3d(in_channels, 4, 3, padding=1), nn.Tanh(), nn.Conv3d(4, 2, 3, padding=1),
    ).eval()


class Constant(nn.Module):
    """No parameters: logit ``value`` everywhere, one channel."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x[:, :1], self.value)


class FirstChannel(nn.Module):
    """No parameters: the input's channel 0 is the logit (a pointwise model)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1].clone()


class LocalPattern(nn.Module):
    """Logit = input channel 0 + a fixed pattern of the position inside the window."""

    def __init__(self, patch: int) -> None:
        super().__init__()
        z, y, x = torch.meshgrid(*(torch.arange(patch, dtype=torch.float32),) * 3, indexing="ij")
        self.register_buffer("pattern", (z - 2 * y + 0.5 * x) / patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] + self.pattern


# ------------------------------------------------------------------- exact known functions


@pytest.mark.parametrize("shape", [(1, 9, 9, 9), (2, 5, 11, 17), (1, 3, 3, 3), (1, 23, 8, 30)])
def test_constant_model_gives_its_sigmoid_everywhere(shape: tuple[int, ...]) -> None:
    # Also a model without parameters: runs on the image's device.
    out = sliding_window_probabilities(Constant(0.7), torch.randn(shape), patch=8, overlap=0.5)
    assert out.shape == shape[1:]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.full(shape[1:], torch.sigmoid(torch.tensor(0.7)).item()))


@pytest.mark.parametrize("shape", [(1, 9, 9, 9), (3, 5, 11, 17), (1, 3, 3, 3), (2, 23, 8, 30)])
@pytest.mark.parametrize("overlap", [0.0, 0.5, 0.75])
def test_pointwise_model_gives_sigmoid_of_input(shape: tuple[int, ...], overlap: float) -> None:
    torch.manual_seed(1)
    image = torch.randn(shape) * 3
    out = sliding_window_probabilities(FirstChannel(), image, patch=8, overlap=overlap,
                                       batch_size=3)
    torch.testing.assert_close(out, torch.sigmoid(image[0]), rtol=0, atol=1e-6)


def test_local_pattern_average_by_hand_1d() -> None:
    # One axis longer than the patch: voxel v is seen by the windows starting at 0, 4, 8, 10
    # (patch 6, stride 3 -> overlap 0.5 gives 3): the average of sigmoid(pattern[v - start]).
    patch, size = 6, 16
    model = LocalPattern(patch)
    image = torch.zeros(1, size, patch, patch)
    out = sliding_window_probabilities(model, image, patch=patch, overlap=0.5)
    starts = [0, 3, 6, 9, 10]
    assert _starts(size, patch, 3) == starts
    expected = torch.zeros(size, patch, patch, dtype=torch.float64)
    for v in range(size):
        probs = [torch.sigmoid(model.pattern[v - s].double()) for s in starts if s <= v < s + patch]
        expected[v] = torch.stack(probs).mean(0)
    torch.testing.assert_close(out, expected.float(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 14, 9, 8), (1, 5, 11, 3), (2, 20, 17, 13)])
def test_local_pattern_matches_brute_force(shape: tuple[int, ...]) -> None:
    torch.manual_seed(2)
    image, model = torch.randn(shape), LocalPattern(8)
    out = sliding_window_probabilities(model, image, patch=8, overlap=0.75, batch_size=5)
    torch.testing.assert_close(out, _brute_force(model, image, 8, 2), rtol=0, atol=1e-6)


# ------------------------------------------------------------------- conv models, padding


@pytest.mark.parametrize("shape", [
    (2, 5, 7, 3),     # smaller than the patch on every axis: one padded window
    (2, 5, 11, 17),   # smaller on one axis, larger (odd) on the others
    (2, 13, 8, 9),    # larger, equal, larger
    (2, 21, 19, 15),  # larger everywhere, odd sizes
])
@pytest.mark.parametrize("overlap,stride", [(0.5, 4), (0.75, 2), (0.0, 8), (0.3, 5)])
def test_conv_model_matches_brute_force(shape: tuple[int, ...], overlap: float,
                                        stride: int) -> None:
    torch.manual_seed(3)
    image, model = torch.randn(shape), _conv_model()
    out = sliding_window_probabilities(model, image, patch=8, overlap=overlap, batch_size=4)
    assert out.shape == shape[1:]
    torch.testing.assert_close(out, _brute_force(model, image, 8, stride), rtol=0, atol=2e-6)


def test_one_window_equals_one_forward() -> None:
    torch.manual_seed(4)
    image, model = torch.randn(2, 8, 8, 8), _conv_model()
    out = sliding_window_probabilities(model, image, patch=8, overlap=0.75)
    with torch.no_grad():
        expected = torch.sigmoid(model(image[None]))[0, 0]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-7)


def test_one_padded_window_equals_zero_padded_forward() -> None:
    torch.manual_seed(5)
    image, model = torch.randn(2, 3, 6, 5), _conv_model()
    out = sliding_window_probabilities(model, image, patch=8, overlap=0.75)
    padded = F.pad(image, [0, 3, 0, 2, 0, 5])  # zeros after the volume on each axis
    with torch.no_grad():
        expected = torch.sigmoid(model(padded[None]))[0, 0, :3, :6, :5]
    assert out.shape == (3, 6, 5)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-7)


def test_non_overlapping_tiles_equal_their_own_forward() -> None:
    torch.manual_seed(6)
    image, model = torch.randn(2, 16, 8, 24), _conv_model()
    out = sliding_window_probabilities(model, image, patch=8, overlap=0.0)
    with torch.no_grad():
        for z, x in itertools.product((0, 8), (0, 8, 16)):
            tile = torch.sigmoid(model(image[None, :, z:z + 8, :, x:x + 8]))[0, 0]
            # 1e-6: a batch of 6 windows vs one window may differ by an ulp in the convs.
            torch.testing.assert_close(out[z:z + 8, :, x:x + 8], tile, rtol=0, atol=1e-6)


def test_batch_size_does_not_change_the_result() -> None:
    torch.manual_seed(7)
    image, model = torch.randn(2, 15, 13, 11), _conv_model()
    outs = [sliding_window_probabilities(model, image, patch=8, overlap=0.5, batch_size=b)
            for b in (1, 2, 7, 1000)]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=0, atol=1e-6)


class CountWindows(nn.Module):
    """No parameters: logit 0, and counts the windows it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.windows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.windows += x.shape[0]
        return torch.zeros_like(x[:, :1])


@pytest.mark.parametrize("shape,patch,overlap,stride", [
    ((100, 90, 81), 80, 0.75, 20),  # CoactSeg: stride 20
    ((9, 9, 9), 8, 0.99, 1),        # a stride below one voxel becomes 1
    ((17, 8, 30), 8, 0.3, 5),       # int(5.6): MONAI rounds down
])
def test_stride_is_int_of_patch_times_one_minus_overlap(shape, patch, overlap, stride) -> None:
    model = CountWindows()
    sliding_window_probabilities(model, torch.zeros(1, *shape), patch=patch, overlap=overlap,
                                 batch_size=64)
    assert model.windows == math.prod(len(_starts(s, patch, stride)) for s in shape)


def test_tiny_vnet_matches_brute_force() -> None:
    from hytver_dist.model import VNet

    torch.manual_seed(8)
    model = VNet(in_channels=3, n_filters=2).eval()
    image = torch.randn(3, 20, 16, 9)
    out = sliding_window_probabilities(model, image, patch=16, overlap=0.75, batch_size=2)
    torch.testing.assert_close(out, _brute_force(model, image, 16, 4), rtol=0, atol=2e-6)


# --------------------------------------------------------------------------- MONAI parity


@pytest.mark.parametrize("shape,patch,overlap", [
    ((2, 12, 12, 12), 8, 0.5),     # stride 4, windows at 0, 4
    ((2, 21, 19, 15), 8, 0.5),     # odd sizes: last windows moved back to fit
    ((2, 21, 8, 15), 8, 0.75),     # one axis exactly one patch
    ((2, 17, 23, 11), 8, 0.6),     # stride int(3.2) = 3
    ((2, 16, 16, 16), 8, 0.0),     # non-overlapping tiles
    ((2, 26, 18, 20), 10, 0.3),    # stride 7 (10 * 0.7 = 7.000000000000001)
])
@pytest.mark.parametrize("sw_batch_size", [1, 4])
def test_matches_monai_constant_mode(shape: tuple[int, ...], patch: int, overlap: float,
                                     sw_batch_size: int) -> None:
    from monai.inferers import sliding_window_inference

    torch.manual_seed(9)
    image, model = torch.randn(shape), _conv_model()

    def predictor(x: torch.Tensor) -> torch.Tensor:
        # MONAI averages whatever the predictor returns: give it the probabilities.
        return torch.sigmoid(model(x))[:, :1]

    with torch.no_grad():
        expected = sliding_window_inference(
            image[None], roi_size=(patch,) * 3, sw_batch_size=sw_batch_size,
            predictor=predictor, overlap=overlap, mode="constant", padding_mode="constant",
        )[0, 0]
    out = sliding_window_probabilities(model, image, patch=patch, overlap=overlap,
                                       batch_size=sw_batch_size)
    torch.testing.assert_close(out, expected.float(), rtol=0, atol=2e-6)


def test_matches_monai_when_padding_with_a_pointwise_model() -> None:
    # MONAI alone pads symmetrically, this module at the end: equal only for models whose output
    # at a voxel does not depend on the window (here pointwise), which is still the padding path.
    from monai.inferers import sliding_window_inference

    torch.manual_seed(10)
    image = torch.randn(1, 5, 11, 17)
    with torch.no_grad():
        expected = sliding_window_inference(image[None], (8, 8, 8), 2,
                                            lambda x: torch.sigmoid(x[:, :1]),
                                            overlap=0.5, mode="constant")[0, 0]
    out = sliding_window_probabilities(FirstChannel(), image, patch=8, overlap=0.5)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


# ------------------------------------------------------------- model state and devices


def test_runs_in_eval_mode_and_restores_training_flags() -> None:
    torch.manual_seed(11)
    model = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.BatchNorm3d(2), nn.Dropout3d(0.5),
                          nn.Conv3d(2, 1, 1))
    with torch.no_grad():
        model[1].running_mean.fill_(0.3)
        model[1].running_var.fill_(2.0)
    model.train()
    model[0].eval()  # a mixed state must come back as it was
    flags = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    image = torch.randn(1, 12, 10, 9)

    out = sliding_window_probabilities(model, image, patch=8, overlap=0.5, batch_size=3)

    assert [m.training for m in model.modules()] == flags
    for k, v in model.state_dict().items():  # batch norm statistics untouched
        assert torch.equal(v, state[k]), k
    again = sliding_window_probabilities(model, image, patch=8, overlap=0.5, batch_size=1)
    torch.testing.assert_close(out, again, rtol=0, atol=1e-6)  # no dropout, no batch stats
    torch.testing.assert_close(out, _brute_force(model.eval(), image, 8, 4), rtol=0, atol=1e-6)


def test_input_is_not_modified_and_result_is_cpu_float32() -> None:
    torch.manual_seed(12)
    image = torch.randn(2, 5, 9, 10, dtype=torch.float64)
    before = image.clone()
    model = _conv_model().double()
    out = sliding_window_probabilities(model, image, patch=8, overlap=0.5)
    assert torch.equal(image, before)
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    torch.testing.assert_close(out, _brute_force(model, image, 8, 4), rtol=0, atol=1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_with_cpu_image() -> None:
    torch.manual_seed(13)
    image, model = torch.randn(2, 13, 9, 11), _conv_model()
    expected = sliding_window_probabilities(model, image, patch=8, overlap=0.5)
    out = sliding_window_probabilities(model.cuda(), image, patch=8, overlap=0.5)
    assert out.device.type == "cpu"
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("shape", [(8, 8, 8), (1, 1, 8, 8, 8), (8,)])
def test_rejects_image_not_4d(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="C, D, H, W"):
        sliding_window_probabilities(FirstChannel(), torch.zeros(shape), patch=8)


@pytest.mark.parametrize("kwargs", [
    {"overlap": -0.1}, {"overlap": 1.0}, {"overlap": 1.5}, {"overlap": float("nan")},
    {"patch": 0}, {"patch": -8}, {"patch": 8.0}, {"patch": True},
    {"batch_size": 0}, {"batch_size": -1}, {"batch_size": 2.5},
])
def test_rejects_bad_arguments(kwargs: dict) -> None:
    args = {"patch": 8, "overlap": 0.5, "batch_size": 2, **kwargs}
    with pytest.raises(ValueError):
        sliding_window_probabilities(FirstChannel(), torch.zeros(1, 9, 9, 9), **args)


@pytest.mark.parametrize("model", [
    lambda x: x[:, 0],                       # no channel axis: (B, D, H, W)
    lambda x: x[:, :1, ::2, ::2, ::2],       # down-sampled output
    lambda x: x[:, :1].mean((2, 3, 4), keepdim=True),  # one value per window (broadcastable)
    lambda x: x[:1, :1],                     # batch axis lost
], ids=["no_channel", "downsampled", "global", "batch"])
def test_rejects_model_output_of_wrong_shape(model) -> None:
    class Wrap(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return model(x)

    with pytest.raises(ValueError, match="model output"):
        sliding_window_probabilities(Wrap(), torch.zeros(1, 12, 9, 9), patch=8, overlap=0.5,
                                     batch_size=2)


# ------------------------------------------------------------- several channels and softmax


class Pointwise(nn.Module):
    """No parameters: the input's channels are the logits (a pointwise model)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


@pytest.mark.parametrize("overlap", [0.0, 0.5])
def test_softmax_probabilities_and_labels_of_a_pointwise_model(overlap: float) -> None:
    image = torch.randn(3, 9, 11, 10)
    probs = sliding_window_predict(Pointwise(), image, patch=8, overlap=overlap,
                                   activation="softmax")
    # A pointwise model gives every window the same value: the average is the softmax itself.
    assert probs.shape == (3, 9, 11, 10)
    torch.testing.assert_close(probs, torch.softmax(image, 0), rtol=1e-5, atol=1e-6)


def test_sigmoid_channels_each_get_their_probability() -> None:
    image = torch.randn(2, 9, 9, 9)
    probs = sliding_window_predict(Pointwise(), image, patch=8, overlap=0.5)
    torch.testing.assert_close(probs, torch.sigmoid(image), rtol=1e-5, atol=1e-6)
    first = sliding_window_probabilities(Pointwise(), image, patch=8, overlap=0.5)
    torch.testing.assert_close(first, probs[0])


def test_softmax_and_activation_errors() -> None:
    with pytest.raises(ValueError, match="softmax needs at least 2 output channels, got 1"):
        sliding_window_predict(FirstChannel(), torch.zeros(1, 8, 8, 8), patch=8,
                               activation="softmax")
    with pytest.raises(ValueError, match=r"activation must be one of \('sigmoid', 'softmax'\)"):
        sliding_window_predict(FirstChannel(), torch.zeros(1, 8, 8, 8), patch=8,
                               activation="relu")
    with pytest.raises(ValueError, match="channels selects sigmoid outputs only"):
        sliding_window_predict(Pointwise(), torch.zeros(2, 8, 8, 8), patch=8,
                               activation="softmax", channels=1)
