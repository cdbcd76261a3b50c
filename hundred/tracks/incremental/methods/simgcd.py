"""SimGCD continued stage by stage: the plain baseline of continual category discovery.

Wen, Zhao & Qi, "Parametric Classification for Generalized Category Discovery: A Baseline
Study", ICCV 2023 (Sec. 4, Eqs. 1-5), run through the C-GCD scenario as Happy's baseline
(Ma et al., NeurIPS 2024, Sec. 5):

* a cosine classifier ``cos(f, w_c) / 0.1`` (the normalised last layer) on the backbone's
  features, and a projection MLP for the contrastive losses;
* stage 0 (labelled): ``(1 - lambda) (L_self-distill + eps * L_entropy) + lambda L_CE`` for
  the classifier plus ``(1 - lambda) L_InfoNCE + lambda L_SupCon`` for the representation,
  ``lambda = 0.35`` (Eqs. 3-5; the self-distillation targets are the other view's
  prediction sharpened by a teacher temperature ramped 0.07 -> 0.04 over 30 epochs);
* later stages (unlabelled): the new classes' heads are appended (randomly initialised)
  and training continues with the unsupervised terms alone,
  ``L_self-distill + eps * L_entropy + L_InfoNCE`` (targets sharpened at 0.05, as Happy's
  later stages), the mean-entropy regulariser spreading the batch's mean prediction over
  all heads.

Nothing else protects old classes: forgetting and the bias towards old or new classes are
what Happy (``happy``) addresses on top of this.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hundred.engine.method import SetupContext
from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.incremental.discovery_method import (DiscoveryMethod, entropy_gap,
                                                         info_nce, projector, self_distillation,
                                                         supervised_contrastive,
                                                         teacher_temperature)


class SimGCDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    supervised_weight: float = Field(0.35, ge=0, le=1, description="lambda of stage 0: weight "
                                     "of the supervised terms (CE, SupCon)")
    entropy_weight: float = Field(1.0, ge=0, description="eps: mean-entropy regulariser "
                                  "(Happy's CIFAR runs: 1; SimGCD's default 2)")
    student_temperature: float = Field(0.1, gt=0, description="the classifier's fixed "
                                       "temperature: logits = cos / this")
    teacher_temperature_start: float = Field(0.07, gt=0, description="stage 0: sharpening "
                                             "temperature of the targets at the first epoch")
    teacher_temperature: float = Field(0.04, gt=0, description="stage 0: after the warm-up")
    teacher_warmup_epochs: int = Field(30, ge=0, description="stage 0: epochs of the ramp")
    later_teacher_temperature: float = Field(0.05, gt=0, description="unlabelled stages: "
                                             "fixed sharpening temperature (Happy)")
    contrastive_temperature: float = Field(1.0, gt=0, description="InfoNCE temperature "
                                           "(GCD/SimGCD: 1.0)")
    supcon_temperature: float = Field(0.07, gt=0, description="SupCon temperature")
    projector_hidden: int = Field(2048, ge=1, description="hidden width of the projection MLP")
    projector_dim: int = Field(256, ge=1, description="output width of the projection MLP")
    projector_layers: int = Field(3, ge=1, description="linear layers of the projection MLP")


@register("incremental", "simgcd")
class SimGCD(DiscoveryMethod):
    """SimGCD's losses: supervised + self-distillation in stage 0, unsupervised after."""

    Params = SimGCDParams
    search_space = {"method_params.entropy_weight": Choice((0.5, 1.0, 2.0, 4.0)),
                    "method_params.supervised_weight": Choice((0.25, 0.35, 0.5))}

    epoch = 0

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        if "projector" not in self.trainable:
            p = self.params
            self.add_trainable("projector", projector(model.feature_dim, p.projector_hidden,
                                                      p.projector_dim, p.projector_layers))

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def sharpening(self) -> float:
        """The teacher temperature of the current stage and epoch."""
        p = self.params
        if self.task.index > 0:
            return p.later_teacher_temperature
        return teacher_temperature(self.epoch, p.teacher_temperature_start,
                                   p.teacher_temperature, p.teacher_warmup_epochs)

    # -- the loss ----------------------------------------------------------------------------
    def loss(self, model: nn.Module, images: Any, labels: torch.Tensor) -> torch.Tensor:
        p, views = self.params, len(images)
        batch = torch.cat(list(images))
        logits, features = model(batch, return_features=True)
        logits = logits.float()
        projected = self.trainable["projector"](features).float()
        distill = self_distillation(logits, p.student_temperature, self.sharpening(), views)
        mean_prediction = logits.softmax(dim=1).mean(dim=0)
        contrastive = info_nce(projected, p.contrastive_temperature, views)
        if self.labelled(labels):  # stage 0
            weight = p.supervised_weight
            cross_entropy = F.cross_entropy(logits, labels.repeat(views))
            supcon = supervised_contrastive(projected, labels, p.supcon_temperature, views)
            clustering = distill + p.entropy_weight * entropy_gap(mean_prediction)
            return ((1 - weight) * (clustering + contrastive)
                    + weight * (cross_entropy + supcon))
        return (distill + self.entropy_regulariser(mean_prediction) + contrastive
                + self.unlabelled_extra(model, batch, features))

    def entropy_regulariser(self, mean_prediction: torch.Tensor) -> torch.Tensor:
        """Unlabelled stages: SimGCD's mean-entropy regulariser over all heads."""
        return self.params.entropy_weight * entropy_gap(mean_prediction)

    def unlabelled_extra(self, model: nn.Module, images: torch.Tensor,
                         features: torch.Tensor) -> torch.Tensor:
        """More terms of an unlabelled stage's loss (none here; Happy adds its own)."""
        return features.new_zeros(())
