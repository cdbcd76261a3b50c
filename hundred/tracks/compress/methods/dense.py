"""The dense baseline: the uncompressed network trained with plain cross-entropy (empirical
risk minimisation), the reference every compressed network's accuracy and cost are compared
with (and the model a pruning method starts from with ``--init RUN_DIR``).

Vapnik, "Principles of Risk Minimization for Learning Theory" (NeurIPS 1991). Label
smoothing (``train.label_smoothing``) is applied when configured, as in the classify track.
"""

from __future__ import annotations

import torch
from torch import nn

from hundred.engine.losses import cross_entropy
from hundred.registry import register
from hundred.tracks.compress.method import CompressMethod


@register("compress", "dense")
class Dense(CompressMethod):
    """Minimise the mean cross-entropy of the training batch; export the trained network."""

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cross_entropy(model(images), labels, self.config.train.label_smoothing)
