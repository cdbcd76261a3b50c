"""What a classification method adds to the engine's hook set: ``prepare``, called with the
loaded data before the run directory exists (so a bad teacher writes nothing),
``train_loader`` (the training batches: a method that replays stored views and soft targets
supplies its own), ``teacher_label`` (what the reports' teacher column shows), and the
distillation base class that owns a frozen teacher."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from hundred.config import RunConfig
from hundred.data import Dataset
from hundred.engine.method import Method, SetupContext
from hundred.errors import HundredError

if TYPE_CHECKING:
    from hundred.data.loader import BatchLoader
    from hundred.engine.run import RunContext


class ClassifyMethod(Method):
    """Base class of the classification track's methods."""

    def prepare(self, config: RunConfig, dataset: Dataset, image_size: int) -> None:
        """Called once the data is loaded, before the run directory is created: check and load
        what the method needs from outside the run (a teacher). The default needs nothing."""

    def train_loader(self, ctx: RunContext, dataset: Dataset) -> BatchLoader:
        """The training batches, ``(images, labels)`` for :meth:`loss`. The default: the
        run's augmentation (``data.augment``) of the train split, :attr:`views` views, integer
        labels."""
        from hundred.engine.run import train_loader

        return train_loader(ctx, dataset, views=self.views)

    def teacher_label(self) -> str | None:
        """The teacher behind this method's runs, in words, for the summary and the reports'
        teacher column (None: trained without a teacher)."""
        return None


class DistillationMethod(ClassifyMethod):
    """A method trained against a teacher (``classify.teacher``, ``--teacher``).

    The teacher is loaded and checked in :meth:`prepare` (classes, files), then registered as
    a frozen module in :meth:`setup`: on the device, in eval mode, in neither the optimiser
    nor the checkpoint. It runs under the trainer's autocast, inside ``loss``; call
    :meth:`teacher_logits` once per batch.
    """

    needs_teacher: ClassVar[bool] = True
    _teacher: nn.Module | None = None

    def prepare(self, config: RunConfig, dataset: Dataset, image_size: int) -> None:
        from hundred.tracks.classify.teacher import load_teacher

        spec = config.classify.teacher
        if spec is None:
            raise HundredError(f"{self.track}/{self.name} distils a teacher: give --teacher "
                               "RUN_DIR (a finished run) or --teacher timm:NAME:PATH")
        self._teacher = load_teacher(spec, dataset.num_classes, dataset.name, image_size)

    def teacher_label(self) -> str | None:
        from hundred.tracks.classify.teacher import teacher_label

        spec = self.config.classify.teacher
        return None if spec is None else teacher_label(spec)

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        if "teacher" not in self.frozen:
            if self._teacher is None:
                raise HundredError(f"{self.track}/{self.name}: the teacher was not prepared")
            self.add_frozen("teacher", self._teacher)

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen teacher's logits for ``images`` (no graph, same autocast as the step)."""
        return self.frozen["teacher"](images)
