"""BCT: backward-compatible training with the influence loss.

Shen, Xiong, Xia, Soatto, "Towards Backward-Compatible Representation Learning" (CVPR 2020),
Eq. (3)-(4): the new embedding phi_new is trained with its own classifier w_new and, at the
same time, through the OLD model's frozen classifier w_old, so that it lives in the old
embedding space:

    L(phi_new, w_new) = CE(w_new phi_new(x), y) + lambda * CE(w_old phi_new(x), y),

lambda = 1 in the paper. For the classes the old model never saw (the new training set has
more classes), w_old is extended with "synthesised classifier weights": the mean old-model
embedding of each new class's training images (Sec. 3.2). The new embedding has the old
one's dimension. The old classifier and the prototypes are frozen (``add_frozen``): neither
optimised nor checkpointed; only the new model is trained.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hundred.engine.losses import cross_entropy
from hundred.errors import HundredError
from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.compat.embedding import OldModel, Prototypes
from hundred.tracks.compat.method import CompatMethod


class InfluenceClassifier(nn.Module):
    """The old classifier ``w_old`` (its rows for the old classes) followed by the
    synthesised rows (old prototypes) of the classes it never saw."""

    def __init__(self, old_head: nn.Module, prototypes: Prototypes, num_old_classes: int
                 ) -> None:
        super().__init__()
        self.old_head = old_head
        self.prototypes = prototypes
        self.num_old_classes = num_old_classes

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        old_logits = self.old_head(embedding)
        synthesised = embedding @ self.prototypes.weight[self.num_old_classes:].T
        return torch.cat([old_logits, synthesised.to(old_logits.dtype)], dim=1)


class BCTParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    influence_weight: float = Field(
        1.0, ge=0, description="lambda: weight of the influence loss CE(w_old phi_new(x), y) "
        "(paper: 1)")


@register("compat", "bct")
class BCT(CompatMethod):
    """CE of the new classifier + lambda x CE of the frozen old one on the new embedding."""

    Params = BCTParams
    search_space = {"method_params.influence_weight": Choice((0.5, 1.0, 2.0))}

    def attach_old(self, old: OldModel) -> None:
        super().attach_old(old)
        self.influence = self.add_frozen("influence", InfluenceClassifier(
            old.model.head, Prototypes(old.prototypes), old.num_old_classes))

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.old is None:
            raise HundredError("compat/bct needs the old model (the compat scenario attaches it)")
        logits, embedding = model(images, return_features=True)
        smoothing = self.config.train.label_smoothing
        influence = cross_entropy(self.influence(embedding), labels, smoothing)
        return cross_entropy(logits, labels, smoothing) + self.params.influence_weight * influence
