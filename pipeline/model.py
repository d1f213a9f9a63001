"""The original U-Net (Ronneberger, Fischer, Brox, MICCAI 2015).

Unpadded 3x3 convolutions with ReLU, 2x2 max-pooling, 2x2 transposed
convolutions for up-sampling, concatenation with the centre-cropped encoder
map, a 1x1 output convolution. The paper configuration (1 channel in,
2 classes, 64 base channels, depth 5) has 31,030,658 parameters and maps a
572x572 window to 388x388.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from pipeline.geometry import UNetGeometry


@dataclass(frozen=True, slots=True)
class UNetConfig:
    in_channels: int = 1
    n_classes: int = 2
    base_channels: int = 64  # channels at full resolution; doubled at each level
    depth: int = 5  # resolution levels including the bottleneck (paper: 5)

    def __post_init__(self) -> None:
        for name in ("in_channels", "n_classes", "base_channels", "depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"UNetConfig.{name} must be an integer >= 1, got {value!r}")
        if self.n_classes < 2:
            raise ValueError(
                f"UNetConfig.n_classes must be >= 2 (softmax over classes), got {self.n_classes}"
            )

    @property
    def geometry(self) -> UNetGeometry:
        return UNetGeometry(self.depth)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        unknown = set(data) - {"in_channels", "n_classes", "base_channels", "depth"}
        if unknown:
            raise ValueError(f"unknown U-Net architecture keys: {sorted(unknown)}")
        return cls(**data)


class DoubleConv(nn.Sequential):
    """Two unpadded 3x3 convolutions, each followed by ReLU (shrinks by 4 px)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3),
            nn.ReLU(inplace=True),
        )


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The centred ``height x width`` window of an (N, C, H, W) map."""
    top = (x.shape[-2] - height) // 2
    left = (x.shape[-1] - width) // 2
    return x[..., top : top + height, left : left + width]


class Up(nn.Module):
    """2x2 up-convolution halving the channels, concat with the cropped skip, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.upconv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.upconv(x)  # (N, C/2, 2H, 2W)
        skip = center_crop(skip, x.shape[-2], x.shape[-1])  # (N, C/2, 2H, 2W)
        merged: torch.Tensor = self.conv(torch.cat([skip, x], dim=1))  # (N, C/2, 2H-4, 2W-4)
        return merged


class UNet(nn.Module):
    """The paper's U-Net; returns logits of shape (N, n_classes, out, out)."""

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        base_channels: int = 64,
        depth: int = 5,
    ) -> None:
        super().__init__()
        self.config = UNetConfig(in_channels, n_classes, base_channels, depth)
        widths = [base_channels * 2**level for level in range(depth)]
        self.encoder = nn.ModuleList()
        previous = in_channels
        for width in widths:
            self.encoder.append(DoubleConv(previous, width))
            previous = width
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.decoder = nn.ModuleList(
            Up(widths[level + 1], widths[level]) for level in reversed(range(depth - 1))
        )
        self.head = nn.Conv2d(widths[0], n_classes, kernel_size=1)
        self.reset_parameters()

    @property
    def geometry(self) -> UNetGeometry:
        return self.config.geometry

    def reset_parameters(self) -> None:
        """He normal init as in the paper: std sqrt(2 / N), N = inputs of one neuron; zero bias."""
        for module in self.modules():
            if isinstance(module, nn.ConvTranspose2d):
                # a 2x2 stride-2 up-convolution feeds each output pixel from one input pixel
                fan_in = module.in_channels
            elif isinstance(module, nn.Conv2d):
                fan_in = module.in_channels * math.prod(module.kernel_size)
            else:
                continue
            if module.weight.is_meta:  # built to be loaded (a checkpoint's): no values to draw
                continue
            nn.init.normal_(module.weight, mean=0.0, std=math.sqrt(2.0 / fan_in))
            assert module.bias is not None
            nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for size in x.shape[-2:]:
            self.geometry.output_size(int(size))  # ValueError naming the nearest valid sizes
        skips: list[torch.Tensor] = []
        for level, block in enumerate(self.encoder):
            if level > 0:
                x = self.pool(x)  # (N, C, H/2, W/2)
            x = block(x)  # (N, C', H-4, W-4)
            skips.append(x)
        skips.pop()  # the bottleneck has no skip
        for up in self.decoder:
            x = up(x, skips.pop())
        logits: torch.Tensor = self.head(x)  # (N, n_classes, out, out)
        return logits


def parameter_shapes(config: UNetConfig) -> dict[str, list[int]]:
    """The shape of every tensor in the state dict of ``build_model(config)``, without building it."""
    widths = [config.base_channels * 2**level for level in range(config.depth)]
    shapes: dict[str, list[int]] = {}

    def double_conv(prefix: str, inputs: int, outputs: int) -> None:
        shapes.update(
            {
                f"{prefix}.0.weight": [outputs, inputs, 3, 3],
                f"{prefix}.0.bias": [outputs],
                f"{prefix}.2.weight": [outputs, outputs, 3, 3],
                f"{prefix}.2.bias": [outputs],
            }
        )

    for level, width in enumerate(widths):
        double_conv(f"encoder.{level}", widths[level - 1] if level else config.in_channels, width)
    for index, level in enumerate(reversed(range(config.depth - 1))):
        shapes[f"decoder.{index}.upconv.weight"] = [widths[level + 1], widths[level], 2, 2]
        shapes[f"decoder.{index}.upconv.bias"] = [widths[level]]
        double_conv(f"decoder.{index}.conv", 2 * widths[level], widths[level])
    shapes["head.weight"] = [config.n_classes, widths[0], 1, 1]
    shapes["head.bias"] = [config.n_classes]
    return shapes


def widen(model: UNet, base_channels: int) -> UNet:
    """The same function in a network of ``base_channels``: each layer's weights in its first channels,
    zeros elsewhere (the extra channels stay zero through every layer).

    A trained narrow model then costs what a wide one does: the bench runs the shipped demo model
    (cells, not an untrained network's speckle) at the paper's width this way.
    """
    narrow = model.config
    if base_channels < narrow.base_channels:
        raise ValueError(f"cannot widen {narrow.base_channels} base channels to {base_channels}")
    wide = build_model(UNetConfig(narrow.in_channels, narrow.n_classes, base_channels, narrow.depth))
    widths = {narrow.base_channels * 2**level: base_channels * 2**level for level in range(narrow.depth)}
    state = wide.state_dict()
    with torch.no_grad():
        for name, values in model.state_dict().items():
            target = state[name].zero_()
            if ".conv.0.weight" in name:  # input: the cropped skip, then the up-convolution (torch.cat)
                half, wide_half = values.shape[1] // 2, widths[values.shape[1] // 2]
                target[: values.shape[0], :half] = values[:, :half]
                target[: values.shape[0], wide_half : wide_half + half] = values[:, half:]
            else:
                target[tuple(slice(0, n) for n in values.shape)] = values
    wide.load_state_dict(state)
    return wide


def build_model(config: UNetConfig) -> UNet:
    return UNet(config.in_channels, config.n_classes, config.base_channels, config.depth)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
