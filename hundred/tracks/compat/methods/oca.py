"""OCA: Orthogonal Compatible Aligned representations.

Ricci, Biondi, Pernici, Del Bimbo, "Backward-Compatible Aligned Representations via an
Orthogonal Transformation Layer" (ICPR 2024, arXiv 2408.08793).

The new embedding h (L2-normalised) has the old dimension d plus ``extra_dims`` more
coordinates (128 + 32 in the paper). An orthogonal transformation O (``torch.nn.utils.
parametrizations.orthogonal``: O stays orthogonal at every step) maps h to the space where
the new classifier W works, so W's training shapes h only up to a rotation, which preserves
its geometry (distances, hence retrieval). Compatibility is asked of h's first d
coordinates, h_d = normalize(h[:d]), against the old class prototypes p_y (the mean old
embedding of class y's train images, for every class of the new training set):

    L = 5 CE(W O h, y)                                  new classes, in the expanded space
      + 10 CE([<h_d, p_c>]_c, y)                        BCT-style influence, prototypes as
                                                        the (frozen) old pseudo-classifier
      + 5 (1 - cos(h_d, p_y))                           alignment to the old prototype

with the weights of the official code (lambda 5 / 10 / 5). At retrieval only h is used: its
first d coordinates against an old gallery, all of it against a new gallery (O is a
training-time layer). The official code's O carries a bias (an isometry); a bias before the
linear classifier is only a per-class logit offset, so O here is the pure orthogonal map the
paper names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn.utils.parametrizations import orthogonal

from hundred.engine.losses import cross_entropy
from hundred.errors import HundredError
from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.compat.embedding import OldModel, Prototypes, linear_classifier
from hundred.tracks.compat.method import CompatMethod


class OrthogonalHead(nn.Module):
    """``W O h``: an orthogonal ``dim x dim`` transformation O, then a bias-free classifier."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.transform = orthogonal(nn.Linear(dim, dim, bias=False))
        self.classifier = linear_classifier(dim, num_classes)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.transform(embedding))


class OCAParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    extra_dims: int = Field(32, ge=0, description="coordinates the new embedding adds to the "
                            "old dimension (paper: 32, on top of 128)")
    ce_weight: float = Field(5.0, ge=0, description="weight of the new classifier's "
                             "cross-entropy on the transformed embedding (paper code: 5)")
    influence_weight: float = Field(10.0, ge=0, description="weight of the influence loss "
                                    "through the old prototypes (paper code: 10)")
    alignment_weight: float = Field(5.0, ge=0, description="weight of the cosine alignment of "
                                    "h's old coordinates to the class's old prototype "
                                    "(paper code: 5)")


@register("compat", "oca")
class OCA(CompatMethod):
    """Extended embedding; orthogonal map to the new classifier; old coordinates to prototypes.

    The embedding has ``extra_dims`` more coordinates than the old one; the new classifier
    reads it through the orthogonal transformation; its first old-dimension coordinates are
    pulled to the old class prototypes by the influence and alignment losses."""

    Params = OCAParams
    search_space = {"method_params.extra_dims": Choice((16, 32, 64))}

    def embedding_dim(self, old_dim: int) -> int:
        return old_dim + self.params.extra_dims

    def build_head(self, dim: int, num_classes: int) -> nn.Module:
        return OrthogonalHead(dim, num_classes)

    def attach_old(self, old: OldModel) -> None:
        super().attach_old(old)
        self.prototypes = self.add_frozen("prototypes", Prototypes(old.prototypes))

    def losses(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
               ) -> dict[str, torch.Tensor]:
        """The three terms, unweighted."""
        if self.old is None:
            raise HundredError("compat/oca needs the old model (the compat scenario attaches it)")
        logits, embedding = model(images, return_features=True)
        smoothing = self.config.train.label_smoothing
        old_coordinates = F.normalize(embedding[:, :self.old.dim].float(), dim=1)
        prototypes = self.prototypes.weight.float()
        return {
            "ce": cross_entropy(logits, labels, smoothing),
            "influence": cross_entropy(old_coordinates @ prototypes.T, labels, smoothing),
            "alignment": (1 - F.cosine_similarity(old_coordinates, prototypes[labels])).mean()}

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        terms = self.losses(model, images, labels)
        return (self.params.ce_weight * terms["ce"]
                + self.params.influence_weight * terms["influence"]
                + self.params.alignment_weight * terms["alignment"])
