"""Read a backbone's intermediate stage outputs during the ordinary forward pass.

Self-distillation methods (USKD's weak head, LSSKD's auxiliary classifiers) need the outputs
of a model's stages, but must keep calling ``model(images)``: under DDP the forward has to go
through the wrapper so that its gradient hooks see it. Forward hooks on the stage modules
record their outputs while the wrapper runs, so nothing about the model changes: its
``state_dict`` stays the plain architecture's and evaluation runs it as usual.

* :func:`unwrap` — the module under DDP (``.module``) and torch.compile (``._orig_mod``).
* :func:`stage_modules` — the stages of a model, in order: the local CIFAR ResNets' three
  stages, ConvNet-D's conv blocks, a timm ResNet's ``layer1..layer4``, a timm ViT's
  ``blocks`` split into equal groups (the last block of each group).
* :func:`stage_shapes` / :func:`stage_channels` — each stage's output shape / channel count
  (one dummy forward in eval mode), to build auxiliary heads in ``Method.setup``.
* :func:`capture_stages` — a one-shot context manager: hooks on, run, hooks removed.
* :class:`StageTaps` — hooks registered once (in ``setup``) that record only inside
  :meth:`StageTaps.capture`. Methods use this one: registering fresh hooks every step would
  make torch.compile re-trace its graph each time (hooks are part of what it guards on).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from hundred.errors import HundredError

__all__ = ["StageTaps", "capture_stages", "pool_stage_output", "stage_channels",
           "stage_modules", "stage_shapes", "unwrap"]


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _vit_groups(depth: int, groups: int | None) -> int:
    """How many stages a ViT of ``depth`` blocks is split into: ``groups`` if given, else 4
    when the depth allows (the four stages of a ResNet), else 3."""
    if groups is None:
        groups = next((g for g in (4, 3) if depth % g == 0), None)
        if groups is None:
            raise HundredError(f"a ViT of depth {depth} does not split into 3 or 4 equal stages; "
                               "give the number of groups")
    if groups < 1 or depth % groups != 0:
        raise HundredError(f"a ViT of depth {depth} does not split into {groups} equal stages")
    return groups


def stage_modules(model: nn.Module, vit_groups: int | None = None) -> list[nn.Module]:
    """The modules whose outputs are the backbone's stage outputs, shallow to deep.

    ``model`` is a :class:`hundred.models.Classifier`, its backbone, or either under DDP /
    torch.compile. Local CIFAR ResNets: the three ``backbone.stages``; ConvNet-D: the average
    pool closing each conv block; timm ResNets: ``layer1..layer4``; timm models with a
    ``stages`` sequence (ConvNeXt ...): its children; timm ViTs: the last block of each of
    ``vit_groups`` equal groups of ``blocks`` (default 4 if the depth allows, else 3).
    Anything else is a HundredError.
    """
    from hundred.models import TimmBackbone
    from hundred.models.backbones import CifarResNet, ConvNet

    module = unwrap(model)
    backbone = getattr(module, "backbone", module)
    if isinstance(backbone, CifarResNet):
        return list(backbone.stages.children())
    if isinstance(backbone, ConvNet):
        return [m for m in backbone.layers if isinstance(m, nn.AvgPool2d)]
    inner = backbone.model if isinstance(backbone, TimmBackbone) else backbone
    layers = [getattr(inner, f"layer{i}", None) for i in range(1, 5)]
    if all(layer is not None for layer in layers):
        return layers
    stages = getattr(inner, "stages", None)
    if isinstance(stages, nn.Sequential) and len(stages) > 1:  # ConvNeXt, RegNet-style timm
        return list(stages.children())
    blocks = getattr(inner, "blocks", None)
    if isinstance(blocks, nn.Sequential) and hasattr(inner, "patch_embed"):
        groups = _vit_groups(len(blocks), vit_groups)
        size = len(blocks) // groups
        return [blocks[(g + 1) * size - 1] for g in range(groups)]
    raise HundredError(f"cannot find the stages of {type(inner).__name__}: stage taps know the "
                       "local CIFAR ResNets and ConvNets, timm ResNets (layer1..layer4) and "
                       "timm ViTs (blocks)")


def _first_tensor(output: object) -> torch.Tensor:
    """A stage's output tensor (some timm blocks return tuples)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise HundredError(f"a stage returned {type(output).__name__}, not a tensor")


class StageTaps:
    """Forward hooks on ``stages`` (default: :func:`stage_modules` of ``model``), registered
    once, that record the stage outputs only inside :meth:`capture`::

        taps = StageTaps(model)                # in setup, before the trainer compiles
        with taps.capture() as outputs:        # in loss
            logits = model(images)             # the wrapper's forward: DDP sees it
        weak = head(outputs[-2].mean((2, 3)))  # outputs: one tensor per stage, in order

    Outside :meth:`capture` the hooks do nothing (evaluation, EMA). :meth:`remove` takes the
    hooks off. The outputs keep their autograd graph, so losses on them train the backbone.
    """

    def __init__(self, model: nn.Module, stages: Sequence[nn.Module] | None = None) -> None:
        self.model = unwrap(model)
        self.stages = list(stage_modules(self.model) if stages is None else stages)
        self._outputs: list[torch.Tensor | None] | None = None
        self._handles = [stage.register_forward_hook(self._hook(index))
                         for index, stage in enumerate(self.stages)]

    def _hook(self, index: int):
        def record(module: nn.Module, inputs: object, output: object) -> None:
            if self._outputs is not None:
                self._outputs[index] = _first_tensor(output)
        return record

    @contextmanager
    def capture(self) -> Iterator[list[torch.Tensor]]:
        """Record the stages' outputs of the forward passes run inside the block; the list
        yielded is filled in place (one tensor per stage, the last forward's) when it ends."""
        if self._outputs is not None:
            raise RuntimeError("StageTaps.capture is not re-entrant")
        outputs: list[torch.Tensor] = []
        self._outputs = [None] * len(self.stages)
        try:
            yield outputs
            missing = [i for i, out in enumerate(self._outputs) if out is None]
            if missing:
                raise HundredError(f"stages {missing} did not run in the captured forward pass "
                                   "(is this the model the taps were built on?)")
            outputs.extend(self._outputs)  # type: ignore[arg-type]
        finally:
            self._outputs = None

    def remove(self) -> None:
        """Take the hooks off the model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def active(self) -> bool:
        """Whether the hooks are still on the model."""
        return bool(self._handles)


@contextmanager
def capture_stages(model: nn.Module, stages: Sequence[nn.Module] | None = None
                   ) -> Iterator[list[torch.Tensor]]:
    """One-shot capture: hooks on for the block, then removed. The yielded list holds one
    output per stage once the block ends. For a training loop use :class:`StageTaps`."""
    taps = StageTaps(model, stages)
    try:
        with taps.capture() as outputs:
            yield outputs
    finally:
        taps.remove()


@torch.no_grad()
def stage_shapes(model: nn.Module, image_size: int, stages: Sequence[nn.Module] | None = None
                 ) -> list[tuple[int, ...]]:
    """The output shape of each stage (batch dimension 1) for ``image_size`` px RGB inputs:
    one dummy forward in eval mode (batch-norm statistics are not touched), on the model's
    device; the model's train/eval mode is restored afterwards."""
    module = unwrap(model)
    parameter = next(module.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = module.training
    module.eval()
    try:
        with capture_stages(module, stages) as outputs:
            module(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        module.train(was_training)
    return [tuple(out.shape) for out in outputs]


def stage_channels(model: nn.Module, image_size: int,
                   stages: Sequence[nn.Module] | None = None) -> list[int]:
    """Each stage's output channels: dimension 1 of a feature map (B, C, H, W), the last
    dimension of a token sequence (B, N, D)."""
    return [shape[1] if len(shape) == 4 else shape[-1]
            for shape in stage_shapes(model, image_size, stages)]


def pool_stage_output(output: torch.Tensor) -> torch.Tensor:
    """A stage output as one vector per image: global average pooling of a feature map
    (B, C, H, W), the mean over tokens of a token sequence (B, N, D)."""
    if output.dim() == 4:
        return output.mean(dim=(2, 3))
    if output.dim() == 3:
        return output.mean(dim=1)
    if output.dim() == 2:
        return output
    raise HundredError(f"cannot pool a stage output of shape {tuple(output.shape)}")
