"""DεpS: once-for-all training of the elastic supernet that shrinks late.

Annavajjala, Khare, Agrawal, Fedorov, Latapie, Lee, Tumanov, "DεpS: Delayed ε-Shrinking for
Faster Once-For-All Training" (ECCV 2024, arXiv 2407.06167; official code
github.com/gatech-sysml/DepS, read to understand the schedule, nothing copied). On the
elastic ResNet of :mod:`hundred.models.elastic`, with the pieces of ``compress/bignas``:

* delayed shrinking: until ``shrink_start`` of the training steps (the paper: ~50 %) only the
  full model (the largest child) trains, on the labels; the children get no forward pass and
  no gradient of their own;
* from then on every step is the sandwich of BigNAS: the largest child on the labels, the
  smallest and ``random_children`` random ones (4 children a step with the default 2) on the
  in-place distillation targets of the partially trained full model of the same step
  (``T^2`` x soft cross-entropy at temperature ``T``, as the official code);
* ε-shrinking, the subnet learning-rate ramp: the children's losses (hence gradients, hence
  their effective learning rate under SGD) are weighted by ``beta(t)``, which grows linearly
  from 0 at ``shrink_start`` to ``child_multiplier`` after ``ramp`` more of the training
  steps, and stays there; the full model's weight is 1.

Simplifications (documented): the official ramp targets the learning rate the schedule has at
the end of the ramp (``beta = ramp_lr / lr(t)``); here ``beta`` is relative to the current
learning rate. Gradients of the children are summed with the full model's (the official
code's ``sum`` aggregation). Export and ``hundred search compress`` are those of bignas.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from hundred.registry import register
from hundred.tracks.compress.methods.bignas import BigNAS, BigNASParams
from hundred.tracks.compress.supernet import sandwich, supernet_of


class DepSParams(BigNASParams):
    shrink_start: float = Field(0.5, ge=0, lt=1, description="share of the training steps "
                                "before which only the full model trains (the paper: ~0.5)")
    ramp: float = Field(0.1, ge=0, lt=1, description="share of the training steps over which "
                        "the children's loss weight beta grows linearly from 0 to "
                        "child_multiplier after shrink_start (0: at once)")
    child_multiplier: float = Field(1.0, gt=0, description="the children's loss weight (their "
                                    "learning rate relative to the full model's) after the "
                                    "ramp")


@register("compress", "deps")
class DepS(BigNAS):
    """Full model alone, then the sandwich with in-place distillation and a ramped beta."""

    Params = DepSParams

    def beta(self, step: int) -> float:
        """The children's loss weight at ``step``: 0 before the shrinking point, then a linear
        ramp to ``child_multiplier``."""
        progress = step / self.total_steps
        start, ramp = self.params.shrink_start, self.params.ramp
        if progress < start:
            return 0.0
        if ramp == 0:
            return self.params.child_multiplier
        return self.params.child_multiplier * min(1.0, (progress - start) / ramp)

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        space = supernet_of(model)
        step = self.step
        if self.next_step() < self.params.shrink_start:  # the full model alone
            return self.sandwich_loss(model, images, labels, [space.largest()])
        temperature = self.params.temperature
        return self.sandwich_loss(model, images, labels,
                                  sandwich(space, self.rng, self.params.random_children),
                                  child_weight=self.beta(step), kd_scale=temperature ** 2)

    def epoch_log(self, epoch: int) -> dict[str, Any]:
        last = max(0, self.step - 1)  # the epoch's last step
        return {"deps_beta": self.beta(last),
                "deps_shrinking": last / self.total_steps >= self.params.shrink_start}
