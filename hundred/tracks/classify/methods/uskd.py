"""USKD — Yang, Zeng, Li, Zhang, Yuan & Li, "From Knowledge Distillation to Self-Knowledge
Distillation: A Unified Approach with Normalized Loss and Customized Soft Labels" (ICCV 2023,
arXiv 2303.13005), Sec. 4, Universal Self-Knowledge Distillation: self-KD without a teacher.
The normalised KD loss of the paper (NKD, Eq. 8) is fed with soft labels the student makes
for itself:

* soft target label ``p~_t = 1 + s_t^2 - mean_batch(s_t^2)`` (the student's own target
  probability, squared and re-centred; detached), loss ``-p~_t log s_t``;
* soft non-target labels from Zipf's law: the non-target classes are ranked by
  ``r_i = w_i / (1 - w_t) + s_i / (1 - s_t)``, ``w`` the softmax of a *weak* auxiliary head,
  and class of rank k gets ``1/k`` (renormalised); loss ``-sum_{i != t} z~_i log Shat_i``
  over the student's non-target softmax;
* the weak head: a linear classifier on the globally average-pooled output of the stage
  before the last (ResNet-50's stage 3 of 4 in the paper; here the penultimate stage of any
  backbone: stage 2 of 3 for the CIFAR ResNets and ConvNet-D3, block group 2 of 3 for
  ``vit_tiny_p4_32``), trained with cross-entropy against ``0.9 * one_hot + 0.1 / C``.

Total: ``L = CE + alpha L_target + beta L_non-target + mu L_weak``. The loss terms live in
:func:`hundred.tracks.classify.losses.uskd_loss` (which documents where it departs from the
official code, yzd-v/cls_KD). The weak head's gradient also reaches the backbone stages up to
the tapped one, as in the official code (its feature is not detached).

The weak head is the method's own trainable module (``method.weak_head.*`` in checkpoints,
optimised with the model), not part of the model: the deployed network is the plain one. The
tapped stage's output is read by a forward hook during the ordinary ``model(images)`` call
(:mod:`hundred.models.taps`), so DDP sees the forward.

``rank_by`` chooses how the student's term of the ranking score is formed: ``probability``
(the paper) or ``log_probability`` (a quirk of the official code, which ranks with the
student's log-softmax). Defaults are the paper's CIFAR-100 setting (alpha = 0.1, beta = 0.1,
mu = 0.1); on ImageNet it uses alpha = 1, beta = 0.1, mu = 0.005.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hundred.config import RunConfig
from hundred.data import Dataset
from hundred.engine.losses import cross_entropy
from hundred.engine.method import SetupContext
from hundred.errors import HundredError
from hundred.models.taps import StageTaps, pool_stage_output, stage_channels, stage_modules, unwrap
from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.classify.losses import uskd_loss
from hundred.tracks.classify.method import ClassifyMethod


class USKDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(0.1, ge=0, description="weight of the soft target loss (CIFAR 0.1, "
                                                "ImageNet 1)")
    beta: float = Field(0.1, ge=0, description="weight of the Zipf soft non-target loss")
    mu: float = Field(0.1, ge=0, description="weight of the weak head's label-smoothed CE "
                                             "(CIFAR 0.1, ImageNet 0.005)")
    rank_by: Literal["probability", "log_probability"] = Field(
        "probability", description="the student's term of the ranking score: its probabilities "
                                   "(the paper) or log-probabilities (the official code)")
    weak_stage: int = Field(-2, description="the stage whose pooled output feeds the weak head, "
                                            "as a Python index into the stages (-2: the "
                                            "penultimate one, the paper's choice)")


@register("classify", "uskd")
class USKD(ClassifyMethod):
    """Cross-entropy plus USKD's self-made soft target and Zipf non-target labels, with a weak
    linear head on the penultimate stage."""

    Params = USKDParams
    search_space = {"method_params.alpha": Choice((0.1, 1.0)),
                    "method_params.mu": Choice((0.005, 0.1))}

    _image_size: int | None = None
    _taps: StageTaps | None = None

    def prepare(self, config: RunConfig, dataset: Dataset, image_size: int) -> None:
        self._image_size = image_size

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        stages = stage_modules(model)
        index = self.params.weak_stage
        if not -len(stages) <= index < len(stages):
            raise HundredError(f"{self.track}/{self.name}: weak_stage {index} is not a stage of "
                               f"{ctx.config.model.name} (it has {len(stages)})")
        stage = stages[index]
        if self._taps is None or self._taps.model is not unwrap(model):
            self._taps = StageTaps(model, [stage])
        if "weak_head" not in self.trainable:
            size = self._image_size or ctx.config.data.image_size
            if size is None:
                raise HundredError(f"{self.track}/{self.name}: the input size is unknown; call "
                                   "prepare() first or set data.image_size")
            channels = stage_channels(model, size, [stage])[0]
            classes = unwrap(model).head.out_features
            self.add_trainable("weak_head", nn.Linear(channels, classes))

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self._taps is None:
            raise HundredError(f"{self.track}/{self.name}: setup() was not called")
        with self._taps.capture() as outputs:
            logits = model(images)
        weak_logits = self.trainable["weak_head"](pool_stage_output(outputs[0]))
        ce = cross_entropy(logits, labels, self.config.train.label_smoothing)
        p = self.params
        return ce + uskd_loss(logits, weak_logits, labels, p.alpha, p.beta, p.mu, p.rank_by)
