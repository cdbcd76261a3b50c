"""Empirical risk minimisation: plain cross-entropy training, the baseline of every track.

Vapnik, "Principles of Risk Minimization for Learning Theory" (NeurIPS 1991). Label
smoothing (``train.label_smoothing``, Szegedy et al., CVPR 2016) is applied when configured.
"""

from __future__ import annotations

import torch
from torch import nn

from hundred.engine.losses import cross_entropy
from hundred.registry import register
from hundred.tracks.classify.method import ClassifyMethod


@register("classify", "erm")
class ERM(ClassifyMethod):
    """Minimise the mean cross-entropy of the training batch."""

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cross_entropy(model(images), labels, self.config.train.label_smoothing)
