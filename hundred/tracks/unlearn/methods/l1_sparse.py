"""l1-sparse unlearning: fine-tuning on the retained data with an l1 penalty on the weights
whose strength decays linearly, so that unlearning runs through a sparser model.

Jia, Liu, Ram, Yao, Liu, Liu, Sharma, Liu, "Model Sparsity Can Simplify Machine Unlearning"
(NeurIPS 2023), Eq. (5): minimise L_FT(theta; D_r) + gamma_t ||theta||_1 from theta_o, with
gamma_t = gamma (1 - t / T) at epoch t of T ("linear decay", their best schedule); gamma
= 5e-4 and 10 epochs in their CIFAR-10 setting (lr 0.01 to 0.1, tuned). The penalty covers
every parameter of the model, as in their code.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel, Field
from torch import nn

from hundred.engine.losses import cross_entropy
from hundred.registry import register
from hundred.tracks.unlearn.method import PhaseParams, UnlearnMethod


class L1SparseParams(PhaseParams):
    epochs: int = Field(10, ge=1, description="fine-tuning epochs T (Jia et al. 2023: 10)")
    lr: float = Field(0.01, gt=0, description="constant learning rate (Jia et al. 2023: "
                      "0.01 to 0.1, tuned)")
    alpha: float = Field(5e-4, ge=0, description="gamma, the l1 strength at the first epoch, "
                         "decayed linearly to 0 (Jia et al. 2023: 5e-4 on CIFAR-10)")


@register("unlearn", "l1_sparse")
class L1Sparse(UnlearnMethod):
    """Cross-entropy on the retained rows + gamma_t ||theta||_1."""

    Params: ClassVar[type[BaseModel]] = L1SparseParams
    _epoch: int = 0

    def on_epoch_start(self, epoch: int) -> None:
        self._epoch = epoch

    @property
    def strength(self) -> float:
        """gamma_t = gamma (1 - t / T) at the current epoch t."""
        return self.params.alpha * (1.0 - self._epoch / self.params.epochs)

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
             ) -> torch.Tensor:
        l1 = sum(parameter.abs().sum() for parameter in model.parameters())
        return cross_entropy(model(images), labels) + self.strength * l1
