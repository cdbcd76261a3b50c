"""Evaluation: top-k accuracy and loss over a loader, without touching training state."""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)
                 ) -> dict[int, torch.Tensor]:
    """Number of samples whose label is among the ``k`` largest logits, for each ``k``."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return {k: hits[:, :k].any(dim=1).sum() for k in ks}


ECE_BINS = 15


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             autocast: torch.autocast | None = None) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%), mean cross-entropy (the NLL) and the expected calibration
    error (%, 15 equal-width confidence bins, Guo et al., ICML 2017, Eq. 3; torchmetrics) of
    ``model`` on ``batches``."""
    from torchmetrics.classification import MulticlassCalibrationError

    was_training = model.training
    model.eval()
    correct1 = correct5 = loss_sum = None
    calibration = None
    count = 0
    for images, labels in batches:
        if autocast is not None:
            with autocast:
                logits = model(images)
        else:
            logits = model(images)
        logits = logits.float()
        hits = topk_correct(logits, labels)
        loss = F.cross_entropy(logits, labels, reduction="sum")
        correct1 = hits[1] if correct1 is None else correct1 + hits[1]
        correct5 = hits[5] if correct5 is None else correct5 + hits[5]
        loss_sum = loss if loss_sum is None else loss_sum + loss
        if calibration is None:
            # evaluation runs on one rank only: no all-gather across DDP ranks at compute()
            calibration = MulticlassCalibrationError(logits.shape[1], n_bins=ECE_BINS, norm="l1",
                                                     sync_on_compute=False).to(logits.device)
        calibration.update(logits, labels)
        count += len(labels)
    model.train(was_training)
    if count == 0:
        return {"top1": float("nan"), "top5": float("nan"), "loss": float("nan"),
                "ece": float("nan")}
    return {"top1": 100.0 * float(correct1) / count, "top5": 100.0 * float(correct5) / count,
            "loss": float(loss_sum) / count, "ece": 100.0 * float(calibration.compute())}
