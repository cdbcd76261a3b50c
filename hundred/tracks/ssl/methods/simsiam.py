"""SimSiam — Chen & He, "Exploring Simple Siamese Representation Learning" (CVPR 2021): one
network applied to both views, no negatives and no momentum encoder; collapse is avoided by
the stop-gradient on the target branch.

The encoder f is the run's backbone followed by a projection MLP (lightly's
``SimSiamProjectionHead``: three layers, ``feature_dim -> 2048 -> 2048 -> 2048``, BN on every
layer, the last without affine); the predictor h is lightly's ``SimSiamPredictionHead``, a
bottleneck ``2048 -> 512 -> 2048`` (the paper's baseline settings). With ``z = f(x)`` and
``p = h(z)`` for each view, the loss is Eq. (4),

    L = 1/2 D(p1, stopgrad(z2)) + 1/2 D(p2, stopgrad(z1)),

with D the negative cosine similarity of Eq. (1) (lightly's ``NegativeCosineSimilarity``),
so a view's projection z receives gradient only through its own predictor, never as a
target. Not done here: the paper's optional constant learning rate of the predictor (Sec.
4.2, Table 1c): the trainer has one schedule for all parameters.
"""

from __future__ import annotations

from typing import Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hundred.engine.method import SetupContext
from hundred.models.taps import unwrap
from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.ssl.method import SSLMethod


class SimSiamParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    proj_hidden_dim: int = Field(2048, ge=1, description="hidden width of the projector")
    proj_output_dim: int = Field(2048, ge=1, description="output width of the projector")
    pred_hidden_dim: int = Field(512, ge=1, description="bottleneck width of the predictor")


def simsiam_loss(predictions: Sequence[torch.Tensor], projections: Sequence[torch.Tensor]
                 ) -> torch.Tensor:
    """SimSiam's Eq. (4) for two views: ``(D(p1, sg(z2)) + D(p2, sg(z1))) / 2``."""
    from lightly.loss import NegativeCosineSimilarity

    criterion = NegativeCosineSimilarity()
    (p1, p2), (z1, z2) = predictions, projections
    return (criterion(p1, z2.detach()) + criterion(p2, z1.detach())) / 2


@register("ssl", "simsiam")
class SimSiam(SSLMethod):
    """Each view's prediction matches the other view's stop-gradient projection."""

    Params = SimSiamParams
    search_space = {"method_params.pred_hidden_dim": Choice((512, 2048))}

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        if "projector" not in self.trainable:
            from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead

            params = self.params
            self.add_trainable("projector", SimSiamProjectionHead(
                unwrap(model).feature_dim, params.proj_hidden_dim, params.proj_output_dim))
            self.add_trainable("predictor", SimSiamPredictionHead(
                params.proj_output_dim, params.pred_hidden_dim, params.proj_output_dim))

    def ssl_loss(self, model: nn.Module, views: Sequence[torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        features = [self.encode(model, view) for view in views[:2]]
        projections = [self.trainable["projector"](f) for f in features]
        predictions = [self.trainable["predictor"](z) for z in projections]
        return simsiam_loss(predictions, projections), features[0]
