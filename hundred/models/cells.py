"""A small DARTS-like cell search space: a genome of integers that NSGA-II can mutate and
cross over, and the network (:class:`CellNet`, the model ``cellnet``) it describes.

The space follows DARTS (Liu et al., ICLR 2019) as EEEA-Net (Termritthikun et al., EAAI 2021)
uses it: two cell types, *normal* (stride 1) and *reduction* (stride 2 on the cell inputs),
each with ``nodes`` intermediate nodes; node ``i`` sums two operations applied to two earlier
states (the two cell inputs ``0, 1`` or an earlier node ``2 .. i + 1``), and the cell's output
concatenates all intermediate nodes. The operations are EEEA-Net's seven (no ``none``):
:data:`OPERATIONS`.

Genome layout (``genome_length(nodes) = 8 x nodes`` integers): normal cell then reduction
cell; per cell, per node, per input: ``(input index, operation index)``. The input index of
node ``i`` lies in ``[0, i + 1]``, the operation index in ``[0, 6]`` (:func:`genome_bounds`).

The network: a 3x3 stem to ``3 x channels``, ``layers`` cells with reductions at
``layers // 3`` and ``2 * layers // 3`` (channels doubled at each, as DARTS), global average
pooling to ``feature_dim`` features. Not included (the search's proxy does not use them):
drop-path, the auxiliary head.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from hundred.errors import HundredError

OPERATIONS: tuple[str, ...] = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
                               "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")


def genome_length(nodes: int) -> int:
    """Integers in a genome of a space with ``nodes`` intermediate nodes per cell."""
    return 2 * nodes * 4


def genome_bounds(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive lower and upper bounds of every genome entry."""
    upper = []
    for _cell in range(2):
        for node in range(nodes):
            upper += [node + 1, len(OPERATIONS) - 1] * 2
    return np.zeros(len(upper), dtype=int), np.array(upper, dtype=int)


def random_genome(nodes: int, rng: np.random.Generator) -> list[int]:
    """A genome drawn uniformly entry by entry within :func:`genome_bounds`."""
    low, high = genome_bounds(nodes)
    return [int(v) for v in rng.integers(low, high + 1)]


def check_genome(genome: Sequence[int], nodes: int) -> list[int]:
    """``genome`` as a list of ints; a HundredError if it does not fit the space."""
    values = [int(v) for v in genome]
    low, high = genome_bounds(nodes)
    if len(values) != len(high):
        raise HundredError(f"cellnet genome has {len(values)} entries; {nodes} nodes per cell "
                           f"need {len(high)} (8 x nodes)")
    bad = [i for i, v in enumerate(values) if not low[i] <= v <= high[i]]
    if bad:
        raise HundredError(f"cellnet genome entries {bad[:4]} are outside their bounds "
                           f"(input index <= node + 1, operation index <= {len(OPERATIONS) - 1})")
    return values


def describe(genome: Sequence[int], nodes: int) -> dict[str, list[list[tuple[int, str]]]]:
    """The genome as readable cells: per cell type, per node, its two (input, operation)."""
    out: dict[str, list[list[tuple[int, str]]]] = {}
    for c, cell in enumerate(("normal", "reduce")):
        part = genome[c * nodes * 4:(c + 1) * nodes * 4]
        out[cell] = [[(int(part[4 * n + 2 * k]), OPERATIONS[int(part[4 * n + 2 * k + 1])])
                      for k in range(2)] for n in range(nodes)]
    return out


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int,
                 dilation: int = 1) -> None:
        super().__init__(nn.ReLU(), nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation,
                                              bias=False), nn.BatchNorm2d(c_out))


class DilConv(nn.Sequential):
    """ReLU, depthwise (dilated) conv, pointwise conv, BN (DARTS)."""

    def __init__(self, c: int, kernel: int, stride: int, padding: int, dilation: int) -> None:
        super().__init__(nn.ReLU(), nn.Conv2d(c, c, kernel, stride, padding, dilation, groups=c,
                                              bias=False),
                         nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))


class SepConv(nn.Sequential):
    """Two stacked depthwise-separable convs (the first carries the stride), as DARTS."""

    def __init__(self, c: int, kernel: int, stride: int) -> None:
        pad = kernel // 2
        super().__init__(DilConv(c, kernel, stride, pad, 1), DilConv(c, kernel, 1, pad, 1))


class FactorizedReduce(nn.Module):
    """Halve the resolution with two offset stride-2 1x1 convs, concatenated (DARTS)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
        self.conv2 = nn.Conv2d(c_in, c_out - c_out // 2, 1, 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = nn.functional.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        return self.bn(torch.cat([self.conv1(x), self.conv2(shifted)], dim=1))


def make_operation(name: str, c: int, stride: int) -> nn.Module:
    if name == "max_pool_3x3":
        return nn.MaxPool2d(3, stride, 1)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride, 1, count_include_pad=False)
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c)
    if name.startswith("sep_conv"):
        return SepConv(c, int(name[-1]), stride)
    if name.startswith("dil_conv"):
        k = int(name[-1])
        return DilConv(c, k, stride, 2 * (k // 2), 2)
    raise HundredError(f"unknown cell operation {name!r}")


class Cell(nn.Module):
    def __init__(self, part: Sequence[int], nodes: int, c_pp: int, c_p: int, c: int,
                 reduction: bool, reduction_prev: bool) -> None:
        super().__init__()
        self.pre0 = FactorizedReduce(c_pp, c) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, 0)
        self.pre1 = ReLUConvBN(c_p, c, 1, 1, 0)
        self.inputs = [int(part[4 * n + 2 * k]) for n in range(nodes) for k in range(2)]
        self.ops = nn.ModuleList(
            make_operation(OPERATIONS[int(part[4 * n + 2 * k + 1])], c,
                           2 if reduction and int(part[4 * n + 2 * k]) < 2 else 1)
            for n in range(nodes) for k in range(2))
        self.nodes = nodes

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        for n in range(self.nodes):
            states.append(sum(self.ops[2 * n + k](states[self.inputs[2 * n + k]])
                              for k in range(2)))
        return torch.cat(states[2:], dim=1)


class CellNet(nn.Module):
    """The network a genome describes (a backbone: ``forward_features`` -> ``(B, D)``)."""

    def __init__(self, genome: Sequence[int], channels: int = 16, layers: int = 8,
                 nodes: int = 4, stem_multiplier: int = 3) -> None:
        super().__init__()
        if channels < 2 or layers < 1 or nodes < 1:
            raise HundredError(f"cellnet needs channels >= 2, layers >= 1 and nodes >= 1, got "
                               f"{channels}, {layers}, {nodes}")
        genome = check_genome(genome, nodes)
        normal, reduce = genome[:nodes * 4], genome[nodes * 4:]
        c_cur = stem_multiplier * channels
        self.stem = nn.Sequential(nn.Conv2d(3, c_cur, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(c_cur))
        c_pp, c_p, c = c_cur, c_cur, channels
        reductions = {layers // 3, 2 * layers // 3} if layers >= 3 else set()
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                c *= 2
            self.cells.append(Cell(reduce if reduction else normal, nodes, c_pp, c_p, c,
                                   reduction, reduction_prev))
            reduction_prev = reduction
            c_pp, c_p = c_p, nodes * c
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = c_p

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.pool(s1).flatten(1)


def cellnet(img_size: int = 32, genome: Sequence[int] | None = None, channels: int = 16,
            layers: int = 8, nodes: int = 4) -> CellNet:
    """The ``cellnet`` model builder (``model.options``: genome, channels, layers, nodes)."""
    if genome is None:
        raise HundredError("model cellnet needs model.options.genome (a list of 8 x nodes "
                           "integers, e.g. from a compress/eeea run's summary)")
    return CellNet(genome, channels=channels, layers=layers, nodes=nodes)
