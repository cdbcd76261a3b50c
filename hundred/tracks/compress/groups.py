"""Channel groups of a network, shared by the structured-pruning methods (OTOv2, the uniform
baseline, TAS): which output channels can be removed together, which parameters they own,
what removing them saves in FLOPs, and their physical removal.

Grouping follows Torch-Pruning's dependency graph (Fang et al., "DepGraph: Towards Any
Structural Pruning", CVPR 2023): one :class:`ChannelGroup` per pruning group rooted at a
conv/linear layer's output channels (the classifier head's outputs are never pruned). Each
channel of a group is a *zero-invariant group* in the sense of OTO/OTOv2 (Chen et al., "Only
Train Once", NeurIPS 2021; "OTOv2: Automatic, Generic, User-Friendly", ICLR 2023, Sec. 3.1):
its parameters are the rows that produce it — the filter of every conv/linear layer whose
output it is (weight rows and bias), and the scale and shift of every normalisation layer
on it. When they are all zero the channel is zero whatever the input (with a zero-preserving
activation), so removing it together with the next layers' input columns, as Torch-Pruning
does, leaves the outputs unchanged. (The next layers' input columns are removed with the
channel but are not part of the group's norm, as in the official code: zeroing them is not
needed for the invariance.)

Every candidate group is checked, not trusted: on a copy, one channel's rows are zeroed, the
output recorded, the channel physically removed and the output compared (1e-5). A group
Torch-Pruning couples wrongly fails this and is left alone, listed in
:attr:`GroupSet.rejected` — e.g. the residual stream of the option-A CIFAR ResNets
(``resnet20/32/56``), whose zero-padding shortcut (``F.pad`` on channels) Torch-Pruning takes
for an element-wise op, so it couples the three stages' streams as if they had one width;
there only the blocks' inner widths are pruned. Groups of one channel are never candidates
(a layer keeps at least one channel).

FLOPs of a pruned shape are counted from the conv/linear layers (multiply-adds at the
traced input size, scaled by the kept input and output channels; a depthwise conv by its
output channels alone): :meth:`GroupSet.macs`. Normalisation and pooling, which fvcore counts
too, are left out, so the ratio to the dense count is slightly optimistic for the
measurement in the summary (both numbers are reported).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
from torch import nn

from hundred.errors import HundredError
from hundred.models.widths import (PRUNABLE, dependency_graph, example_input,
                                   refresh_feature_dim, structure_of)

NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
         nn.modules.instancenorm._InstanceNorm)
INVARIANCE_TOLERANCE = 1e-5


@dataclass
class Rows:
    """The entries of one parameter (``module.attr``) that belong to the group's channels:
    ``layer_idx[k]`` of its first dimension belongs to root channel ``root_idx[k]``."""

    module: str
    attr: str
    layer_idx: torch.Tensor
    root_idx: torch.Tensor


@dataclass
class ChannelGroup:
    """One Torch-Pruning group: ``channels`` root channels of the layer ``root``, the
    parameter rows each one owns, and the conv/linear layers whose output (``outputs``) or
    input (``inputs``) width it sets, with how many of their channels each root channel is
    (more than one after a flatten)."""

    root: str
    channels: int
    rows: list[Rows]
    outputs: list[tuple[str, torch.Tensor]]
    inputs: list[tuple[str, torch.Tensor]]


@dataclass
class LayerCost:
    """A conv/linear layer's dense widths and multiply-adds per (input x output) channel."""

    in_channels: int
    out_channels: int
    macs_per_pair: float
    depthwise: bool


@dataclass
class GroupSet:
    """The prunable channel groups of a model traced at ``image_size`` and its FLOPs model."""

    groups: list[ChannelGroup]
    layers: dict[str, LayerCost]
    image_size: int | None
    rejected: dict[str, str] = field(default_factory=dict)

    @property
    def num_channels(self) -> int:
        """The number of zero-invariant groups (channels of all groups)."""
        return sum(group.channels for group in self.groups)

    def macs(self, removed: Sequence[torch.Tensor] | None = None) -> float:
        """Multiply-adds of the conv/linear layers with ``removed[g]`` (a bool mask over the
        channels of group g) taken out; the dense count when ``removed`` is None."""
        state = _Widths(self)
        if removed is not None:
            for index, mask in enumerate(removed):
                for channel in torch.nonzero(mask).flatten().tolist():
                    state.remove(index, channel)
        return state.total

    def greedy(self, order: Iterable[tuple[int, int]], budget_macs: float,
               already: Sequence[torch.Tensor] | None = None) -> list[tuple[int, int]]:
        """Channels ``(group, channel)`` taken in ``order`` (skipping any that would empty
        its group) until the remaining multiply-adds are at most ``budget_macs``, on top of
        the channels ``already`` removed; returns the chosen ones (the whole candidate list
        when the budget cannot be met)."""
        state = _Widths(self)
        if already is not None:
            for index, mask in enumerate(already):
                for channel in torch.nonzero(mask).flatten().tolist():
                    state.remove(index, channel)
        chosen: list[tuple[int, int]] = []
        for index, channel in order:
            if state.total <= budget_macs:
                break
            if state.kept[index] <= 1 or state.is_removed(index, channel):
                continue
            state.remove(index, channel)
            chosen.append((index, channel))
        return chosen

    def uniform(self, flops_target: float) -> list[torch.Tensor]:
        """Removal masks thinning every group by one factor (each keeps ``max(1,
        round(r x channels))``, its first channels), with the largest ``r`` whose FLOPs are
        at most ``flops_target`` of the dense count; a HundredError when even one channel
        per group is above the target."""
        dense = self.macs()

        def masks(ratio: float) -> list[torch.Tensor]:
            return [torch.arange(group.channels) >= max(1, round(ratio * group.channels))
                    for group in self.groups]

        if self.macs(masks(0.0)) > flops_target * dense:
            floor = self.macs(masks(0.0)) / dense
            raise HundredError(f"the FLOPs target {flops_target} is out of reach: with one "
                               f"channel left in every prunable group the network keeps "
                               f"{floor:.3f} of its FLOPs (the unprunable layers' share)")
        low, high = 0.0, 1.0
        for _ in range(40):
            middle = (low + high) / 2
            if self.macs(masks(middle)) <= flops_target * dense:
                low = middle
            else:
                high = middle
        return masks(low)

    # -- parameters of the zero-invariant groups ---------------------------------------------
    def tensors(self, model: nn.Module, group: ChannelGroup
                ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(parameter, layer_idx, root_idx)`` of every row set of ``group`` in ``model`` (the
        traced model or a copy of it), the indices on the parameter's device."""
        modules = dict(model.named_modules())
        found = []
        for rows in group.rows:
            parameter = getattr(modules[rows.module], rows.attr)
            found.append((parameter, rows.layer_idx.to(parameter.device),
                          rows.root_idx.to(parameter.device)))
        return found

    def norms(self, model: nn.Module) -> list[torch.Tensor]:
        """The L2 norm of every channel's parameters, group by group."""
        result = []
        for group in self.groups:
            squares = None
            for parameter, layer_idx, root_idx in self.tensors(model, group):
                rows = parameter.detach()[layer_idx].reshape(len(layer_idx), -1).float()
                part = torch.zeros(group.channels, device=rows.device).index_add_(
                    0, root_idx, rows.pow(2).sum(1))
                squares = part if squares is None else squares + part
            result.append(squares.sqrt())
        return result

    @torch.no_grad()
    def zero(self, model: nn.Module, masks: Sequence[torch.Tensor]) -> None:
        """Set the parameters of the channels ``masks[g]`` of every group to zero."""
        for group, mask in zip(self.groups, masks):
            for parameter, layer_idx, root_idx in self.tensors(model, group):
                selected = mask.to(parameter.device)[root_idx]
                parameter[layer_idx[selected]] = 0

    def zero_masks(self, model: nn.Module) -> list[torch.Tensor]:
        """Which channels of each group are exactly zero in ``model``."""
        return [norm.cpu() == 0 for norm in self.norms(model)]

    def remove(self, model: nn.Module, masks: Sequence[torch.Tensor], in_place: bool = False
               ) -> nn.Module:
        """A copy of ``model`` (``model`` itself with ``in_place``) with the channels
        ``masks[g]`` physically removed (and, with them, every coupled layer's channels:
        Torch-Pruning)."""
        pruned = model if in_place else copy.deepcopy(model)
        graph = dependency_graph(pruned, self.image_size, "the model")
        modules = dict(pruned.named_modules())
        for group, mask in zip(self.groups, masks):
            channels = torch.nonzero(mask).flatten().tolist()
            if not channels:
                continue
            if len(channels) >= group.channels:
                raise HundredError(f"removing every channel of {group.root} would cut the "
                                   "network")
            module = modules[group.root]
            graph.get_pruning_group(module, graph.get_pruner_of_module(module)
                                    .prune_out_channels, idxs=channels).prune()
        refresh_feature_dim(pruned, self.image_size)
        return pruned


class _Widths:
    """Kept channels of every group and layer during a removal, with the running total of
    multiply-adds."""

    def __init__(self, groups: GroupSet) -> None:
        self.groups = groups
        self.in_kept = {name: float(cost.in_channels) for name, cost in groups.layers.items()}
        self.out_kept = {name: float(cost.out_channels) for name, cost in groups.layers.items()}
        self.kept = [group.channels for group in groups.groups]
        self.removed: set[tuple[int, int]] = set()
        self.total = sum(self._layer(name) for name in groups.layers)

    def _layer(self, name: str) -> float:
        cost = self.groups.layers[name]
        inputs = 1.0 if cost.depthwise else self.in_kept[name]
        return cost.macs_per_pair * inputs * self.out_kept[name]

    def is_removed(self, index: int, channel: int) -> bool:
        return (index, channel) in self.removed

    def remove(self, index: int, channel: int) -> None:
        group = self.groups.groups[index]
        touched = {name for name, _ in group.outputs} | {name for name, _ in group.inputs}
        touched &= self.groups.layers.keys()
        self.total -= sum(self._layer(name) for name in touched)
        for name, counts in group.outputs:
            if name in self.out_kept:
                self.out_kept[name] -= float(counts[channel])
        for name, counts in group.inputs:
            if name in self.in_kept:
                self.in_kept[name] -= float(counts[channel])
        self.total += sum(self._layer(name) for name in touched)
        self.kept[index] -= 1
        self.removed.add((index, channel))


def _layer_costs(model: nn.Module, image_size: int | None) -> dict[str, LayerCost]:
    """Dense widths and multiply-adds per channel pair of every conv/linear layer, from one
    traced forward pass at batch 1."""
    positions: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE):
            def record(_module: nn.Module, _inputs: object, output: torch.Tensor,
                       name: str = name) -> None:
                width = structure_of(_module)[""]
                positions[name] = positions.get(name, 0) + output.numel() // width
            hooks.append(module.register_forward_hook(record))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input(model, image_size))
    finally:
        model.train(was)
        for hook in hooks:
            hook.remove()
    costs = {}
    for name, module in model.named_modules():
        if name not in positions:
            continue
        if isinstance(module, nn.Linear):
            costs[name] = LayerCost(module.in_features, module.out_features,
                                    float(positions[name]), False)
        else:
            kernel = float(torch.tensor(module.kernel_size).prod())
            depthwise = module.groups > 1 and module.groups == module.in_channels
            per_pair = positions[name] * kernel / (1 if depthwise else module.groups)
            costs[name] = LayerCost(module.in_channels, module.out_channels, per_pair,
                                    depthwise)
    return costs


def _describe(graph: object, tp_group: object, names: dict[nn.Module, str], root: str,
              channels: int) -> ChannelGroup | str:
    """A Torch-Pruning group as a :class:`ChannelGroup`, or why it cannot be one."""
    rows: list[Rows] = []
    outputs: list[tuple[str, torch.Tensor]] = []
    inputs: list[tuple[str, torch.Tensor]] = []
    for item in tp_group.items:
        module = item.dep.target.module
        name = names.get(module) if isinstance(module, nn.Module) else None
        root_idxs = getattr(item, "root_idxs", None)
        if name is None:
            if isinstance(module, nn.Parameter) or any(
                    True for _ in getattr(module, "parameters", lambda: [])()):
                return ("it includes a parameter outside a conv/linear/norm layer "
                        f"({type(module).__name__} of shape {tuple(getattr(module, 'shape', ()))})")
            continue
        if root_idxs is None or any(index is None for index in root_idxs):
            return f"{name}: channels without a root index (e.g. attention heads)"
        root_idx = torch.tensor([int(i) for i in root_idxs], dtype=torch.long)
        layer_idx = torch.tensor([int(i) for i in item.idxs], dtype=torch.long)
        counts = torch.bincount(root_idx, minlength=channels)
        out_side = graph.is_out_channel_pruning_fn(item.dep.handler)
        if isinstance(module, PRUNABLE):
            (outputs if out_side else inputs).append((name, counts))
        if not out_side or not any(True for _ in module.parameters(recurse=False)):
            continue
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, *NORMS)):
            if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) != 1:
                return f"{name}: a LayerNorm over more than one dimension"
            for attr in ("weight", "bias"):
                if getattr(module, attr, None) is not None:
                    rows.append(Rows(name, attr, layer_idx, root_idx))
        else:
            return f"{name}: a {type(module).__name__}, whose parameters are not grouped here"
    return ChannelGroup(root, channels, rows, outputs, inputs)


def find_groups(model: nn.Module, image_size: int | None, what: str = "the model",
                check: bool = True) -> GroupSet:
    """The prunable channel groups of ``model`` (a Classifier: its head's outputs are kept),
    each checked for zero invariance on a copy unless ``check`` is off. A model Torch-Pruning
    cannot trace, or one without a single prunable group, is a HundredError."""
    graph = dependency_graph(model, image_size, what)
    names = {module: name for name, module in model.named_modules()}
    head = getattr(model, "head", None)
    ignored = [head] if isinstance(head, nn.Module) else []
    candidates: list[ChannelGroup] = []
    rejected: dict[str, str] = {}
    for tp_group in graph.get_all_groups(ignored_layers=ignored, root_module_types=PRUNABLE):
        module = tp_group[0].dep.target.module
        root = names.get(module)
        if root is None:
            continue
        channels = structure_of(module)[""]
        if channels < 2:
            continue
        described = _describe(graph, tp_group, names, root, channels)
        if isinstance(described, str):
            rejected[root] = described
        else:
            candidates.append(described)
    layers = _layer_costs(model, image_size)
    groups = GroupSet(candidates, layers, image_size, rejected)
    if check:
        groups = _checked(model, groups)
    if not groups.groups:
        reasons = "; ".join(f"{root}: {why}" for root, why in list(groups.rejected.items())[:3])
        raise HundredError(f"{what} has no channel group Torch-Pruning can remove"
                           + (f" ({reasons})" if reasons else ""))
    return groups


@torch.no_grad()
def _checked(model: nn.Module, groups: GroupSet) -> GroupSet:
    """``groups`` less those that are not zero-invariant under Torch-Pruning's removal: on a
    copy (eval mode), zero channel 0 of a group, remove it, compare the outputs."""
    inputs = example_input(model, groups.image_size).repeat(2, 1, 1, 1)
    inputs.normal_()
    kept: list[ChannelGroup] = []
    rejected = dict(groups.rejected)
    probe = None
    for group in groups.groups:
        if probe is None:
            probe = copy.deepcopy(model).eval()
            graph = dependency_graph(probe, groups.image_size, "the model")
            modules = dict(probe.named_modules())
        single = GroupSet([group], groups.layers, groups.image_size)
        try:
            mask = torch.zeros(group.channels, dtype=torch.bool)
            mask[0] = True
            single.zero(probe, [mask])
            before = probe(inputs)
            module = modules[group.root]
            graph.get_pruning_group(module, graph.get_pruner_of_module(module)
                                    .prune_out_channels, idxs=[0]).prune()
            after = probe(inputs)
            scale = max(1.0, float(before.abs().max()))
            same = before.shape == after.shape and bool(
                (before - after).abs().max() <= INVARIANCE_TOLERANCE * scale)
            reason = "removing a zeroed channel changes the outputs (Torch-Pruning's " \
                     "coupling does not match the network, e.g. a zero-padded shortcut)"
        except Exception as error:  # noqa: BLE001 - a failed removal rejects the group
            same, reason = False, f"removing a channel fails ({type(error).__name__})"
        if same:
            # the probe's row indices shifted for this group only; later groups are intact
            kept.append(group)
        else:
            rejected[group.root] = reason
            probe = None  # the probe may be broken: start a fresh one
    return GroupSet(kept, groups.layers, groups.image_size, rejected)
