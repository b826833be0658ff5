"""The V-Net of HyTver: CoactSeg's non-residual encoder-decoder with one new-lesion logit out.

Module names follow CoactSeg's ``code/networks/VNet.py`` so that its checkpoints map onto this
model key by key (:mod:`hytver_dist.model.checkpoint`). Layout and heads: docs/model.md.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from torch import nn

Activation = Literal["leakyrelu", "relu"]
#: Accepted spellings (the sweep config writes ``leaky_relu``).
_ACTIVATION_ALIASES = {"leaky_relu": "leakyrelu", "leaky-relu": "leakyrelu"}
Normalization = Literal["batchnorm", "instancenorm", "none"]
Head = Literal["single", "coactseg"]

#: Total down-sampling factor (four stride-2 levels): input sizes must be multiples of it.
DOWNSAMPLING = 16


def _norm(kind: Normalization, channels: int) -> list[nn.Module]:
    if kind == "batchnorm":
        return [nn.BatchNorm3d(channels)]
    if kind == "instancenorm":
        return [nn.InstanceNorm3d(channels)]
    return []


def _act(kind: Activation, negative_slope: float) -> nn.Module:
    # In-place as in CoactSeg (saves one activation-sized buffer per layer at 80^3).
    if kind == "leakyrelu":
        return nn.LeakyReLU(negative_slope, inplace=True)
    return nn.ReLU(inplace=True)


class ConvBlock(nn.Module):
    """``n_convs`` x (Conv3d 3x3x3, padding 1 -> norm -> activation); keys ``conv.<i>.*``."""

    def __init__(
        self,
        n_convs: int,
        c_in: int,
        c_out: int,
        norm: Normalization,
        act: Activation,
        negative_slope: float,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(n_convs):
            layers.append(nn.Conv3d(c_in if i == 0 else c_out, c_out, kernel_size=3, padding=1))
            layers += _norm(norm, c_out)
            layers.append(_act(act, negative_slope))
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Resample(nn.Module):
    """Stride-2 2x2x2 (transposed) conv -> norm -> activation: halves or doubles each size."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        up: bool,
        norm: Normalization,
        act: Activation,
        negative_slope: float,
    ) -> None:
        super().__init__()
        conv_cls = nn.ConvTranspose3d if up else nn.Conv3d
        self.conv = nn.Sequential(
            conv_cls(c_in, c_out, kernel_size=2, stride=2),
            *_norm(norm, c_out),
            _act(act, negative_slope),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _dropout(p: float) -> nn.Module:
    return nn.Dropout3d(p) if p > 0 else nn.Identity()


class Encoder(nn.Module):
    def __init__(self, c_in: int, f: int, dropout: float, **kw: Any) -> None:
        super().__init__()
        self.block_one = ConvBlock(1, c_in, f, **kw)
        self.block_one_dw = Resample(f, 2 * f, up=False, **kw)
        self.block_two = ConvBlock(2, 2 * f, 2 * f, **kw)
        self.block_two_dw = Resample(2 * f, 4 * f, up=False, **kw)
        self.block_three = ConvBlock(3, 4 * f, 4 * f, **kw)
        self.block_three_dw = Resample(4 * f, 8 * f, up=False, **kw)
        self.block_four = ConvBlock(3, 8 * f, 8 * f, **kw)
        self.block_four_dw = Resample(8 * f, 16 * f, up=False, **kw)
        self.block_five = ConvBlock(3, 16 * f, 16 * f, **kw)
        self.dropout = _dropout(dropout)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x1 = self.block_one(x)
        x2 = self.block_two(self.block_one_dw(x1))
        x3 = self.block_three(self.block_two_dw(x2))
        x4 = self.block_four(self.block_three_dw(x3))
        x5 = self.dropout(self.block_five(self.block_four_dw(x4)))
        return [x1, x2, x3, x4, x5]


class Decoder(nn.Module):
    def __init__(self, f: int, c_out: int, head: Head, dropout: float, **kw: Any) -> None:
        super().__init__()
        self.head = head
        self.block_five_up = Resample(16 * f, 8 * f, up=True, **kw)
        self.block_six = ConvBlock(3, 8 * f, 8 * f, **kw)
        self.block_six_up = Resample(8 * f, 4 * f, up=True, **kw)
        self.block_seven = ConvBlock(3, 4 * f, 4 * f, **kw)
        self.block_seven_up = Resample(4 * f, 2 * f, up=True, **kw)
        self.block_eight = ConvBlock(2, 2 * f, 2 * f, **kw)
        self.block_eight_up = Resample(2 * f, f, up=True, **kw)
        if head == "single":
            self.block_nine = ConvBlock(1, f, f, **kw)
            self.out_conv = nn.Conv3d(f, c_out, kernel_size=1)
        else:
            self.block_nine_1 = ConvBlock(1, f, f, **kw)
            self.block_nine_2 = ConvBlock(1, f, f, **kw)
            self.block_nine_3 = ConvBlock(1, f, f, **kw)
            self.block_c2f = ConvBlock(1, 3 * f, f, **kw)
            self.out_conv_3 = nn.Conv3d(f, c_out, kernel_size=1)
        self.dropout = _dropout(dropout)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x1, x2, x3, x4, x5 = feats
        x = self.block_six(self.block_five_up(x5) + x4)
        x = self.block_seven(self.block_six_up(x) + x3)
        x = self.block_eight(self.block_seven_up(x) + x2)
        x = self.block_eight_up(x) + x1
        if self.head == "single":
            return self.out_conv(self.dropout(self.block_nine(x)))
        x91 = self.dropout(self.block_nine_1(x))
        x92 = self.dropout(self.block_nine_2(x))
        x93 = self.dropout(self.block_nine_3(x))
        # CoactSeg's new-lesion head sees the t2 - t1 feature difference next to both branches.
        return self.out_conv_3(self.block_c2f(torch.cat((x92 - x91, x91, x93), dim=1)))


class VNet(nn.Module):
    """CoactSeg/HyTver V-Net returning new-lesion logits of shape ``(B, out_channels, D, H, W)``.

    Args:
        in_channels: input channels, ``[baseline, follow-up, follow-up - baseline]`` = 3.
        out_channels: output logit channels; 1 = new-lesion logit (apply a sigmoid yourself).
        n_filters: channels of the first level (16 in the paper; 4-8 for CPU tests).
        activation: ``"leakyrelu"`` (HyTver; alias ``"leaky_relu"``) or ``"relu"`` (CoactSeg);
            same weight shapes.
        negative_slope: LeakyReLU slope (PyTorch default 0.01).
        normalization: ``"batchnorm"`` (paper), ``"instancenorm"`` (no affine, no keys) or
            ``"none"`` (shifts the ``conv.<i>`` indices, so CoactSeg keys no longer match).
        dropout: ``Dropout3d`` probability after the bottleneck and before the output conv;
            0 disables it; CoactSeg trains with 0.5 (``has_dropout=True``).
        head: ``"single"`` or ``"coactseg"`` (docs/model.md).

    Inputs must be 5-D with every spatial size a multiple of 16 (four stride-2 levels). With
    batch norm, training on batch 1 needs more than one bottleneck voxel (e.g. >= 32 on an axis).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        n_filters: int = 16,
        activation: Activation = "leakyrelu",
        negative_slope: float = 0.01,
        normalization: Normalization = "batchnorm",
        dropout: float = 0.0,
        head: Head = "single",
    ) -> None:
        super().__init__()
        activation = _ACTIVATION_ALIASES.get(activation, activation)  # type: ignore[assignment]
        for name, value, allowed in (
            ("activation", activation, Activation),
            ("normalization", normalization, Normalization),
            ("head", head, Head),
        ):
            if value not in get_args(allowed):
                raise ValueError(f"{name} must be one of {get_args(allowed)}, got {value!r}")
        for name, n in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("n_filters", n_filters)):
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ValueError(f"{name} must be a positive int, got {n!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.n_filters = n_filters
        self.head = head
        kw = dict(norm=normalization, act=activation, negative_slope=negative_slope)
        self.encoder = Encoder(in_channels, n_filters, dropout, **kw)
        self.decoder = Decoder(n_filters, out_channels, head, dropout, **kw)

    @property
    def output_keys(self) -> tuple[str, str]:
        """State-dict keys (weight, bias) of the final 1x1x1 convolution."""
        name = "decoder.out_conv" if self.head == "single" else "decoder.out_conv_3"
        return f"{name}.weight", f"{name}.bias"

    def check_input(self, x: torch.Tensor) -> None:
        """ValueError naming the shape unless x is (B, C_in, D, H, W) with D, H, W % 16 == 0."""
        shape = tuple(x.shape)
        if x.ndim != 5 or shape[1] != self.in_channels:
            raise ValueError(
                f"VNet expects input of shape (B, {self.in_channels}, D, H, W), got {shape}"
            )
        if any(s % DOWNSAMPLING for s in shape[2:]):
            raise ValueError(
                f"VNet needs spatial sizes divisible by {DOWNSAMPLING}, got {shape} "
                f"(pad or crop, e.g. to 80^3 patches)"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.decoder(self.encoder(x))


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
