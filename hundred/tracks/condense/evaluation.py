"""Evaluation of a learned set as the field does it: train freshly initialised networks on it,
N times with different seeds, and report the mean ± std of their test top-1.

Each evaluation setting is labelled (DD-Ranking, Li et al. 2025, asks for this, to separate
what the data is worth from the evaluation tricks): the architecture, the augmentation
(DSA or none), the labels (hard, or the set's soft labels) and the learning rate (the
evaluation lr, or the one the method learned). The optimiser is the condensation papers'
(DC/DSA/DM/MTT ``evaluate_synset``): SGD with momentum 0.9, weight decay 5e-4, batch 256,
the learning rate divided by 10 at half the epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hundred.models import Classifier, create


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against hard labels ``(B,)`` or probability targets ``(B, C)``."""
    if targets.ndim == 1:
        return F.cross_entropy(logits, targets)
    return -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean()


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
              batch_size: int = 1024) -> float:
    """Top-1 (%) of ``model`` on normalised ``images`` (eval mode)."""
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = model(images[start:start + batch_size])
        correct += int((logits.argmax(dim=1) == labels[start:start + batch_size]).sum())
    return 100.0 * correct / max(1, len(labels))


def train_network(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, *,
                  epochs: int, lr: float, batch_size: int = 256, momentum: float = 0.9,
                  weight_decay: float = 5e-4, decay_at_half: bool = True,
                  augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  on_epoch_end: Callable[[int, nn.Module], None] | None = None) -> nn.Module:
    """Train ``model`` on ``images`` (normalised, on its device) and ``targets`` (hard labels
    or probabilities) with SGD for ``epochs`` epochs, shuffled with the global torch RNG;
    ``augment`` (e.g. DSA) is applied per batch; ``on_epoch_end(epoch, model)`` sees the
    weights after each epoch (expert trajectories record them)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                weight_decay=weight_decay)
    model.train()
    for epoch in range(epochs):
        if decay_at_half and epoch == epochs // 2 and epochs > 1:
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.1
        order = torch.randperm(len(images)).to(images.device)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            inputs = images[batch]
            if augment is not None:
                inputs = augment(inputs)
            loss = soft_cross_entropy(model(inputs), targets[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if on_epoch_end is not None:
            on_epoch_end(epoch, model)
    return model


@dataclass
class Setting:
    """One evaluation setting: architecture, augmentation, labels, learning rate."""

    model: str
    augment: str  # "dsa" or "none"
    labels: str  # "hard" or "soft"
    lr: float
    lr_source: str  # "eval_lr" or "learned"
    top1: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(np.mean(self.top1))

    @property
    def std(self) -> float:
        return float(np.std(self.top1, ddof=1)) if len(self.top1) > 1 else math.nan

    def record(self) -> dict[str, Any]:
        return {"model": self.model, "augment": self.augment, "labels": self.labels,
                "lr": self.lr, "lr_source": self.lr_source, "runs": len(self.top1),
                "top1": [round(v, 2) for v in self.top1], "mean": round(self.mean, 2),
                "std": None if math.isnan(self.std) else round(self.std, 2)}


def evaluate_settings(settings: list[Setting], images: torch.Tensor,
                      targets: dict[str, torch.Tensor], test_images: torch.Tensor,
                      test_labels: torch.Tensor, *, runs: int, epochs: int, batch_size: int,
                      weight_decay: float, num_classes: int, image_size: int,
                      model_options: dict[str, dict[str, Any]], seed: int,
                      dsa: Callable[[torch.Tensor], torch.Tensor] | None,
                      log: Callable[[str], None] | None = None) -> list[Setting]:
    """Train ``runs`` fresh networks per setting on ``images`` with ``targets[setting.labels]``
    and test each on ``test_images``; fills ``setting.top1``. Run ``r`` of every setting starts
    from the same seed (``seed * 1000 + r``), so settings differ only in what they name.
    ``model_options`` holds options per architecture name (e.g. the run model's width); other
    architectures are built with their defaults."""
    device = images.device
    for setting in settings:
        for run in range(runs):
            torch.manual_seed(seed * 1000 + run)
            model: Classifier = create(setting.model, num_classes, img_size=image_size,
                                       **model_options.get(setting.model, {})).to(device)
            train_network(model, images, targets[setting.labels], epochs=epochs, lr=setting.lr,
                          batch_size=batch_size, weight_decay=weight_decay,
                          augment=dsa if setting.augment == "dsa" else None)
            setting.top1.append(accuracy(model, test_images, test_labels))
        if log is not None:
            log(f"evaluated {setting.model}, {setting.augment}, {setting.labels} labels, "
                f"lr {setting.lr:.4g}: {setting.mean:.2f} ± {setting.std:.2f} % "
                f"({runs} networks)")
    return settings
