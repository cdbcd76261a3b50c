"""NKD — Yang, Zeng, Zhang & Yuan, "From Knowledge Distillation to Self-Knowledge
Distillation: A Unified Approach with Normalized Loss and Customized Soft Labels" (ICCV 2023),
Eq. 8: ``L = CE + [ -T_t log S_t - gamma tau^2 sum_{i != t} That_i^tau log Shat_i^tau ]``, the
target term plus the *normalised* non-target distillation (teacher and student softmax over
the non-target classes only, renormalised). The loss terms live in
:func:`hundred.tracks.classify.losses.nkd_terms`. Defaults are the paper's CIFAR-100
setting (tau = 3, gamma = 3.5); ImageNet uses tau = 1, gamma = 1.5.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hundred.engine.losses import cross_entropy
from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.classify.losses import nkd_loss
from hundred.tracks.classify.method import DistillationMethod


class NKDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(3.0, gt=0, description="tau, of the non-target distributions")
    gamma: float = Field(3.5, ge=0, description="weight of the normalised non-target term")


@register("classify", "nkd")
class NKD(DistillationMethod):
    """Cross-entropy plus NKD's target term and normalised non-target distillation."""

    Params = NKDParams
    search_space = {"method_params.temperature": Choice((1.0, 3.0)),
                    "method_params.gamma": Choice((1.5, 3.5))}

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = model(images)
        ce = cross_entropy(logits, labels, self.config.train.label_smoothing)
        return ce + nkd_loss(logits, self.teacher_logits(images), labels,
                             self.params.temperature, self.params.gamma)
