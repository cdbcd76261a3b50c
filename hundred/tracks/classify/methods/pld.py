"""PLD — Bassam, Zhu & Bian, "PLD: A Choice-Theoretic List-Wise Knowledge Distillation"
(arXiv 2506.12542): the teacher's ranking of the classes, with the ground truth first and the
rest by teacher logit, is treated as a Plackett–Luce choice sequence; the student maximises
its likelihood, each position weighted by the teacher's softmax at temperature tau_T
(:func:`hundred.tracks.classify.losses.pld_loss`). It replaces CE + KD entirely. Defaults:
tau_T = 4 (the paper's CIFAR-100 setting; 1 on ImageNet).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.classify.losses import pld_loss
from hundred.tracks.classify.method import DistillationMethod


class PLDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(4.0, gt=0, description="tau_T of the teacher's weights")


@register("classify", "pld")
class PLD(DistillationMethod):
    """The teacher-ordered, teacher-weighted Plackett–Luce list loss (no separate CE)."""

    Params = PLDParams
    search_space = {"method_params.temperature": Choice((1.0, 2.0, 4.0))}

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return pld_loss(model(images), self.teacher_logits(images), labels,
                        self.params.temperature)
