"""BYOL — Grill, Strub, Altché, Tallec, Richemond, Buchatskaya, Doersch, Avila Pires, Guo,
Gheshlaghi Azar, Piot, Kavukcuoglu, Munos & Valko, "Bootstrap Your Own Latent: A New Approach
to Self-Supervised Learning" (NeurIPS 2020).

* The *online network* is the run's backbone, a projector and a predictor (lightly's
  ``BYOLProjectionHead`` ``feature_dim -> 4096 -> 256`` and ``BYOLPredictionHead``
  ``256 -> 4096 -> 256``, Sec. 3.3); the *target network* is a copy of backbone and projector
  whose parameters are the exponential moving average of the online ones, Eq. (1):
  ``xi <- tau xi + (1 - tau) theta``, once after every optimiser step, without gradients.
* ``tau`` follows BYOL's cosine schedule (Sec. 3.3) from ``tau_base`` to 1 over the run:
  ``tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2``, with k the 0-based optimiser step
  and K = steps per epoch x epochs. The step count is part of :meth:`BYOL.state_dict`, so
  the schedule continues exactly on resume.
* The loss is Eq. (2), the squared distance of the L2-normalised prediction and target
  projection, ``2 - 2 cos(q_theta(z_theta), z'_xi)`` (lightly's ``NegativeCosineSimilarity``
  gives the mean of ``-cos``), symmetrised by feeding the views the other way round and
  *summing* the two terms, ``L^BYOL = L + L~`` (as the paper writes it; lightly's example
  averages them, which only halves the gradient).

Like MoCo's key encoder, the target network is registered with ``add_state`` (checkpointed,
never optimised), runs in train mode (BatchNorm on batch statistics) and keeps its own
BatchNorm running statistics; parameters alone are averaged. ``tau_base`` defaults to 0.99
(solo-learn's ImageNet-100 setting, better for short runs) instead of the paper's 0.996.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hundred.config import RunConfig
from hundred.engine.method import SetupContext
from hundred.models.taps import unwrap
from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.ssl.method import SSLMethod
from hundred.tracks.ssl.methods.moco import ProjectedEncoder


class BYOLParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tau_base: float = Field(0.99, ge=0, le=1, description="initial target decay rate of the "
                            "cosine schedule to 1 (paper: 0.996; 0.99 for short runs)")
    proj_hidden_dim: int = Field(4096, ge=1, description="hidden width of the projector")
    proj_output_dim: int = Field(256, ge=1, description="output width of the projector")
    pred_hidden_dim: int = Field(4096, ge=1, description="hidden width of the predictor")


def byol_momentum(step: int, total_steps: int, tau_base: float) -> float:
    """BYOL's target decay rate at 0-based step ``step`` of ``total_steps`` (Sec. 3.3):
    ``1 - (1 - tau_base) (cos(pi k / K) + 1) / 2``, from ``tau_base`` at k = 0 to 1 at K."""
    progress = min(1.0, step / max(1, total_steps))
    return 1 - (1 - tau_base) * (math.cos(math.pi * progress) + 1) / 2


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL's Eq. (2), ``2 - 2 cos(prediction, target)`` averaged over the batch; the
    target is detached (the target network gets no gradient)."""
    from lightly.loss import NegativeCosineSimilarity

    return 2 + 2 * NegativeCosineSimilarity()(prediction, target.detach())


@register("ssl", "byol")
class BYOL(SSLMethod):
    """The online network predicts the target network's projection of the other view."""

    Params = BYOLParams
    search_space = {"method_params.tau_base": Choice((0.99, 0.996))}

    def __init__(self, params: dict[str, Any] | None = None, config: RunConfig | None = None
                 ) -> None:
        super().__init__(params, config)
        self.step = 0  # optimiser steps taken: the position in the momentum schedule
        self.total_steps = 1

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead

        params = self.params
        if "projector" not in self.trainable:
            self.add_trainable("projector", BYOLProjectionHead(
                unwrap(model).feature_dim, params.proj_hidden_dim, params.proj_output_dim))
            self.add_trainable("predictor", BYOLPredictionHead(
                params.proj_output_dim, params.pred_hidden_dim, params.proj_output_dim))
        if "target" not in self.stateful:
            self.add_state("target", copy.deepcopy(self.online_encoder(model)))
        self.total_steps = ctx.steps_per_epoch * ctx.epochs

    def online_encoder(self, model: nn.Module) -> ProjectedEncoder:
        """Backbone + projector of the online network (the modules themselves)."""
        return ProjectedEncoder(unwrap(model).backbone, self.trainable["projector"])

    def momentum(self) -> float:
        """The decay rate of the next target update."""
        return byol_momentum(self.step, self.total_steps, self.params.tau_base)

    def ssl_loss(self, model: nn.Module, views: Sequence[torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        projector, predictor = self.trainable["projector"], self.trainable["predictor"]
        features = [self.encode(model, view) for view in views[:2]]
        predictions = [predictor(projector(f)) for f in features]
        with torch.no_grad():
            targets = [self.stateful["target"](view) for view in views[:2]]
        loss = byol_loss(predictions[0], targets[1]) + byol_loss(predictions[1], targets[0])
        return loss, features[0]

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module) -> None:
        """Eq. (1) with the scheduled tau, then advance the schedule."""
        from lightly.models.utils import update_momentum

        update_momentum(self.online_encoder(model), self.stateful["target"], self.momentum())
        self.step += 1

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
