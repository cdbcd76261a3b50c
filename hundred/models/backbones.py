"""Small local backbones the seed papers use at low resolution.

Every backbone maps images ``(B, 3, H, W)`` to features ``(B, D)`` through
``forward_features`` and says its ``feature_dim``; classification heads live apart
(:mod:`hundred.models.heads`) so tracks can grow or swap them.

* CIFAR ResNet-20/32/56 — He et al., "Deep Residual Learning for Image Recognition"
  (CVPR 2016), Sec. 4.2: 3x3 stem, three stages of 16/32/64 channels, ``n`` basic blocks
  each, parameter-free shortcuts (option A: subsample + zero-pad). ResNet-32 is the
  continual-learning standard (iCaRL, WA, PyCIL).
* CIFAR ResNet-8x4/32x4 — the distillation benchmark pair of Tian et al. ("Contrastive
  Representation Distillation", ICLR 2020) used by every CIFAR-100 KD paper since: a 32-channel
  stem, three stages of 64/128/256 channels (4x the ResNet-(6n+2) widths) and projection
  shortcuts (option B: 1x1 conv + batch norm) where the shape changes.
* ConvNet-D3/D4 — the dataset-distillation standard (Zhao et al., "Dataset Condensation with
  Gradient Matching", ICLR 2021): depth x [conv3x3(128), instance norm, ReLU, avgpool 2].

Each takes ``activation`` (``relu`` by default, or ``gelu``, ``crrelu``: see
:mod:`hundred.models.activations`); the default builds exactly the papers' nets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hundred.models.activations import make_activation


class _BasicBlockA(nn.Module):
    """Two 3x3 convs with batch norm; option-A shortcut (no parameters) when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int,
                 activation: str = "relu", projection: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.stride = stride
        self.extra_channels = out_channels - in_channels
        self.act1 = make_activation(activation)
        self.act2 = make_activation(activation)
        changes_shape = stride != 1 or in_channels != out_channels
        self.projection = (nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride,
                                                   bias=False), nn.BatchNorm2d(out_channels))
                           if projection and changes_shape else None)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.projection is not None:
            return self.projection(x)
        if self.stride == 1 and self.extra_channels == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra_channels // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32 px inputs: stages of ``width``, 2x and 4x channels (``feature_dim``
    = 4 * width). ``stem_width`` is the stem's channels (default ``width``); ``projection``
    uses 1x1-conv shortcuts (option B) instead of the zero-padding ones (option A)."""

    def __init__(self, depth: int, width: int = 16, activation: str = "relu",
                 stem_width: int | None = None, projection: bool = False) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        stem_width = stem_width or width
        self.conv1 = nn.Conv2d(3, stem_width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.act = make_activation(activation)
        stages, channels = [], stem_width
        for stage, out_channels in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(_BasicBlockA(channels, out_channels, stride, activation,
                                           projection))
                channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.feature_dim = channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        x = self.stages(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class ConvNet(nn.Module):
    """ConvNet-D{depth}: [conv3x3(width) -> instance norm -> ReLU -> avgpool 2] x depth, flattened.

    Instance norm is ``GroupNorm(width, width)`` (one group per channel, affine), as in the
    dataset-condensation papers. ``feature_dim`` = width * (img_size / 2**depth)**2.
    """

    def __init__(self, depth: int = 3, width: int = 128, img_size: int = 32,
                 activation: str = "relu") -> None:
        super().__init__()
        if img_size % (2**depth) != 0:
            raise ValueError(f"ConvNet-D{depth} needs img_size divisible by {2**depth}, got {img_size}")
        layers: list[nn.Module] = []
        channels = 3
        for _ in range(depth):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1),
                nn.GroupNorm(width, width, affine=True),
                make_activation(activation, inplace=True),
                nn.AvgPool2d(2, 2),
            ]
            channels = width
        self.layers = nn.Sequential(*layers)
        self.feature_dim = width * (img_size // 2**depth) ** 2

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).flatten(1)
