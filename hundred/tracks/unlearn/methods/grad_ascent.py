"""Gradient ascent (GA): raise the loss of the forget set, i.e. descend on its negated
cross-entropy, starting from the original model.

Thudi et al., "Unrolling SGD: Understanding Factors Influencing Machine Unlearning" (EuroS&P
2022); the GA baseline of Jia et al. (NeurIPS 2023) and Fan et al. (ECCV 2024): minimise
-(1/|D_f|) sum_{D_f} CE(f_theta(x), y), a few epochs at a small learning rate (those papers:
5 epochs, lr 1e-5 to 1e-3, tuned). GA alone never looks at the retained data, so a large
step destroys the model; the learning rate is the method's only brake.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from pydantic import BaseModel, Field
from torch import nn

from hundred.engine.losses import cross_entropy
from hundred.registry import register
from hundred.tracks.unlearn.method import PhaseParams, UnlearnMethod


class GradAscentParams(PhaseParams):
    epochs: int = Field(5, ge=1, description="ascent epochs over the forget set (Jia et al. "
                        "2023: 5)")
    lr: float = Field(1e-4, gt=0, description="constant learning rate (Jia et al. 2023: "
                      "1e-5 to 1e-3, tuned)")


@register("unlearn", "grad_ascent")
class GradAscent(UnlearnMethod):
    """The negated cross-entropy of forget-set batches."""

    Params: ClassVar[type[BaseModel]] = GradAscentParams

    def phase_rows(self, forget: np.ndarray, retain: np.ndarray) -> np.ndarray:
        return forget

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
             ) -> torch.Tensor:
        return -cross_entropy(model(images), labels)
