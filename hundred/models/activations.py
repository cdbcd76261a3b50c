"""Activation functions that models can be built with (``model.options.activation``).

* ``relu``, ``gelu`` — the usual ones (torch's), in classes that accept timm's ``inplace``
  keyword so they can be handed to any timm model as ``act_layer``.
* ``crrelu`` — Correction Regularized ReLU, Sun et al., "A Method on Searching Better
  Activation Functions" (arXiv:2405.12954; ICLR 2025 as "Entropy-based Activation Function
  Optimization"). The Entropy-based Activation Function Optimization (EAFO) of Sec. 4 applied
  to ReLU gives

      CRReLU(x) = ReLU(x) + eps * x * exp(-x^2 / 2),

  a correction proportional to the derivative of a Gaussian, with ``eps`` a learnable scalar
  (one per activation layer) that the paper initialises to 0.01 (its pseudocode,
  Appendix D.1). With ``eps = 0`` it is ReLU exactly. The paper swaps it in for the MLP
  activation of ViT and its variants (CIFAR-10/100, ImageNet-1K) and of LLMs.

:func:`activation_layer` maps a name to a class; :func:`make_activation` builds an instance.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hundred.errors import HundredError

__all__ = ["ACTIVATIONS", "CRReLU", "GELU", "ReLU", "activation_layer", "make_activation"]


class CRReLU(nn.Module):
    """``ReLU(x) + eps * x * exp(-x^2/2)`` with a learnable scalar ``eps`` (initialised to
    ``init``, 0.01 in the paper). ``inplace`` is accepted (timm passes it) and ignored: the
    correction needs the input after the ReLU has been taken."""

    def __init__(self, init: float = 0.01, inplace: bool = False) -> None:
        super().__init__()
        self.eps = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x) + self.eps * x * torch.exp(-0.5 * x * x)

    def extra_repr(self) -> str:
        return f"eps={self.eps.item():.4g}"


class ReLU(nn.ReLU):
    """torch's ReLU (a subclass, so a model built with ``activation=relu`` is recognisable)."""


class GELU(nn.GELU):
    """torch's GELU, accepting (and ignoring) timm's ``inplace`` keyword."""

    def __init__(self, approximate: str = "none", inplace: bool = False) -> None:
        super().__init__(approximate=approximate)


ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": ReLU, "gelu": GELU, "crrelu": CRReLU}


def activation_layer(name: str) -> type[nn.Module]:
    """The activation class called ``name`` (``relu``, ``gelu``, ``crrelu``)."""
    try:
        return ACTIVATIONS[str(name).lower()]
    except KeyError:
        raise HundredError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}"
                           ) from None


def make_activation(name: str, inplace: bool = False, **kwargs: Any) -> nn.Module:
    """An instance of the activation ``name``; ``inplace`` applies to ReLU only."""
    return activation_layer(name)(inplace=inplace, **kwargs)
