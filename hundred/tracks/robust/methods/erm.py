"""Empirical risk minimisation: plain cross-entropy training, the undefended baseline whose
robust accuracy the defences are measured against (and the pre-trained model that
adversarial fine-tuning starts from).

Vapnik, "Principles of Risk Minimization for Learning Theory" (NeurIPS 1991). Label
smoothing (``train.label_smoothing``) is applied when configured, as in the classify track.
"""

from __future__ import annotations

import torch
from torch import nn

from hundred.engine.losses import cross_entropy
from hundred.registry import register
from hundred.tracks.robust.method import RobustMethod


@register("robust", "erm")
class ERM(RobustMethod):
    """Minimise the mean cross-entropy of the clean training batch."""

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cross_entropy(model(images), labels, self.config.train.label_smoothing)
