"""Classification heads, kept apart from backbones so tracks can grow or swap them."""

from __future__ import annotations

from typing import Protocol

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


class TargetSource(Protocol):
    """Where a :class:`LanguageHead` gets the frozen targets of classes ``start..stop-1``
    (output positions), e.g. :class:`hundred.models.language.LanguageTargets`."""

    def targets(self, start: int, stop: int) -> torch.Tensor: ...


class LanguageHead(nn.Module):
    """Frozen language targets as the classifier: ``eta * cos(P f, t_c)`` (LingoCL).

    Ni et al., "Enhancing Visual Continual Learning with Language-Guided Supervision", CVPR
    2024: a pretrained language model embeds each class name into a semantic target ``t_c``;
    the targets replace the classifier and are never trained; logits are cosine similarities
    scaled by a learnable ``eta``. ``P`` is a learnable linear projection (no bias) of the
    features to the targets' dimension, present only when the two differ (an identity
    otherwise). The targets are a buffer, so they are saved with the model but are not
    parameters: no optimiser or weight decay reaches them.
    """

    def __init__(self, feature_dim: int, targets: torch.Tensor, source: TargetSource | None,
                 scale: float = 16.0, learn_scale: bool = True) -> None:
        super().__init__()
        targets = targets.detach().float()
        norms = targets.norm(dim=1)
        if not torch.allclose(norms, torch.ones_like(norms), atol=1e-5):  # unit ones: as given
            targets = F.normalize(targets, dim=1)
        self.register_buffer("targets", targets.clone())
        self.source = source  # not a module: makes the targets of classes still to come
        self.feature_dim = feature_dim
        self.projection: nn.Module = (nn.Identity() if targets.shape[1] == feature_dim else
                                      nn.Linear(feature_dim, targets.shape[1], bias=False))
        self.scale = nn.Parameter(torch.tensor(float(scale)), requires_grad=learn_scale)

    @classmethod
    def from_source(cls, feature_dim: int, source: TargetSource, num_classes: int,
                    scale: float = 16.0, learn_scale: bool = True) -> "LanguageHead":
        """A head for output positions ``0..num_classes-1``, targets made by ``source``."""
        return cls(feature_dim, source.targets(0, num_classes), source, scale, learn_scale)

    @property
    def out_features(self) -> int:
        return self.targets.shape[0]

    @property
    def weight(self) -> torch.Tensor:
        """A detached *copy* of the targets, for code written against a linear head's
        ``weight`` (WA's aligning and clipping): edits of it never reach the frozen targets."""
        return self.targets.detach().clone()

    @torch.no_grad()
    def grown(self, new_classes: int) -> "LanguageHead":
        """A head with the targets of ``new_classes`` more classes appended (made now, by the
        source); the existing targets, the projection and the scale are kept unchanged."""
        if self.source is None:
            raise RuntimeError("this language head has no target source to grow from")
        device = self.targets.device
        new = self.source.targets(self.out_features, self.out_features + new_classes)
        head = LanguageHead(self.feature_dim, torch.cat([self.targets, new.to(device)]),
                            self.source, learn_scale=self.scale.requires_grad).to(device)
        head.projection.load_state_dict(self.projection.state_dict())
        head.scale.copy_(self.scale)
        return head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        projected = F.normalize(self.projection(features), dim=1)
        return self.scale * F.linear(projected, self.targets.to(projected.dtype))


HEADS = {"linear": LinearHead, "cosine": CosineHead}
