"""Fine-tuning: train on each new task's data alone — the lower bound of class-incremental
learning, which forgets old classes catastrophically (McCloskey & Cohen, 1989; the baseline
of Rebuffi et al., iCaRL, CVPR 2017)."""

from __future__ import annotations

import torch
from torch import nn

from hundred.engine.losses import cross_entropy
from hundred.registry import register
from hundred.tracks.incremental.method import IncrementalMethod


@register("incremental", "finetune")
class Finetune(IncrementalMethod):
    """Cross-entropy over all seen classes on the current task's data only; no memory."""

    exemplars = "never"  # the exemplar-free lower bound: only the current task's images
    search_space = {}  # the shared grid only (inherited by replay and joint)

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cross_entropy(model(images), labels, self.config.train.label_smoothing)
