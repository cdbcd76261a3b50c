"""DR — Faghri, Pouransari, Mehta, Farajtabar, Farhadi, Rastegari & Tuzel, "Reinforce Data,
Multiply Impact: Improved Model Accuracy and Robustness with Dataset Reinforcement" (ICCV
2023, arXiv 2303.08983): training on a reinforced dataset.

The knowledge of a teacher ensemble was stored once, next to the data, by ``hundred data
reinforce`` (:mod:`hundred.tracks.classify.reinforce`): per training image, ``NS``
augmentation parameters and, per augmented view, the ensemble's top-``k`` probabilities.
Training is then knowledge distillation without a teacher: each image replays one of its
stored augmentations (drawn per epoch) and the student minimises

    L = KL( densify(p_top-k) || softmax(student(view)) ),   averaged over the batch,

where ``densify`` keeps the stored probabilities and spreads the left-over mass evenly over
the other classes. With probability ``1 - p`` an image is instead trained on a fresh
augmentation (``data.augment``) and its one-hot label, as in the official training code
(``p = 0.99`` in its ImageNet+ configs). No teacher is loaded or run, so a run costs what
plain training costs. Give the reinforcement as the data: ``--data PACKED-reinforced``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hundred.config import RunConfig
from hundred.data import Dataset
from hundred.errors import HundredError
from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.classify.method import ClassifyMethod

if TYPE_CHECKING:
    from hundred.data.loader import BatchLoader
    from hundred.engine.run import RunContext
    from hundred.tracks.classify.reinforce import Reinforcement


class DRParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    replay_probability: float = Field(
        0.99, ge=0, le=1, description="p: probability that an image is trained on one of its "
        "stored views and soft labels (else on a fresh augmentation and its hard label)")


def reinforced_kl(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``KL(targets || softmax(logits))`` summed over classes, averaged over the batch
    (float32; ``targets`` rows are distributions, zeros allowed)."""
    log_student = F.log_softmax(logits.float(), dim=1)
    return F.kl_div(log_student, targets.float(), reduction="batchmean")


@register("classify", "dr")
class DR(ClassifyMethod):
    """Replay stored augmentations and fit the teacher ensemble's stored soft labels."""

    Params = DRParams
    search_space = {"method_params.replay_probability": Choice((0.9, 0.99, 1.0))}

    def __init__(self, params: dict[str, Any] | None = None, config: RunConfig | None = None
                 ) -> None:
        super().__init__(params, config)
        self._reinforcement: Reinforcement | None = None

    def prepare(self, config: RunConfig, dataset: Dataset, image_size: int) -> None:
        from hundred.tracks.classify.reinforce import FORMAT, open_reinforcement

        derived = dataset.info.get("derived") or {}
        if derived.get("format") != FORMAT:
            raise HundredError(
                f"{self.track}/{self.name} trains on a reinforced dataset: give --data "
                f"REINFORCED, the directory `hundred data reinforce PACKED --teacher SPEC "
                f"--samples N` writes ({config.data.source} is not one)")
        reinforcement = open_reinforcement(derived["dir"], dataset.info.get("fingerprint"))
        stored = reinforcement.meta["augment"]
        mismatches = [
            f"{name} {ours} (the reinforcement's views have {theirs})"
            for name, ours, theirs in (
                ("image size", image_size, reinforcement.image_size),
                ("data.mean", list(config.data.mean), list(stored["mean"])),
                ("data.std", list(config.data.std), list(stored["std"])),
                ("classes", dataset.num_classes, reinforcement.num_classes))
            if ours != theirs]
        if mismatches:
            raise HundredError(f"{derived['dir']} does not fit this run: "
                               + "; ".join(mismatches))
        self._reinforcement = reinforcement

    def train_loader(self, ctx: RunContext, dataset: Dataset) -> BatchLoader:
        from hundred.engine.run import train_loader
        from hundred.tracks.classify.reinforce import ReinforcedLoader

        if self._reinforcement is None:
            raise HundredError(f"{self.track}/{self.name}: the reinforcement was not prepared")
        return train_loader(ctx, dataset, loader_class=ReinforcedLoader,
                            reinforcement=self._reinforcement,
                            replay_probability=self.params.replay_probability)

    def teacher_label(self) -> str | None:
        from hundred.tracks.classify.teacher import teacher_label

        if self._reinforcement is None:
            return None
        return "stored: " + " + ".join(teacher_label(spec)
                                       for spec in self._reinforcement.teachers)

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return reinforced_kl(model(images), labels)
