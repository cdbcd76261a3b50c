"""Baseline: ``ipc`` real images per class selected by herding (Welling, ICML 2009; as in
iCaRL, Rebuffi et al., CVPR 2017) on the features of a network trained on the whole training
set — the "Herding" coreset of the condensation papers' tables (Zhao, Mopuri & Bilen,
"Dataset Condensation with Gradient Matching", ICLR 2021, Table 1, which selects on a trained
ConvNet's features). The images are not optimised."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from hundred.engine.selection import herding_order
from hundred.registry import register
from hundred.tracks.condense.evaluation import train_network
from hundred.tracks.condense.method import CondenseContext, CondenseMethod


class HerdingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    feature_epochs: int = Field(20, ge=0, description="epochs of the feature network (model."
                                "name, trained on every training image; 0: random features)")
    feature_lr: float = Field(0.01, gt=0, description="its learning rate (SGD, momentum 0.9, "
                              "x0.1 at half)")


@register("condense", "herding")
class HerdingReal(CondenseMethod):
    """Herding-selected real images of each class (features of a network trained on the data)."""

    Params: ClassVar[type[BaseModel]] = HerdingParams
    optimises = False
    uses_dsa = False

    def select(self, ctx: CondenseContext) -> torch.Tensor:
        settings = ctx.config.condense
        network = ctx.new_network()
        images, labels = ctx.real.all()
        if self.params.feature_epochs:
            train_network(network, images, labels, epochs=self.params.feature_epochs,
                          lr=self.params.feature_lr, batch_size=settings.eval_batch_size,
                          weight_decay=settings.eval_weight_decay)
        network.eval()
        chosen = []
        with torch.no_grad():
            for label in range(ctx.num_classes):
                indices = ctx.real.class_indices[label]
                features = torch.cat([network.features(ctx.real.take(part))
                                      for part in indices.split(1024)])
                order = herding_order(features.cpu(), settings.ipc).to(indices.device)
                order = order.repeat((settings.ipc + len(order) - 1) // len(order))
                chosen.append(indices[order[:settings.ipc]])
        return torch.cat(chosen)
