"""Classification heads, kept apart from backbones so tracks can grow or swap them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LinearHead(nn.Linear):
    """A plain linear classifier ``W f + b``."""

    def __init__(self, feature_dim: int, num_classes: int, bias: bool = True) -> None:
        super().__init__(feature_dim, num_classes, bias=bias)

    @torch.no_grad()
    def grown(self, new_classes: int) -> "LinearHead":
        """A head with ``new_classes`` more outputs; the existing rows are copied unchanged and
        the new ones freshly initialised (continual learning)."""
        head = LinearHead(self.in_features, self.out_features + new_classes, self.bias is not None)
        head.to(self.weight.device)
        head.weight[: self.out_features] = self.weight
        if self.bias is not None:
            head.bias[: self.out_features] = self.bias
        return head


class CosineHead(nn.Module):
    """Cosine classifier ``sigma * cos(f, w_c)`` with a learnable scale ``sigma``.

    Used by LUCIR (Hou et al., "Learning a Unified Classifier Incrementally via Rebalancing",
    CVPR 2019) and many continual-learning methods to remove the norm bias between classes.
    """

    def __init__(self, feature_dim: int, num_classes: int, scale: float = 16.0,
                 learn_scale: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, feature_dim))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.scale = nn.Parameter(torch.tensor(float(scale)), requires_grad=learn_scale)

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @torch.no_grad()
    def grown(self, new_classes: int) -> "CosineHead":
        """A head with ``new_classes`` more outputs; existing rows and the scale are kept."""
        head = CosineHead(self.weight.shape[1], self.out_features + new_classes,
                          learn_scale=self.scale.requires_grad).to(self.weight.device)
        head.weight[: self.out_features] = self.weight
        head.scale.copy_(self.scale)
        return head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1))


HEADS = {"linear": LinearHead, "cosine": CosineHead}
