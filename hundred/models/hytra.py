"""A small HyTra-like hybrid CNN-transformer search space (BossNAS: Li, Tang, Wang, Zhu, Chang,
Liang & Zhang, "BossNAS: Exploring Hybrid CNN-transformers with Block-wisely Self-supervised
Neural Architecture Search", ICCV 2021, Sec. 4 "HyTra search space"), at CPU scale.

The network is a 3x3 stem (``width`` channels) and ``blocks`` blocks of ``layers_per_block``
layers. Every layer chooses one of two operators,

* ``conv`` — ResConv, a residual block of two 3x3 convolutions (BN, ReLU), as ResNet's basic
  block;
* ``att`` — ResAtt, a residual multi-head self-attention layer over all positions of the
  feature map (BN pre-norm, a depth-wise 3x3 convolution as its position encoding, then a
  residual 1x1-conv MLP), the BoTNet-style block of the paper's space,

and each block halves the resolution and doubles the width exactly once, at a searchable
position: the layer that does so carries the suffix ``_down`` (``conv_down``: the first conv
has stride 2; ``att_down``: a 2x2 average pool and a 1x1 projection before the attention).
A *path* is the list of the layers' tokens, e.g. ``["conv_down", "att", "att_down", "conv"]``
for 2 blocks of 2 layers; the final resolution and width (``width x 2^blocks``) are the same
for every path, so the classifier head is shared. (The paper's fabric lets the down-sampling
positions move between its 4 scales; fixing one down-sampling per block keeps every block's
output shape fixed, which block-wise training needs, and leaves the positions searchable.)

``create("hytra", ..., path=[...])`` builds the stand-alone network of a path (the default path
is ``conv_down`` then ``conv`` in every block); ``create("hytra", ..., supernet=True)`` the
weight-sharing supernet, which holds one module per (layer, input scale, token) and runs the
path in its ``active`` attribute. :func:`extract` cuts a stand-alone network out of a
supernet with the shared weights (same outputs).
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hundred.errors import HundredError

OPS = ("conv", "att")
DOWN = "_down"
TOKENS = (*OPS, *(op + DOWN for op in OPS))


class ResConv(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (1x1 conv-BN when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout))
        self.skip = (nn.Identity() if cin == cout and stride == 1 else
                     nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                   nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


class ResAtt(nn.Module):
    """Residual multi-head self-attention over the ``H x W`` positions and a residual MLP."""

    def __init__(self, cin: int, cout: int, stride: int, heads: int) -> None:
        super().__init__()
        if cout % heads:
            raise HundredError(f"hytra: width {cout} is not divisible by heads={heads}")
        self.reduce = (nn.Identity() if cin == cout and stride == 1 else nn.Sequential(
            nn.AvgPool2d(stride) if stride > 1 else nn.Identity(),
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)))
        self.heads = heads
        self.pos = nn.Conv2d(cout, cout, 3, 1, 1, groups=cout)
        self.norm1 = nn.BatchNorm2d(cout)
        self.qkv = nn.Conv2d(cout, 3 * cout, 1)
        self.proj = nn.Conv2d(cout, cout, 1)
        self.norm2 = nn.BatchNorm2d(cout)
        self.mlp = nn.Sequential(nn.Conv2d(cout, 2 * cout, 1), nn.GELU(),
                                 nn.Conv2d(2 * cout, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        x = x + self.pos(x)
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, 3, self.heads, c // self.heads, h * w
                                                  ).unbind(1)
        attention = torch.softmax(q.transpose(-2, -1) @ k * (c // self.heads) ** -0.5, dim=-1)
        out = (v @ attention.transpose(-2, -1)).reshape(b, c, h, w)
        x = x + self.proj(out)
        return x + self.mlp(self.norm2(x))


def make_op(token: str, cin: int, cout: int, heads: int) -> nn.Module:
    """The layer a ``token`` (``conv``, ``att``, ``conv_down``, ``att_down``) stands for."""
    stride = 2 if token.endswith(DOWN) else 1
    if token.startswith("conv"):
        return ResConv(cin, cout, stride)
    return ResAtt(cin, cout, stride, heads)


def stem(width: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                         nn.ReLU(inplace=True))


def block_paths(layers_per_block: int) -> list[tuple[str, ...]]:
    """Every path of one block: an operator per layer, exactly one layer down-sampling."""
    paths = []
    for position in range(layers_per_block):
        for ops in itertools.product(OPS, repeat=layers_per_block):
            paths.append(tuple(op + (DOWN if i == position else "") for i, op in enumerate(ops)))
    return paths


def default_path(blocks: int, layers_per_block: int) -> list[str]:
    return ["conv_down", *["conv"] * (layers_per_block - 1)] * blocks


def check_path(path: Sequence[str], blocks: int, layers_per_block: int) -> list[str]:
    """``path`` as a list, or a HundredError saying what is wrong with it."""
    path = list(path)
    if len(path) != blocks * layers_per_block:
        raise HundredError(f"hytra path {path} has {len(path)} layers; the space has "
                           f"{blocks} blocks x {layers_per_block} layers")
    bad = [token for token in path if token not in TOKENS]
    if bad:
        raise HundredError(f"hytra path: unknown layer tokens {bad}; use {', '.join(TOKENS)}")
    for b in range(blocks):
        part = path[b * layers_per_block:(b + 1) * layers_per_block]
        if sum(token.endswith(DOWN) for token in part) != 1:
            raise HundredError(f"hytra path: block {b} ({part}) must down-sample exactly once "
                               "(one token ending in _down)")
    return path


def layer_plan(path: Sequence[str]) -> list[tuple[int, int, str]]:
    """(input scale, output scale, token) of each layer of ``path``: scale s has
    ``width x 2^s`` channels at 1 / 2^s of the input resolution."""
    plan, scale = [], 0
    for token in path:
        out = scale + 1 if token.endswith(DOWN) else scale
        plan.append((scale, out, token))
        scale = out
    return plan


class HyTraNet(nn.Module):
    """The stand-alone network of one ``path``: stem, the path's layers, global average pool."""

    def __init__(self, path: Sequence[str] | None = None, width: int = 16, blocks: int = 2,
                 layers_per_block: int = 2, heads: int = 2) -> None:
        super().__init__()
        if blocks < 1 or layers_per_block < 1 or width < 1:
            raise HundredError("hytra: blocks, layers_per_block and width must be >= 1")
        path = default_path(blocks, layers_per_block) if path is None else path
        self.path = check_path(path, blocks, layers_per_block)
        self.stem = stem(width)
        self.layers = nn.ModuleList(
            make_op(token, width * 2**s, width * 2**o, heads)
            for s, o, token in layer_plan(self.path))
        self.feature_dim = width * 2**blocks

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return x.mean(dim=(2, 3))


class HyTraSupernet(nn.Module):
    """The weight-sharing supernet: ``layers[i]`` maps ``"s<input scale>_<token>"`` to the
    module of every choice reachable at layer i. ``forward_features`` runs ``active``."""

    def __init__(self, width: int = 16, blocks: int = 2, layers_per_block: int = 2,
                 heads: int = 2) -> None:
        super().__init__()
        if blocks < 1 or layers_per_block < 1 or width < 1:
            raise HundredError("hytra: blocks, layers_per_block and width must be >= 1")
        self.width, self.blocks, self.layers_per_block = width, blocks, layers_per_block
        self.heads = heads
        self.stem = stem(width)
        self.layers = nn.ModuleList()
        for b in range(blocks):
            for p in range(layers_per_block):
                choices = nn.ModuleDict()
                for scale in (b, b + 1):
                    if scale == b + 1 and p == 0:
                        continue  # nothing can have down-sampled before a block's first layer
                    for token in TOKENS:
                        down = token.endswith(DOWN)
                        if scale == b + 1 and down:
                            continue  # one down-sampling per block
                        if scale == b and not down and p == layers_per_block - 1:
                            continue  # the block's last chance to down-sample
                        out = scale + 1 if down else scale
                        choices[f"s{scale}_{token}"] = make_op(
                            token, width * 2**scale, width * 2**out, heads)
                self.layers.append(choices)
        self.feature_dim = width * 2**blocks
        self.active = default_path(blocks, layers_per_block)

    def options(self) -> dict[str, Any]:
        return {"width": self.width, "blocks": self.blocks,
                "layers_per_block": self.layers_per_block, "heads": self.heads}

    def block_modules(self, block: int, block_path: Sequence[str]) -> list[nn.Module]:
        """The modules of block ``block`` that ``block_path`` (its layers' tokens) runs."""
        modules, scale = [], block
        for p, token in enumerate(block_path):
            modules.append(self.layers[block * self.layers_per_block + p][f"s{scale}_{token}"])
            scale += token.endswith(DOWN)
        return modules

    def forward_block(self, x: torch.Tensor, block: int, block_path: Sequence[str]
                      ) -> torch.Tensor:
        """Block ``block`` of ``block_path`` on ``x`` (the stem's output for block 0)."""
        for module in self.block_modules(block, block_path):
            x = module(x)
        return x

    def split(self, path: Sequence[str]) -> list[list[str]]:
        """``path`` cut into its blocks' paths."""
        path = check_path(path, self.blocks, self.layers_per_block)
        n = self.layers_per_block
        return [path[b * n:(b + 1) * n] for b in range(self.blocks)]

    def forward_features(self, x: torch.Tensor, path: Sequence[str] | None = None
                         ) -> torch.Tensor:
        x = self.stem(x)
        for b, block_path in enumerate(self.split(self.active if path is None else path)):
            x = self.forward_block(x, b, block_path)
        return x.mean(dim=(2, 3))


def extract(supernet: HyTraSupernet, path: Sequence[str]) -> HyTraNet:
    """The stand-alone :class:`HyTraNet` of ``path`` holding the supernet's weights of it."""
    net = HyTraNet(path, **supernet.options())
    net.to(next(supernet.parameters()).device)
    net.stem.load_state_dict(supernet.stem.state_dict())
    modules = [m for b, part in enumerate(supernet.split(path))
               for m in supernet.block_modules(b, part)]
    for layer, module in zip(net.layers, modules):
        layer.load_state_dict(module.state_dict())
    return net


def hytra(img_size: int = 32, supernet: bool = False, path: Sequence[str] | None = None,
          **options: Any) -> nn.Module:
    """The ``hytra`` model's backbone: the stand-alone network of ``path`` or the supernet."""
    if supernet:
        if path is not None:
            raise HundredError("hytra: give path (a stand-alone network) or supernet=true, "
                               "not both")
        return HyTraSupernet(**options)
    return HyTraNet(path, **options)
