"""The random-initialisation baseline of self-supervised evaluation: no pre-training loss.

The backbone keeps its random initial weights (only the online probe trains; batch-norm
statistics follow the data in training mode), so its linear-probe and kNN accuracies are
the floor every self-supervised method must clear by far — the baseline row of the SSL
papers' tables (e.g. Wu et al. 2018, Table 2; solo-learn). The backbone's parameters are
frozen in ``setup`` (before DDP wraps the model and the optimiser is built): nothing would
train them, and DDP refuses parameters that never receive a gradient.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from hundred.engine.method import SetupContext
from hundred.models.taps import unwrap
from hundred.registry import register
from hundred.tracks.ssl.method import SSLMethod


@register("ssl", "random")
class RandomInit(SSLMethod):
    """No self-supervised loss: the online probe on a random backbone."""

    views = 1

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        unwrap(model).backbone.requires_grad_(False)

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
             ) -> torch.Tensor:
        return self.probe_loss(model, self.encode(model, images), labels)

    def ssl_loss(self, model: nn.Module, views: Sequence[torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encode(model, views[0])
        return features.new_zeros(()), features
