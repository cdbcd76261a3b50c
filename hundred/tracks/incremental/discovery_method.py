"""The base class of continual category-discovery methods, and the losses they share.

Continual generalized category discovery (C-GCD; Ma et al., "Happy: A Debiased Learning
Framework for Continual Generalized Category Discovery", NeurIPS 2024): stage 0 trains on
labelled images of the known classes; every later stage gives *unlabelled* images mixing
old classes with a known number of new ones (the scenario of
:mod:`hundred.tracks.incremental.discovery`). In those stages the scenario hands a method
:data:`UNLABELLED` (-1) in place of every label, so it cannot see them.

The shared losses are SimGCD's (Wen, Zhao & Qi, "Parametric Classification for Generalized
Category Discovery: A Baseline Study", ICCV 2023, Sec. 3-4): a cosine classifier with a
fixed temperature, supervised cross-entropy and supervised contrastive learning on labelled
images, self-distillation between two views with sharpened targets, the mean-entropy
regulariser, and an unsupervised contrastive (InfoNCE) loss on a projection of the features.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from hundred.models import CosineHead
from hundred.tracks.incremental.method import IncrementalMethod

UNLABELLED = -1  # the label of every image of an unlabelled stage, as a method sees it


class DiscoveryMethod(IncrementalMethod):
    """Base class of the methods of the C-GCD scenario (``incremental.scenario=CGCD-...``).

    The scenario calls the class-incremental hooks (``before_task``, ``loss``,
    ``after_task``, ``predict``) with ``self.task`` a stage (``task.num_old`` classes seen
    before it, ``task.new_classes`` the output positions of its new classes, whose number
    the method is told as in the paper); ``self.task_data`` holds the stage's images (labels
    hidden in unlabelled stages) from before ``before_task`` until after ``after_task``.
    Predictions are the argmax over all heads (cluster ids, scored by clustering accuracy).

    Class-incremental scenarios refuse these methods, and the C-GCD scenario refuses every
    other method, with a HundredError before the run writes anything.
    """

    discovers: ClassVar[bool] = True
    exemplars = "never"  # C-GCD is rehearsal-free: no image of a past stage is kept
    views = 2  # two augmented views of each image (self-distillation, contrastive pairs)
    classifier = "clusters"

    def make_head(self, feature_dim: int, num_classes: int) -> nn.Module:
        """The classifier the scenario builds (and grows with ``grown``): SimGCD's
        normalised last layer, ``cos(f, w_c) / student_temperature`` with the scale fixed."""
        temperature = float(getattr(self.params, "student_temperature", 0.1))
        return CosineHead(feature_dim, num_classes, scale=1.0 / temperature, learn_scale=False)

    @staticmethod
    def labelled(labels: torch.Tensor) -> bool:
        """Whether a batch carries labels (stage 0) or none (:data:`UNLABELLED`); a batch of
        both is an error: every stage is either labelled or not."""
        hidden = labels < 0
        if bool(hidden.any()) and not bool(hidden.all()):
            raise ValueError("a C-GCD batch mixes labelled and unlabelled images")
        return not bool(hidden.any())


def projector(feature_dim: int, hidden_dim: int, out_dim: int, layers: int = 3) -> nn.Module:
    """SimGCD's projection MLP for the contrastive losses (``layers`` linear layers with GELU
    between them, hidden width ``hidden_dim``), truncated-normal initialised (std 0.02)."""
    dims = [feature_dim] + [hidden_dim] * (layers - 1) + [out_dim]
    modules: list[nn.Module] = []
    for index, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        modules.append(nn.Linear(d_in, d_out))
        if index < len(dims) - 2:
            modules.append(nn.GELU())
    mlp = nn.Sequential(*modules)
    for module in mlp.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
    return mlp


def teacher_temperature(epoch: int, start: float, end: float, warmup_epochs: int) -> float:
    """The sharpening temperature of the self-distillation targets at ``epoch`` (0-based): a
    linear ramp from ``start`` to ``end`` over ``warmup_epochs`` epochs, then ``end``."""
    if warmup_epochs <= 1 or epoch >= warmup_epochs - 1:
        return end
    return start + (end - start) * epoch / (warmup_epochs - 1)


def self_distillation(logits: torch.Tensor, student_temperature: float,
                      teacher_temperature: float, views: int = 2) -> torch.Tensor:
    """SimGCD's self-distillation: the sharpened, detached prediction of each view
    (``softmax(cos / teacher_temperature)``) is the target of the other views' predictions
    (``softmax(cos / student_temperature)``). ``logits`` are the cosine similarities divided
    by ``student_temperature`` (the head's output), views stacked along the batch."""
    cosine = logits * student_temperature
    targets = F.softmax(cosine.detach() / teacher_temperature, dim=1).chunk(views)
    log_probs = F.log_softmax(logits, dim=1).chunk(views)
    terms = [-(targets[t] * log_probs[s]).sum(1).mean()
             for t in range(views) for s in range(views) if s != t]
    return torch.stack(terms).mean()


def entropy_gap(probabilities: torch.Tensor) -> torch.Tensor:
    """``log K - H(p)`` of a distribution over K outcomes: 0 when uniform; minimising it
    maximises the entropy (SimGCD's mean-entropy regulariser on the batch's mean
    prediction)."""
    p = probabilities.clamp_min(1e-12)
    return (p * p.log()).sum() + math.log(len(p))


def info_nce(projected: torch.Tensor, temperature: float = 1.0, views: int = 2) -> torch.Tensor:
    """Unsupervised contrastive loss (SimCLR's NT-Xent, as in GCD/SimGCD): each image's other
    views are its positives, every other image of the batch a negative; cosine similarities
    divided by ``temperature``."""
    z = F.normalize(projected, dim=1)
    count = len(z) // views
    similarity = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    similarity = similarity.masked_fill(self_mask, float("-inf"))
    identity = torch.arange(len(z), device=z.device) % count
    positive = (identity[:, None] == identity[None, :]) & ~self_mask
    log_prob = similarity.log_softmax(dim=1)
    return -(log_prob.masked_fill(~positive, 0).sum(1) / positive.sum(1)).mean()


def supervised_contrastive(projected: torch.Tensor, labels: torch.Tensor,
                           temperature: float = 0.07, views: int = 2) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., NeurIPS 2020, L^sup_out) on the
    L2-normalised projections of ``views`` views stacked along the batch: the positives of an
    anchor are all other views of images of its class. (With the base temperature equal to
    the temperature, as in SimGCD, the loss carries no extra factor.)"""
    z = F.normalize(projected, dim=1)
    all_labels = labels.repeat(views)
    similarity = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    similarity = similarity.masked_fill(self_mask, float("-inf"))
    positive = (all_labels[:, None] == all_labels[None, :]) & ~self_mask
    log_prob = similarity.log_softmax(dim=1)
    return -(log_prob.masked_fill(~positive, 0).sum(1) / positive.sum(1).clamp_min(1)).mean()


def unwrap(model: nn.Module) -> Any:
    """The plain model behind a DDP or compile wrapper (to reach ``head`` or ``features``)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)
