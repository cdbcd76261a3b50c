"""Adversarial fine-tuning with a slow-start, fast-decay learning rate.

Jeddi, Shafiee & Wong, "A Simple Fine-tuning Is All You Need: Towards Robust Deep Learning
Via Adversarial Fine-tuning" (arXiv 2012.13628, 2020). A model pre-trained without any
defence (``robust.init``: here, a finished ``robust/erm`` or ``classify/erm`` run) is
adversarially trained (Madry et al.'s PGD objective, as :mod:`.at`) for a few epochs, with a
learning rate that starts from zero and rises slowly to its maximum (``optim.lr``), then
decays fast to zero — the schedule the paper argues keeps adversarial training from
overfitting, so that fine-tuning matches or beats adversarial training from scratch at
8-10x less compute.

The schedule is the method's idea, so it replaces the run's ``schedule:`` (the scenario
writes the replacement into ``config.yaml``): piecewise linear, rising from ~0 at the first
step to the peak at ``peak_fraction`` of the steps, then falling to exactly 0 at the last
step (``schedule.name=linear`` with ``warmup_epochs = peak_fraction * epochs``). The paper's
text was not available where this was written: ``peak_fraction`` 0.5 (a symmetric triangle)
is this implementation's reading of "slow start, fast decay", not a number from the paper
(see docs/robust.md).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, Field

from hundred.config import RunConfig, ScheduleConfig
from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.robust.method import AttackModeParams
from hundred.tracks.robust.methods.at import AT


class AdvFinetuneParams(AttackModeParams):
    peak_fraction: float = Field(
        0.5, gt=0, lt=1, description="where the learning rate peaks, as a fraction of the "
        "fine-tuning steps: a linear rise from ~0 before it, a linear fall to 0 at the last "
        "step after it")


@register("robust", "adv_finetune")
class AdvFinetune(AT):
    """Fine-tune a pre-trained model on PGD examples, slow-start fast-decay learning rate."""

    Params: ClassVar[type[BaseModel]] = AdvFinetuneParams
    search_space = {"method_params.peak_fraction": Choice((0.3, 0.5, 0.7))}
    needs_init: ClassVar[bool] = True

    def schedule(self, config: RunConfig) -> ScheduleConfig:
        return ScheduleConfig(name="linear", min_lr_ratio=0.0,
                              warmup_epochs=self.params.peak_fraction * config.train.epochs)
