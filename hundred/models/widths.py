"""Width plans: a structurally pruned network described by its layer widths.

A width plan is the reserved model option ``pruned_widths: {module name: output width}``
(the names and widths of :func:`hundred.engine.cost.structure`: every ``nn.Conv*`` /
``nn.Linear`` of the :class:`~hundred.models.Classifier`, e.g. ``backbone.stages.0.0.conv1``).
:func:`hundred.models.create` pops it and applies it to the dense network it built, before
any weight is loaded, with Torch-Pruning's dependency graph (Fang et al., "DepGraph: Towards
Any Structural Pruning", CVPR 2023): each listed layer's output channels are cut down to its
width and every coupled layer follows (the next layers' inputs, batch norms, the other
members of a residual sum). The same code therefore builds a pruned local ResNet and a
pruned timm model, and every structured-pruning method (OTOv2, TAS, the uniform baseline)
exports its shape the same way.

The kept channels are the first ``width`` ones: a plan fixes shapes, not which channels
survived (the weights loaded afterwards carry that). The plan must be consistent: afterwards
every listed layer has its width and every unlisted conv/linear layer its dense width,
else a HundredError (a plan that Torch-Pruning couples differently, e.g. the stream of an
option-A ResNet whose zero-padded shortcut it cannot follow, is refused rather than built
wrong).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from hundred.errors import HundredError

OPTION = "pruned_widths"
PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def structure_of(model: nn.Module) -> dict[str, int]:
    """The output width of every conv/linear layer of ``model`` by module name (the
    summary's ``structure``)."""
    return {name: int(module.out_features if isinstance(module, nn.Linear)
                      else module.out_channels)
            for name, module in model.named_modules() if isinstance(module, PRUNABLE)}


def example_input(model: nn.Module, img_size: int | None) -> torch.Tensor:
    """A batch of one random image at ``img_size`` (else the timm model's default input
    size, else 32 px) on the model's device, for tracing."""
    size = img_size
    if size is None:
        inner = getattr(getattr(model, "backbone", model), "model", None)
        config = getattr(inner, "pretrained_cfg", None) or {}
        shape = config.get("input_size") if isinstance(config, dict) else None
        size = int(shape[-1]) if shape else 32
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    return torch.randn(1, 3, size, size, device=device)


def dependency_graph(model: nn.Module, img_size: int | None, what: str = "model") -> Any:
    """Torch-Pruning's dependency graph of ``model`` traced at ``img_size``; a model it
    cannot trace is a HundredError."""
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():  # Torch-Pruning traces through autograd
            return tp.DependencyGraph().build_dependency(
                model, example_input(model, img_size), verbose=False)
    except Exception as error:  # noqa: BLE001 - any tracing failure is the same bad input
        first = (str(error).splitlines() or [type(error).__name__])[0][:300]
        raise HundredError(f"Torch-Pruning cannot trace {what} ({type(error).__name__}: "
                           f"{first}), so its channels cannot be pruned") from None
    finally:
        model.train(was_training)


def check_plan(widths: Any) -> dict[str, int]:
    """``widths`` as a ``{module name: positive int}`` dict, or a HundredError."""
    if not isinstance(widths, Mapping):
        raise HundredError(f"model.options.{OPTION} must be a mapping of module name to "
                           f"output width, got {type(widths).__name__}")
    plan = {}
    for name, width in widths.items():
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise HundredError(f"model.options.{OPTION}: the width of {name!r} must be a "
                               f"positive integer, got {width!r}")
        plan[str(name)] = width
    return plan


def apply_widths(model: nn.Module, widths: Mapping[str, int], img_size: int | None,
                 description: str = "the model") -> nn.Module:
    """Cut ``model`` (built dense) down to the plan ``widths`` in place and return it (see
    the module docstring); works on the meta device (shapes only)."""
    plan = check_plan(widths)
    if not plan:
        return model
    dense = structure_of(model)
    unknown = sorted(set(plan) - set(dense))
    if unknown:
        raise HundredError(f"model.options.{OPTION} names {', '.join(unknown[:4])}, which "
                           f"{description} has no conv/linear layer called so")
    wider = sorted(name for name, width in plan.items() if width > dense[name])
    if wider:
        raise HundredError(f"model.options.{OPTION}: {wider[0]} is {dense[wider[0]]} wide in "
                           f"{description}; a plan can only narrow a layer")
    graph = dependency_graph(model, img_size, description)
    modules = dict(model.named_modules())
    for name, width in plan.items():
        module = modules[name]
        current = structure_of(module)[""]
        if current <= width:
            continue
        pruner = graph.get_pruner_of_module(module)
        group = graph.get_pruning_group(module, pruner.prune_out_channels,
                                        idxs=list(range(width, current)))
        group.prune()
    refresh_feature_dim(model, img_size)
    expected = {**dense, **plan}
    built = structure_of(model)
    wrong = [name for name in expected if built.get(name) != expected[name]]
    if wrong:
        shown = ", ".join(f"{name} {built.get(name)} (planned {expected[name]})"
                          for name in wrong[:4])
        raise HundredError(f"model.options.{OPTION} is not a consistent plan for "
                           f"{description}: Torch-Pruning's coupling gives {shown}")
    return model


def refresh_feature_dim(model: nn.Module, img_size: int | None) -> None:
    """Set a pruned Classifier's ``backbone.feature_dim`` to the width its features now have
    (one forward pass in eval mode)."""
    backbone = getattr(model, "backbone", None)
    if backbone is None or not hasattr(backbone, "feature_dim"):
        return
    was = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            features = backbone.forward_features(example_input(model, img_size))
    finally:
        backbone.train(was)
    backbone.feature_dim = int(features.shape[1])
