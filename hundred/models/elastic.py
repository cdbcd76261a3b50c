"""An elastic ResNet: the weight-sharing supernet of one-shot NAS (OFA, BigNAS, DεpS).

Cai et al., "Once-for-All: Train One Network and Specialize it for Efficient Deployment"
(ICLR 2020) and Yu et al., "BigNAS: Scaling Up Neural Architecture Search with Big
Single-Stage Models" (ECCV 2020) train one network whose every *child* is a sub-network
sharing its weights. Here the network is a ResNet of basic blocks at CIFAR / ImageNet-100
scale:

* a 3x3 stem (stride 1 up to 64 px; stride 2 + 3x3/2 max-pool above, ImageNet-style), then
  ``len(widths)`` stages of output width ``widths[i]`` (strides 1, 2, 2, ...), at most
  ``depths[i]`` blocks each, global average pooling; features = ``widths[-1]``;
* a block is ``conv kxk (in -> mid, stride) - BN - act - conv kxk (mid -> out) - BN`` plus the
  shortcut (identity, or 1x1 conv + BN on the first block of a stage that changes the
  shape), then the activation;
* elastic **depth**: a stage runs its first ``d`` blocks (``min_depth <= d <= depths[i]``, the
  first block always, as OFA keeps the first blocks); elastic **width**: the hidden width
  ``mid = max(1, round(e x out))`` of each block for an expand ratio ``e`` in
  ``expand_choices``, the first ``mid`` filters (OFA's channel slicing; no channel sorting);
  elastic **kernel**: ``k`` in ``kernel_choices``, the centre ``k x k`` of the largest kernel
  (OFA's centre crop; OFA's kernel transformation matrices are not used);
* batch norm of a narrower width uses the first channels' affine parameters and running
  statistics (:class:`ElasticBatchNorm2d`).

A *child* is a dict ``{"depth": [d per stage], "expand": [[e per block] per stage],
"kernel": [[k per block] per stage]}`` (the lists of a stage as long as its depth).
``set_child`` configures the supernet; ``child=CHILD`` as a model option builds the plain
standalone child (exactly the child's shapes: only its blocks, its hidden widths and its
kernels), whose state dict is the supernet's sliced (:func:`child_state_dict`) and whose
outputs equal the configured supernet's. The largest child is the full network.

``zero_init_residual`` (default on: BigNAS Sec. 3.1, "zero-initialise the last BN gamma of
each residual block") starts every block as the identity.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hundred.errors import HundredError
from hundred.models.activations import make_activation

Child = dict[str, list]


def mid_channels(expand: float, width: int) -> int:
    """The hidden width of a block of output width ``width`` at expand ratio ``expand``."""
    return max(1, int(round(expand * width)))


class ElasticConv2d(nn.Conv2d):
    """A bias-free convolution whose output width and (centre-cropped) kernel size can be
    chosen per call; the input width is the input's."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int) -> None:
        super().__init__(in_channels, out_channels, kernel, stride, kernel // 2, bias=False)
        self.active_out = out_channels
        self.active_kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.active_kernel
        cut = (self.kernel_size[0] - kernel) // 2
        weight = self.weight[:self.active_out, :x.shape[1], cut:cut + kernel, cut:cut + kernel]
        return F.conv2d(x, weight, None, self.stride, kernel // 2)


class ElasticBatchNorm2d(nn.BatchNorm2d):
    """Batch norm over the first ``C`` channels of its parameters and running statistics,
    ``C`` = the input's width (as ``nn.BatchNorm2d``, including the cumulative average of
    ``momentum=None`` that BN recalibration uses)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        if channels == self.num_features:
            return super().forward(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                      else self.momentum)
        batch_stats = self.training or self.running_mean is None
        return F.batch_norm(
            x, None if self.running_mean is None else self.running_mean[:channels],
            None if self.running_var is None else self.running_var[:channels],
            self.weight[:channels], self.bias[:channels], batch_stats, factor, self.eps)


class ElasticBlock(nn.Module):
    """A basic residual block with elastic hidden width and kernel size."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, mid: int, kernel: int,
                 activation: str) -> None:
        super().__init__()
        self.conv1 = ElasticConv2d(in_channels, mid, kernel, stride)
        self.bn1 = ElasticBatchNorm2d(mid)
        self.conv2 = ElasticConv2d(mid, out_channels, kernel, 1)
        self.bn2 = ElasticBatchNorm2d(out_channels)
        self.act1 = make_activation(activation)
        self.act2 = make_activation(activation)
        self.shortcut = (nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride,
                                                 bias=False), nn.BatchNorm2d(out_channels))
                         if stride != 1 or in_channels != out_channels else None)

    def configure(self, mid: int, kernel: int) -> None:
        self.conv1.active_out = mid
        self.conv1.active_kernel = kernel
        self.conv2.active_kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + (x if self.shortcut is None else self.shortcut(x)))


class ElasticStage(nn.Module):
    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.active_depth = len(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks[:self.active_depth]:
            x = block(x)
        return x


class ElasticResNet(nn.Module):
    """The supernet (``child=None``) or one standalone child (``child=CHILD``) of the elastic
    space ``widths`` x ``depths`` x ``expand_choices`` x ``kernel_choices``."""

    def __init__(self, img_size: int = 32, widths: Sequence[int] = (32, 64, 128),
                 depths: Sequence[int] = (3, 3, 3), stem_width: int | None = None,
                 expand_choices: Sequence[float] = (0.5, 0.75, 1.0),
                 kernel_choices: Sequence[int] = (3, 5), min_depth: int = 1,
                 activation: str = "relu", zero_init_residual: bool = True,
                 child: dict[str, Any] | None = None) -> None:
        super().__init__()
        widths, depths = [int(w) for w in widths], [int(d) for d in depths]
        expand = sorted({float(e) for e in expand_choices})
        kernels = sorted({int(k) for k in kernel_choices})
        if not widths or len(widths) != len(depths) or min(widths) < 1:
            raise HundredError("elastic_resnet: widths and depths need one positive entry per "
                               f"stage (got widths={widths}, depths={depths})")
        if not 1 <= int(min_depth) <= min(depths):
            raise HundredError(f"elastic_resnet: min_depth={min_depth} must be in "
                               f"[1, min(depths)={min(depths)}]")
        if not expand or not all(0 < e <= 1 for e in expand):
            raise HundredError(f"elastic_resnet: expand_choices {expand} must lie in (0, 1]")
        if not kernels or any(k < 1 or k % 2 == 0 for k in kernels):
            raise HundredError(f"elastic_resnet: kernel_choices {kernels} must be odd sizes")
        # what rebuilds this space (a standalone child adds ``child``)
        self.space_options = {"img_size": img_size, "widths": widths, "depths": depths,
                              "stem_width": stem_width, "expand_choices": expand,
                              "kernel_choices": kernels, "min_depth": int(min_depth),
                              "activation": activation}
        self.widths, self.depths, self.min_depth = widths, depths, int(min_depth)
        self.expand_choices, self.kernel_choices = expand, kernels
        self.is_child = child is not None
        self.child = self.validate(child) if child is not None else self.largest()
        stem = int(stem_width or widths[0])
        large = img_size is not None and img_size > 64
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem, 3, 2 if large else 1, 1, bias=False), nn.BatchNorm2d(stem),
            make_activation(activation), *([nn.MaxPool2d(3, 2, 1)] if large else []))
        stages, channels = [], stem
        for index, (width, depth) in enumerate(zip(widths, depths)):
            blocks = []
            built = self.child["depth"][index] if self.is_child else depth
            for block in range(built):
                mid = mid_channels(self.child["expand"][index][block] if self.is_child
                                   else max(expand), width)
                kernel = self.child["kernel"][index][block] if self.is_child else max(kernels)
                blocks.append(ElasticBlock(channels, width, 2 if index and not block else 1,
                                           mid, kernel, activation))
                channels = width
            stages.append(ElasticStage(blocks))
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = widths[-1]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for stage in self.stages:
                for block in stage.blocks:
                    nn.init.zeros_(block.bn2.weight)
        self.set_child(self.child)

    # -- the space -----------------------------------------------------------------------------
    def largest(self) -> Child:
        """The largest child: every block, the largest expand ratio and kernel."""
        return {"depth": list(self.depths),
                "expand": [[max(self.expand_choices)] * d for d in self.depths],
                "kernel": [[max(self.kernel_choices)] * d for d in self.depths]}

    def smallest(self) -> Child:
        """The smallest child: ``min_depth`` blocks a stage, the smallest ratio and kernel."""
        depth = [self.min_depth] * len(self.depths)
        return {"depth": depth, "expand": [[min(self.expand_choices)] * d for d in depth],
                "kernel": [[min(self.kernel_choices)] * d for d in depth]}

    def sample(self, rng: random.Random) -> Child:
        """A child drawn uniformly: each stage's depth, then each block's ratio and kernel."""
        depth = [rng.randint(self.min_depth, d) for d in self.depths]
        return {"depth": depth,
                "expand": [[rng.choice(self.expand_choices) for _ in range(d)] for d in depth],
                "kernel": [[rng.choice(self.kernel_choices) for _ in range(d)] for d in depth]}

    def validate(self, child: Any) -> Child:
        """``child`` in canonical form (plain lists, floats and ints), or a HundredError."""
        problem = None
        try:
            depth = [int(d) for d in child["depth"]]
            expand = [[float(e) for e in stage] for stage in child["expand"]]
            kernel = [[int(k) for k in stage] for stage in child["kernel"]]
        except (TypeError, KeyError, ValueError):
            raise HundredError(f"elastic_resnet: child {child!r} is not a mapping of 'depth' "
                               "(per stage), 'expand' and 'kernel' (per stage, per block)"
                               ) from None
        if set(child) - {"depth", "expand", "kernel"}:
            problem = f"unknown keys {sorted(set(child) - {'depth', 'expand', 'kernel'})}"
        elif not len(depth) == len(expand) == len(kernel) == len(self.depths):
            problem = f"it needs {len(self.depths)} stages"
        elif any(not self.min_depth <= d <= m for d, m in zip(depth, self.depths)):
            problem = f"depths must lie in [{self.min_depth}, {self.depths}]"
        elif any(len(e) != d or len(k) != d for d, e, k in zip(depth, expand, kernel)):
            problem = "each stage needs one expand ratio and one kernel per block of its depth"
        elif any(e not in self.expand_choices for stage in expand for e in stage):
            problem = f"expand ratios must be among {self.expand_choices}"
        elif any(k not in self.kernel_choices for stage in kernel for k in stage):
            problem = f"kernels must be among {self.kernel_choices}"
        if problem:
            raise HundredError(f"elastic_resnet: child {child!r}: {problem}")
        return {"depth": depth, "expand": expand, "kernel": kernel}

    def set_child(self, child: Child | None) -> Child:
        """Configure the network to run ``child`` (None: the largest); returns it. A standalone
        child runs only itself."""
        child = self.largest() if child is None else self.validate(child)
        if self.is_child and child != self.child:
            raise HundredError("a standalone elastic_resnet child runs only its own shape")
        for index, stage in enumerate(self.stages):
            stage.active_depth = child["depth"][index]
            for block, expand, kernel in zip(stage.blocks, child["expand"][index],
                                             child["kernel"][index]):
                block.configure(mid_channels(expand, self.widths[index]), kernel)
        self.active = child
        return child

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return torch.flatten(self.pool(x), 1)


def child_state_dict(supernet_state: dict[str, torch.Tensor],
                     child_shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """The supernet's weights cut to a child's shapes: the first channels along the output
    and input dimensions, the centre of each kernel (every key of the child is one of the
    supernet's: the child has the same module names, fewer blocks)."""
    state = {}
    for key, shape in child_shapes.items():
        tensor = supernet_state[key]
        if tensor.dim() == 0:
            state[key] = tensor.clone()
            continue
        index: list[slice] = []
        for dim, size in enumerate(shape):
            full = tensor.shape[dim]
            if dim >= 2:  # kernel: the centre
                cut = (full - size) // 2
                index.append(slice(cut, cut + size))
            else:
                index.append(slice(0, size))
        state[key] = tensor[tuple(index)].clone()
    return state
