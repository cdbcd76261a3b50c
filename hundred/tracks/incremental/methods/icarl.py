"""iCaRL — Rebuffi, Kolesnikov, Sperl & Lampert, "iCaRL: Incremental Classifier and
Representation Learning", CVPR 2017.

Algorithm 3 (UpdateRepresentation): on task data plus exemplars, minimise the sum over
classes of binary cross-entropies on sigmoid outputs, where the targets are one-hot for the
new classes and the previous network's sigmoid outputs for the old ones (distillation).
Exemplars are selected by herding (Alg. 4, in the scenario's memory) and classification
uses the nearest mean of exemplars (Alg. 1, the scenario's NME classifier).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hundred.registry import register
from hundred.tracks.incremental.method import IncrementalMethod


@register("incremental", "icarl")
class ICaRL(IncrementalMethod):
    """Sigmoid/BCE classification + distillation on old classes; NME classification."""

    # the exemplars are its training replay (Alg. 3) and its classifier (NME over the
    # exemplar means, Alg. 1): with none, old classes have no mean to be predicted by
    exemplars = "required"
    keeps_old_model = True
    classifier = "nme"
    # No hyperparameter of its own (its distillation is the sigmoid targets, without a
    # temperature or weight): ``hundred tune`` searches the shared grid only.
    search_space = {}

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = model(images).float()
        targets = F.one_hot(labels, logits.shape[1]).float()
        if self.old_model is not None:
            with torch.no_grad():
                old_probabilities = torch.sigmoid(self.old_model(images).float())
            targets[:, : self.task.num_old] = old_probabilities
        # The paper's loss sums the per-class binary cross-entropies; average over the batch.
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / len(labels)
