"""KD — Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network" (NIPS 2014
Deep Learning Workshop, arXiv 1503.02531), Sec. 2: the student matches the teacher's
temperature-softened distribution, ``L = w_ce CE(y, s) + w_kd T^2 KL(p_t^T || p_s^T)``; the
``T^2`` keeps the soft targets' gradients at the scale of the hard ones (Sec. 2.1). The
baseline every distillation paper compares against. Defaults are the CIFAR-100 setting of
the KD baselines (T = 4, weights 0.1 / 0.9); on ImageNet they are T = 1, 0.5 / 0.5.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hundred.engine.losses import cross_entropy
from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.classify.losses import kd_loss
from hundred.tracks.classify.method import DistillationMethod


class KDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(4.0, gt=0, description="softening temperature T")
    ce_weight: float = Field(0.1, ge=0, description="weight of the cross-entropy with labels")
    kd_weight: float = Field(0.9, ge=0, description="weight of the T^2-scaled KL to the teacher")


@register("classify", "kd")
class KD(DistillationMethod):
    """Cross-entropy plus the T^2-scaled KL divergence to the teacher's softened outputs."""

    Params = KDParams
    search_space = {"method_params.temperature": Choice((1.0, 2.0, 4.0)),
                    "method_params.kd_weight": Choice((0.5, 0.9))}

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = model(images)
        ce = cross_entropy(logits, labels, self.config.train.label_smoothing)
        kd = kd_loss(logits, self.teacher_logits(images), self.params.temperature)
        return self.params.ce_weight * ce + self.params.kd_weight * kd
