"""WA — Zhao, Xiao, Gan, Zhang & Xia, "Maintaining Discrimination and Fairness in Class
Incremental Learning", CVPR 2020.

Training on task data + exemplars minimises ``L = (1 - lambda) L_CE + lambda L_KD`` with
``lambda = n_old / (n_old + n_new)`` and ``L_KD`` the distillation of the previous model's
old-class logits at temperature ``T = 2`` (maintains discrimination within old classes).
After each incremental task, Weight Aligning rescales the new classes' classifier weights
``W_new <- gamma W_new`` with ``gamma = mean_old ||W_i|| / mean_new ||W_j||`` (restores
fairness between old and new classes). Weight clipping keeps the classifier weights
non-negative after every optimiser step (Sec. 3.3; on by default as in the paper — some
reimplementations drop it silently; here it is a switch and recorded in every task's log).
Biases, if the head has them, are not rescaled (the paper aligns weight vectors).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hundred.engine.losses import distillation_loss
from hundred.engine.losses import cross_entropy
from hundred.space import Choice
from hundred.registry import register
from hundred.tracks.incremental.method import IncrementalMethod, Task


class WAParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(2.0, gt=0, description="distillation temperature T")
    weight_clipping: bool = Field(True, description="clamp classifier weights >= 0 each step")
    weight_aligning: bool = Field(True, description="align new-class weight norms after a task")


def align_weights(weight: torch.Tensor, num_old: int) -> float:
    """Scale rows ``num_old:`` of ``weight`` in place so their mean norm equals the mean norm of
    rows ``:num_old``; returns gamma."""
    norms = weight.norm(dim=1)
    gamma = float(norms[:num_old].mean() / norms[num_old:].mean())
    weight[num_old:] *= gamma
    return gamma


@register("incremental", "wa")
class WA(IncrementalMethod):
    """Cross-entropy + KD (T=2) weighted by n_old/n_seen; weight aligning; weight clipping."""

    Params = WAParams
    # Tuned with the shared grid as in Cha & Cho (TMLR 2025): the distillation temperature
    # T in {0.5 .. 2.5}. Their KD weight grid does not apply: WA's weight is the adaptive
    # n_old / n_seen of the paper, not a hyperparameter.
    search_space = {"method_params.temperature": Choice((0.5, 1.0, 1.5, 2.0, 2.5))}
    # trains on task data + exemplars (Sec. 3.1); weight aligning only corrects the bias
    # that imbalance leaves, it does not replace the old classes' data
    exemplars = "required"
    keeps_old_model = True

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = model(images)
        ce = cross_entropy(logits, labels, self.config.train.label_smoothing)
        if self.old_model is None:
            return ce
        with torch.no_grad():
            old_logits = self.old_model(images)
        kd = distillation_loss(logits[:, : self.task.num_old], old_logits, self.params.temperature)
        weight = self.task.num_old / self.task.num_seen
        return (1 - weight) * ce + weight * kd

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module) -> None:
        if self.params.weight_clipping:
            model.head.weight.clamp_(min=0)

    @torch.no_grad()
    def after_task(self, task: Task, model: nn.Module) -> dict[str, Any]:
        log: dict[str, Any] = {"weight_clipping": self.params.weight_clipping}
        if task.index > 0 and self.params.weight_aligning:
            log["gamma"] = align_weights(model.head.weight, task.num_old)
        return log
