"""Templated layers and their growth, for MixtureGrowth (:mod:`.methods.mixturegrowth`).

Pham, Teterwak, Nelson & Plummer, "MixtureGrowth: Growing Neural Networks by Recombining
Learned Parameters" (WACV 2024, arXiv 2311.04251). The layout follows the official code
(github.com/chaudatascience/mixturegrowth, read only, nothing copied):

* every conv/linear weight is a linear combination of parameter templates,
  ``W = sum_k alpha_k T_k``; each layer has two template banks (``bank 0``, ``bank 1``) of
  ``K`` templates of the small network's shape;
* the two small networks (members 0 and 1) each use their own bank with their own
  coefficients: ``W_0 = sum_k alpha_0k T^0_k``, ``W_1 = sum_k alpha_1k T^1_k``;
* the grown layer (2x the channels in and out) is the block matrix
  ``[[W_0, W_2], [W_3, W_1]]``: the diagonal blocks are the small networks' layers, the new
  off-diagonal blocks are new combinations of the learned banks (block 2 of bank 0, block 3
  of bank 1; ``member_template_sets = [0, 1, 0, 1]`` of the official code). A layer whose
  input is the image (the stem) stacks ``[W_0; W_1]``; a layer whose output is not widened
  (the classifier) is ``[W_0, W_1]``, its bias ``b_0 + b_1``;
* new coefficients at growth: ``orthogonal`` (the paper): each new block's coefficients are
  the last right-singular vector of the coefficients set before it (rows of the members and
  the new blocks before it), i.e. the direction least aligned with them, times ``scale``;
  ``random`` (the baseline): ``U(0, 1)^K x scale``, as the official ``coefs_growing=random``.

Templates are never re-initialised at growth: the grown layer combines the very same
parameter tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

WEIGHTED = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class LayerPlan:
    """How one large layer is made of small ones: ``split_out`` / ``split_in`` say whether the
    output / input dimension is doubled (two halves, member 0 first)."""

    name: str
    small_shape: tuple[int, ...]
    split_out: bool
    split_in: bool

    @property
    def blocks(self) -> int:
        """Number of blocks in the grown weight (4 when both dimensions double, else 2)."""
        return 4 if self.split_out and self.split_in else 2


def plan_layers(large: nn.Module, small: nn.Module) -> list[LayerPlan]:
    """The conv/linear layers of ``large`` with their relation to the same-named layers of
    ``small`` (a network of half the width). A layer neither equal to nor twice its small
    twin in each dimension, or a non-2d conv/linear layout, raises ValueError."""
    small_modules = dict(small.named_modules())
    plans = []
    for name, module in large.named_modules():
        if not isinstance(module, WEIGHTED):
            continue
        twin = small_modules.get(name)
        if not isinstance(twin, type(module)):
            raise ValueError(f"layer {name} has no twin in the half-width network")
        if isinstance(module, nn.Conv2d) and (module.groups != 1 or twin.groups != 1):
            raise ValueError(f"layer {name} is a grouped conv; templates need groups=1")
        big, few = tuple(module.weight.shape), tuple(twin.weight.shape)
        splits = []
        for dim in (0, 1):
            if big[dim] == 2 * few[dim]:
                splits.append(True)
            elif big[dim] == few[dim]:
                splits.append(False)
            else:
                raise ValueError(f"layer {name}: {big} is not the half-width {few} doubled")
        if big[2:] != few[2:] or not any(splits):
            raise ValueError(f"layer {name}: {big} does not grow from {few}")
        plans.append(LayerPlan(name, few, splits[0], splits[1]))
    return plans


class TemplatedLayer(nn.Module):
    """The weights of one layer: two banks of ``templates`` templates of the small shape
    (``bank0``, ``bank1``: ``(K, *small_shape)``) and one coefficient row per block
    (``coefficients``: ``(blocks, K)``; rows 0 and 1 are the small networks', rows 2 and 3
    the grown layer's new off-diagonal blocks)."""

    def __init__(self, plan: LayerPlan, templates: int, fan_out: bool) -> None:
        super().__init__()
        self.plan = plan
        self.bank0 = nn.Parameter(torch.empty(templates, *plan.small_shape))
        self.bank1 = nn.Parameter(torch.empty(templates, *plan.small_shape))
        for bank in (self.bank0, self.bank1):
            for template in bank.data:  # each template as the layer it stands for
                if fan_out:
                    nn.init.kaiming_normal_(template, mode="fan_out", nonlinearity="relu")
                else:
                    nn.init.kaiming_uniform_(template, a=5 ** 0.5)
        coefficients = torch.empty(plan.blocks, templates)
        nn.init.orthogonal_(coefficients)  # the official code's initialisation
        if templates >= 2:  # the two members: orthonormal rows (unit norm, so W ~ T in scale)
            nn.init.orthogonal_(coefficients[:2])
        self.coefficients = nn.Parameter(coefficients)

    def bank(self, block: int) -> nn.Parameter:
        """The template bank block ``block`` combines (``member_template_sets = [0,1,0,1]``)."""
        return self.bank0 if block % 2 == 0 else self.bank1

    def block_weight(self, block: int) -> torch.Tensor:
        """``sum_k alpha_{block,k} T^{bank(block)}_k``."""
        return torch.tensordot(self.coefficients[block], self.bank(block), dims=1)

    def member_weight(self, member: int) -> torch.Tensor:
        """The weight of small network ``member`` (0 or 1)."""
        return self.block_weight(member)

    def grown_weight(self, new_blocks: bool = True) -> torch.Tensor:
        """The grown layer's weight: ``[[W0, W2], [W3, W1]]`` (stem ``[W0; W1]``, classifier
        ``[W0, W1]``); ``new_blocks=False`` puts zeros in place of ``W2``, ``W3`` (the two small
        networks side by side, their logits summed)."""
        w0, w1 = self.block_weight(0), self.block_weight(1)
        if self.plan.blocks == 2:
            return torch.cat((w0, w1), dim=0 if self.plan.split_out else 1)
        if new_blocks:
            w2, w3 = self.block_weight(2), self.block_weight(3)
        else:
            w2, w3 = torch.zeros_like(w0), torch.zeros_like(w1)
        return torch.cat((torch.cat((w0, w2), dim=1), torch.cat((w3, w1), dim=1)), dim=0)

    @torch.no_grad()
    def init_new_blocks(self, mode: str, scale: float, generator: torch.Generator) -> None:
        """Set the coefficients of the new blocks (rows 2, 3) at growth: ``orthogonal`` (the
        paper) or ``random`` (``U(0,1)^K x scale``); the members' rows and the banks are kept."""
        for block in range(2, self.plan.blocks):
            if mode == "orthogonal":
                before = self.coefficients[:block].detach().double().cpu()
                direction = torch.linalg.svd(before, full_matrices=True).Vh[-1]
                new = direction * scale
            elif mode == "random":
                new = torch.rand(self.coefficients.shape[1], generator=generator) * scale
            else:
                raise ValueError(f"unknown new-block initialisation {mode!r}")
            self.coefficients[block].copy_(new.to(self.coefficients))


class TemplateNet(nn.Module):
    """The templated parameters of a whole network: one :class:`TemplatedLayer` per conv/linear
    layer of the large network (``layers[name with '.' -> '__']``)."""

    def __init__(self, plans: list[LayerPlan], templates: int) -> None:
        super().__init__()
        self.plans = {plan.name: plan for plan in plans}
        self.layers = nn.ModuleDict({
            key(plan.name): TemplatedLayer(plan, templates, fan_out=len(plan.small_shape) == 4)
            for plan in plans})

    def layer(self, name: str) -> TemplatedLayer:
        return self.layers[key(name)]

    def member_weights(self, member: int) -> dict[str, torch.Tensor]:
        """``{"<layer>.weight": W_member}`` for ``torch.func.functional_call`` on a small net."""
        return {f"{name}.weight": self.layer(name).member_weight(member) for name in self.plans}

    def grown_weights(self, new_blocks: bool = True) -> dict[str, torch.Tensor]:
        """``{"<layer>.weight": grown W}`` for ``functional_call`` on the large network."""
        return {f"{name}.weight": self.layer(name).grown_weight(new_blocks)
                for name in self.plans}

    def init_new_blocks(self, mode: str, scale: float, generator: torch.Generator) -> None:
        for layer in self.layers.values():
            layer.init_new_blocks(mode, scale, generator)


def key(name: str) -> str:
    """A module name as a ModuleDict key."""
    return name.replace(".", "__")


@torch.no_grad()
def grow_plain(large: nn.Module, small: tuple[nn.Module, nn.Module], net: TemplateNet,
               new_blocks: bool = True) -> None:
    """Write the grown network into the plain ``large`` one: every templated weight (the
    block matrix of :meth:`TemplatedLayer.grown_weight`), the biases (concatenated where the
    output doubles, summed where it does not) and every batch norm (the members' affine
    parameters and running statistics concatenated, member 0 first, as the official
    ``bn_growth``)."""
    weights = net.grown_weights(new_blocks)
    modules = [dict(s.named_modules()) for s in small]
    for name, module in large.named_modules():
        if f"{name}.weight" in weights:
            module.weight.copy_(weights[f"{name}.weight"])
            if module.bias is not None:
                a, b = modules[0][name].bias, modules[1][name].bias
                module.bias.copy_(torch.cat((a, b)) if net.plans[name].split_out else a + b)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            a, b = modules[0][name], modules[1][name]
            for attribute in ("weight", "bias", "running_mean", "running_var"):
                target = getattr(module, attribute)
                if target is not None:
                    target.copy_(torch.cat((getattr(a, attribute), getattr(b, attribute))))
            if module.num_batches_tracked is not None:
                module.num_batches_tracked.copy_(a.num_batches_tracked)


@torch.no_grad()
def write_weights(large: nn.Module, net: TemplateNet) -> None:
    """Copy the grown templated weights into ``large``'s own weight tensors (after every
    optimiser step once grown, so evaluation, EMA-free checkpoints and export see a plain
    network)."""
    weights = net.grown_weights()
    for name, module in large.named_modules():
        if f"{name}.weight" in weights:
            module.weight.copy_(weights[f"{name}.weight"])
