"""Losses that several methods share."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
                  ) -> torch.Tensor:
    """Cross-entropy computed in float32 (logits may come out of bf16 autocast)."""
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """Knowledge distillation (Hinton et al., 2015): cross-entropy between the teacher's and
    the student's temperature-softened distributions, averaged over the batch.

    Not multiplied by ``temperature**2``: methods that want Hinton's gradient scaling multiply
    themselves (the continual-learning papers, e.g. WA, use the plain form).
    """
    teacher = F.softmax(teacher_logits.float() / temperature, dim=1)
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    return -(teacher * log_student).sum(dim=1).mean()
