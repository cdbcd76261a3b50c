"""The independent baseline: the new model trained with plain cross-entropy on all classes,
ignoring the old model. It is the upper bound of new/new retrieval and, its embedding being
unrelated to the old one, the lower bound of new/old (not compatible).

Shen et al., "Towards Backward-Compatible Representation Learning" (CVPR 2020), Sec. 3
("independent" model update). Label smoothing (``train.label_smoothing``) when configured.
"""

from __future__ import annotations

import torch
from torch import nn

from hundred.engine.losses import cross_entropy
from hundred.registry import register
from hundred.tracks.compat.method import CompatMethod


@register("compat", "independent")
class Independent(CompatMethod):
    """Minimise the cross-entropy of the new model's classifier; no compatibility term."""

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cross_entropy(model(images), labels, self.config.train.label_smoothing)
