"""Interpreters of an interpretable deep learning system (IDLS), and the system itself.

QuScore (Abdukhamidov, Abuhamad, Woo, Chan-Tin & Abuhmed, "Microbial Genetic Algorithm-based
Black-box Attack against Interpretable Deep Learning Systems", arXiv 2307.06496, 2023) attacks
a classifier *coupled with* an interpreter, the two interpreters of its evaluation being:

* ``cam`` — CAM (Zhou et al., CVPR 2016): ``M_c = sum_k w_ck A_k`` over the last convolutional
  maps ``A_k``, ``w_c`` the linear head's row of class ``c``. It is computed with captum's
  ``LayerGradCam`` on the backbone's last stage, without the ReLU: for a globally pooled
  backbone with a linear head (the CIFAR ResNets, timm ResNets) Grad-CAM's channel weights are
  ``w_ck / (h w)``, so the map is CAM up to a positive factor that the normalisation removes.
  For a backbone without global pooling (ConvNet-D: flatten + linear) it is Grad-CAM, the usual
  generalisation of CAM to such heads. Upsampled bilinearly to the input size.
* ``grad`` — the vanilla gradient saliency map (Simonyan et al., ICLR-W 2014): captum's
  ``Saliency`` (``|d logit_c / d x|``), the maximum over colour channels.

Both maps are min-max normalised per image to ``[0, 1]`` (the official QuScore code's
post-processing of its gradient maps), shape ``[N, H, W]``. The class ``c`` is the system's
predicted class unless a target is given.

:class:`InterpretableSystem` is the *target* of the attack: a pixel-space classifier (the
robust track wraps ``model(normalise(x01))``) together with one interpreter. Its one public
operation, :meth:`InterpretableSystem.query`, takes pixel-space images and returns the
detached class probabilities and interpretation maps, counting every image as one query. The
interpreter may differentiate the model: that is the system's own computation. The attacker
sees only what ``query`` returns.

:func:`differentiable_map` is the same two maps built with ``create_graph=True`` for a model
the *attacker* owns (QuScore's transfer stage shapes its initial population on a surrogate
model with an interpretation loss); it agrees with the captum maps (tested).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from hundred.errors import HundredError

__all__ = ["INTERPRETERS", "Interpreter", "InterpretableSystem", "cam_layer", "cam_map",
           "differentiable_map", "get_interpreter", "gradient_map", "normalise_maps"]

# interpret(model, images01, target) -> maps [N, H, W] in [0, 1]
Interpreter = Callable[[nn.Module, torch.Tensor, torch.Tensor | None], torch.Tensor]


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Per-image min-max normalisation of ``[N, H, W]`` maps to ``[0, 1]`` (a constant map
    becomes all zeros)."""
    flat = maps.flatten(1)
    low = flat.min(1, keepdim=True).values
    flat = flat - low
    high = flat.max(1, keepdim=True).values.clamp_min(1e-12)
    return (flat / high).view_as(maps)


def cam_layer(model: nn.Module) -> nn.Module:
    """The module whose output CAM weights: the last stage of the first
    :class:`hundred.models.Classifier` inside ``model`` (a pixel-space wrapper is searched
    through), else the last ``Conv2d``."""
    from hundred.models import Classifier
    from hundred.models.taps import stage_modules

    for module in model.modules():
        if isinstance(module, Classifier):
            return stage_modules(module)[-1]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise HundredError(f"no convolutional layer in {type(model).__name__} to compute CAM on")
    return convs[-1]


def _predicted(model: nn.Module, images: torch.Tensor, target: torch.Tensor | None
               ) -> torch.Tensor:
    if target is not None:
        return target.to(images.device).long()
    with torch.no_grad():
        return model(images).argmax(1)


def cam_map(model: nn.Module, images: torch.Tensor, target: torch.Tensor | None = None
            ) -> torch.Tensor:
    """CAM (Grad-CAM on the last stage, no ReLU; see the module docstring), ``[N, H, W]``."""
    from captum.attr import LayerAttribution, LayerGradCam

    target = _predicted(model, images, target)
    with torch.enable_grad():
        attribution = LayerGradCam(model, cam_layer(model)).attribute(
            images, target=target, relu_attributions=False)
    attribution = LayerAttribution.interpolate(attribution.detach(), tuple(images.shape[-2:]),
                                               interpolate_mode="bilinear")
    return normalise_maps(attribution[:, 0])


def gradient_map(model: nn.Module, images: torch.Tensor, target: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Vanilla gradient saliency ``max_channel |d logit_c / d x|``, ``[N, H, W]``."""
    from captum.attr import Saliency

    target = _predicted(model, images, target)
    images = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        saliency = Saliency(model).attribute(images, target=target, abs=True)
    return normalise_maps(saliency.detach().amax(1))


INTERPRETERS: dict[str, Interpreter] = {"cam": cam_map, "grad": gradient_map}


def get_interpreter(interpreter: str | Interpreter) -> Interpreter:
    """An interpreter by name (``cam``, ``grad``) or the callable itself."""
    if callable(interpreter):
        return interpreter
    if interpreter not in INTERPRETERS:
        raise HundredError(f"unknown interpreter {interpreter!r}; choose from "
                           f"{', '.join(INTERPRETERS)}")
    return INTERPRETERS[interpreter]


@contextmanager
def _record_output(layer: nn.Module) -> Iterator[list[torch.Tensor]]:
    outputs: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda module, inputs, output: outputs.append(output))
    try:
        yield outputs
    finally:
        handle.remove()


def differentiable_map(kind: str, model: nn.Module, images: torch.Tensor,
                       target: torch.Tensor) -> torch.Tensor:
    """The ``kind`` (``cam`` / ``grad``) map of ``model`` with its autograd graph kept, so that
    a loss on it can be differentiated with respect to ``images`` (double backprop). For the
    attacker's own surrogate model only."""
    target = target.to(images.device).long()
    if kind == "grad":
        if not images.requires_grad:
            images = images.detach().requires_grad_(True)
        score = model(images).gather(1, target[:, None]).sum()
        grad, = torch.autograd.grad(score, images, create_graph=True)
        return normalise_maps(grad.abs().amax(1))
    if kind == "cam":
        with _record_output(cam_layer(model)) as outputs:
            score = model(images).gather(1, target[:, None]).sum()
        activation = outputs[-1]
        grad, = torch.autograd.grad(score, activation, create_graph=True)
        cam = (grad.mean((2, 3), keepdim=True) * activation).sum(1, keepdim=True)
        cam = F.interpolate(cam, tuple(images.shape[-2:]), mode="bilinear")
        return normalise_maps(cam[:, 0])
    raise HundredError(f"unknown interpreter {kind!r}; choose from {', '.join(INTERPRETERS)}")


class InterpretableSystem:
    """The attacked IDLS: ``model`` (pixel space ``[0, 1]`` in, logits out; put in eval mode
    here) coupled with ``interpreter``. :meth:`query` is all an attacker may call."""

    def __init__(self, model: nn.Module, interpreter: str | Interpreter = "grad") -> None:
        self._model = model.eval()
        self._interpreter = get_interpreter(interpreter)
        self.queries = 0

    def query(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class probabilities ``[N, K]`` and maps ``[N, H, W]`` of the predicted classes, both
        detached (no autograd graph leaves the system). Each image counts as one query."""
        images = images.detach()
        self.queries += len(images)
        with torch.no_grad():
            probs = self._model(images).float().softmax(1)
        maps = self._interpreter(self._model, images.clone(), probs.argmax(1))
        return probs.detach(), maps.detach().float()
