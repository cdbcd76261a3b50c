"""BigNAS: train one elastic supernet whose children are used without retraining.

Yu, Jin, Liu, Bender, Kindermans, Tan, Huang, Song, Pang, Le, "BigNAS: Scaling Up Neural
Architecture Search with Big Single-Stage Models" (ECCV 2020, arXiv 2003.11142). On the
elastic ResNet of :mod:`hundred.models.elastic` (``model.name=elastic_resnet``):

* the sandwich rule (Sec. 3.1): every step trains the largest child, the smallest child and
  ``N = 2`` random children on the same batch, their gradients accumulated into one
  optimiser step (the loss returned is their sum);
* in-place distillation (Sec. 3.1): the largest child is trained on the labels (cross-entropy
  with ``train.label_smoothing``, BigNAS uses 0.1), every other child on the largest child's
  soft predictions of the same step, detached (no gradient flows into the target):
  ``L_child = - sum_c softmax(z_max / T)_c log softmax(z_child / T)_c`` with ``T = 1``;
* initialisation (Sec. 3.1): the last BN gamma of every residual block starts at zero
  (``elastic_resnet``'s ``zero_init_residual``, on by default); regularisation: no weight
  decay on BN parameters and biases (the trainer's default, ``optim.decay_norm_and_bias``
  false; a run that turns it on is refused); weight decay applies once per step to the
  shared weights, i.e. only through the largest child, as the paper's "regularise only the
  largest child" (there is no dropout here);
* BN calibration (Sec. 3.2): a child's running statistics are re-estimated on training
  batches before it is evaluated (:func:`hundred.tracks.compress.supernet.recalibrate_bn`).

Not reproduced: the paper's exponentially decaying learning rate with a constant ending
(use the run's schedule) and its coarse-to-fine architecture selection (the search here is
a random sample filtered by cost, the best few scored: :func:`search_child`).

Export: without ``compress.flops_target`` the largest child (the full network) with its BN
statistics recalibrated; the run's checkpoint then still holds the whole supernet, so
``hundred search compress RUN_DIR --flops 0.5`` can pick children afterwards. With
``compress.flops_target`` the run itself searches (the same :func:`search_child`, children
scored on training images after recalibration) and exports the best child under the budget;
its checkpoint then holds that child, not the supernet.
"""

from __future__ import annotations

import random
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hundred.config import RunConfig
from hundred.data import Dataset
from hundred.engine.losses import cross_entropy
from hundred.engine.method import SetupContext
from hundred.errors import HundredError
from hundred.models import Classifier
from hundred.registry import register
from hundred.tracks.compress.method import CompressMethod
from hundred.tracks.compress.supernet import (extract, recalibrate_bn, sandwich, search_child,
                                              selection_loader, supernet_of)


class BigNASParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    random_children: int = Field(2, ge=0, description="N: random children per step besides "
                                 "the largest and the smallest (the paper: 2)")
    temperature: float = Field(1.0, gt=0, description="T of the in-place distillation's soft "
                               "targets (the paper: 1, plain soft predictions)")
    calibration_batches: int = Field(16, ge=1, description="training batches of BN "
                                     "recalibration before a child is evaluated")
    search_samples: int = Field(300, ge=1, description="random children sampled by the search "
                                "under compress.flops_target")
    search_evaluate: int = Field(5, ge=1, description="children under the budget (most FLOPs "
                                 "first) recalibrated and scored on training images by the search")


def soft_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor,
                       temperature: float = 1.0) -> torch.Tensor:
    """In-place distillation: cross-entropy of ``logits`` against the detached soft predictions
    of ``target_logits`` (no gradient reaches the target)."""
    target = F.softmax(target_logits.detach().float() / temperature, dim=1)
    return -(target * F.log_softmax(logits.float() / temperature, dim=1)).sum(1).mean()


@register("compress", "bignas")
class BigNAS(CompressMethod):
    """Sandwich-rule training with in-place distillation of an elastic supernet."""

    Params = BigNASParams

    def __init__(self, params: dict[str, Any] | None = None, config: RunConfig | None = None
                 ) -> None:
        super().__init__(params, config)
        self.rng = random.Random(self.config.seed)
        self.trace: list[dict[str, Any]] = []  # the last step's children (tests read it)
        self._ctx: Any = None
        self._dataset: Dataset | None = None
        self._loader: Any = None
        self.search: dict[str, Any] | None = None
        # the step counter of schedules over training progress (DεpS, OFA)
        self.total_steps = 1
        self.steps_per_epoch = 1
        self.step = 0

    def prepare(self, config: RunConfig, dataset: Dataset, image_size: int) -> None:
        if config.model.name != "elastic_resnet" or "child" in config.model.options:
            raise HundredError("compress/bignas trains the elastic supernet: "
                               "model.name=elastic_resnet without model.options.child")
        if config.optim.decay_norm_and_bias:
            raise HundredError("compress/bignas applies no weight decay to BN parameters and "
                               "biases (BigNAS Sec. 3.1): leave optim.decay_norm_and_bias off")

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        supernet_of(model)
        self.steps_per_epoch = max(1, ctx.steps_per_epoch)
        self.total_steps = max(1, ctx.steps_per_epoch * ctx.epochs)

    def on_epoch_start(self, epoch: int) -> None:
        self.step = epoch * self.steps_per_epoch  # also right after a resume

    def next_step(self) -> float:
        """Count one training step; returns the share of training done before it."""
        step, self.step = self.step, self.step + 1
        return step / self.total_steps

    def train_loader(self, ctx: Any, dataset: Dataset) -> Any:
        self._ctx, self._dataset = ctx, dataset
        self._loader = super().train_loader(ctx, dataset)
        return self._loader

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        space = supernet_of(model)
        return self.sandwich_loss(model, images, labels,
                                  sandwich(space, self.rng, self.params.random_children))

    def sandwich_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      children: list[dict[str, Any]], child_weight: float = 1.0,
                      kd_scale: float = 1.0) -> torch.Tensor:
        """The sum of the children's losses on one batch: ``children[0]`` (the largest) on the
        labels, every other one weighted by ``child_weight`` on the first one's detached soft
        predictions (``kd_scale`` x soft cross-entropy at ``params.temperature``). The
        supernet is left at its largest child; ``self.trace`` records the step."""
        space = supernet_of(model)
        self.trace = []
        total: torch.Tensor | None = None
        target: torch.Tensor | None = None
        try:
            for index, child in enumerate(children):
                space.set_child(child)
                logits = model(images)
                if index == 0:  # the largest child: labels
                    part = cross_entropy(logits, labels, self.config.train.label_smoothing)
                    target = logits.detach()
                else:
                    part = child_weight * kd_scale * soft_cross_entropy(
                        logits, target, self.params.temperature)
                self.trace.append({"child": child, "logits": logits,
                                   "target": None if index == 0 else target})
                total = part if total is None else total + part
        finally:
            space.set_child(None)  # validation and everything else see the largest child
        return total

    def compressed_model(self, model: Classifier) -> Classifier:
        space = supernet_of(model)
        target = self.config.compress.flops_target
        if target is None or self._ctx is None:
            child = extract(model, space.largest())
            if self._loader is not None:
                recalibrate_bn(child, self._loader, self.params.calibration_batches)
            return child.eval()
        from hundred.engine.metrics import evaluate
        from hundred.engine.run import image_size

        ctx, dataset = self._ctx, self._dataset
        result = search_child(
            model, image_size(ctx.config, dataset),
            score=lambda m: evaluate(m, selection_loader(ctx, dataset))["top1"],
            calibration=lambda: self._loader, calibration_batches=self.params.calibration_batches,
            flops_ratio=target, samples=self.params.search_samples,
            evaluate=self.params.search_evaluate, seed=self.config.seed)
        self.search = result.record()
        child = extract(model, result.best.child)
        recalibrate_bn(child, self._loader, self.params.calibration_batches)
        return child.eval()

    def reference_model(self, model: Classifier) -> nn.Module:
        return extract(model, supernet_of(model).largest()).eval()

    def extra_measurements(self, model: Classifier, loader: Any) -> dict[str, Any]:
        return {"supernet": {"child": supernet_of(model).child,
                             "holds_supernet": self.search is None,
                             "search": self.search}}

