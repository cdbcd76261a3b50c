"""What a robust method adds to the engine's hook set, and the adversarial-training base.

:class:`RobustMethod` declares what the scenario and ``hundred check`` read:

* ``needs_init`` — the method continues a pre-trained model (``robust.init``); ``hundred
  check`` then trains an ERM run on each phase's data first (:mod:`.protocol`);
* ``scenario`` — ``"adversarial"`` (train, then attack val: :mod:`.scenario`) or ``"tta"``
  (adapt the finished ``robust.init`` model online on a corrupted test stream, no training:
  :mod:`.tta`, whose :class:`~hundred.tracks.robust.tta.TestTimeAdaptation` is their base);
* :meth:`RobustMethod.schedule` — a learning-rate schedule that is part of the method's idea
  (adversarial fine-tuning's slow start, fast decay) and replaces ``schedule:`` of the run;
  the scenario applies it before the run directory is written, so ``config.yaml`` records
  the schedule the run really used.

:class:`AdversarialTraining` crafts PGD examples of each batch (torchattacks through the
pixel-space wrapper, :mod:`hundred.tracks.robust.attacks`) under the run's threat model
(``robust.norm/eps/steps/step_size/restarts/random_start``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hundred.config import RunConfig, ScheduleConfig
from hundred.engine.method import Method, SetupContext
from hundred.tracks.robust.attacks import (AttackFn, PixelSpaceModel, ThreatModel,
                                           adversarial_batch, build_pgd, kept_norm_statistics,
                                           plain_module)

if TYPE_CHECKING:
    from hundred.data import Dataset
    from hundred.data.loader import BatchLoader
    from hundred.engine.run import RunContext


def training_threat(config: RunConfig) -> ThreatModel:
    """The threat model adversarial training crafts its examples under."""
    robust = config.robust
    return ThreatModel(norm=robust.norm, eps=robust.eps, steps=robust.steps,
                       step_size=robust.step_size, restarts=robust.restarts,
                       random_start=robust.random_start)


class RobustMethod(Method):
    """Base class of the robust track's methods."""

    needs_init: ClassVar[bool] = False
    scenario: ClassVar[Literal["adversarial", "tta"]] = "adversarial"

    def schedule(self, config: RunConfig) -> ScheduleConfig | None:
        """The schedule this method trains with whatever ``schedule:`` says (None: the
        run's own)."""
        return None

    def train_loader(self, ctx: RunContext, dataset: Dataset) -> BatchLoader:
        """The training batches: the run's augmentation of the train split."""
        from hundred.engine.run import train_loader

        return train_loader(ctx, dataset, views=self.views)

    def save_pictures(self, model: nn.Module, run_dir: Path, num_classes: int,
                      image_size: int) -> dict[str, Any]:
        """After training and the attacks (rank 0): write pictures of ``model`` into
        ``run_dir`` for the report (e.g. dat's samples, ``ReportSpec.images``); returns
        what the summary records of them. Nothing by default."""
        return {}


class AttackModeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attack_mode: Literal["train", "eval"] = Field(
        "train", description="the model's mode while PGD crafts the training examples: "
        "'train' (Madry et al.'s code and Rice et al.: batch-norm on the batch's statistics; "
        "the running averages are left as they were) or 'eval' (running statistics, as "
        "TRADES' code does)")


class AdversarialTraining(RobustMethod):
    """A method trained on PGD examples of its batches (:meth:`adversarial_examples`)."""

    Params: ClassVar[type[BaseModel]] = AttackModeParams
    _attack: AttackFn | None = None
    _pixel_model: PixelSpaceModel | None = None

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        if self._attack is None:
            data = ctx.config.data
            self._pixel_model = PixelSpaceModel(plain_module(model), data.mean, data.std
                                                ).to(ctx.device)
            self._attack = build_pgd(self._pixel_model, training_threat(ctx.config),
                                     num_classes=0, seed=ctx.config.seed,
                                     train_mode=self.params.attack_mode == "train")

    def adversarial_examples(self, images: torch.Tensor, labels: torch.Tensor
                             ) -> torch.Tensor:
        """PGD examples of the normalised ``images`` (normalised too), crafted under the
        run's threat model in the mode ``attack_mode`` says; the model's batch-norm running
        statistics are the same afterwards."""
        assert self._attack is not None and self._pixel_model is not None, "setup() first"
        model = self._pixel_model.model
        training = model.training
        if self.params.attack_mode == "eval":
            model.eval()
        try:
            with kept_norm_statistics(model), torch.enable_grad():
                return adversarial_batch(self._pixel_model, self._attack, images, labels)
        finally:
            model.train(training)

