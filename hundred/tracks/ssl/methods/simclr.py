"""SimCLR — Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive Learning of
Visual Representations" (ICML 2020): two augmented views of each image, a projection MLP
``g`` on the backbone's features, and the NT-Xent loss (Sec. 2.1, Eq. 1)

    l(i, j) = -log exp(sim(z_i, z_j)/tau) / sum_{k != i} exp(sim(z_i, z_k)/tau),

averaged over the 2N ordered positive pairs of the batch (the other 2(N-1) views are the
negatives; under DDP the negatives of every rank are gathered). The loss is lightly's
``NTXentLoss``, the head lightly's ``SimCLRProjectionHead``. Defaults are solo-learn's
ImageNet-100 setting: projection 2048 -> 256, tau = 0.2.
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


class SimCLRParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(0.2, gt=0, description="tau of NT-Xent")
    proj_hidden_dim: int = Field(2048, ge=1, description="hidden width of the projection MLP")
    proj_output_dim: int = Field(256, ge=1, description="output width of the projection MLP")


@register("ssl", "simclr")
class SimCLR(SSLMethod):
    """NT-Xent between the projections of two views of each image."""

    Params = SimCLRParams
    search_space = {"method_params.temperature": Choice((0.1, 0.2, 0.5))}

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        if "projector" not in self.trainable:
            from lightly.models.modules import SimCLRProjectionHead

            self.add_trainable("projector", SimCLRProjectionHead(
                unwrap(model).feature_dim, self.params.proj_hidden_dim,
                self.params.proj_output_dim))
        self._criterion = _nt_xent(self.params.temperature)

    def ssl_loss(self, model: nn.Module, views: Sequence[torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        features = [self.encode(model, view) for view in views[:2]]
        first, second = (self.trainable["projector"](f) for f in features)
        return self._criterion(first, second), features[0]


def _nt_xent(temperature: float) -> nn.Module:
    """lightly's NT-Xent, gathering the negatives of every rank when running distributed."""
    import torch.distributed as dist
    from lightly.loss import NTXentLoss

    distributed = dist.is_available() and dist.is_initialized()
    return NTXentLoss(temperature=temperature, gather_distributed=distributed)
