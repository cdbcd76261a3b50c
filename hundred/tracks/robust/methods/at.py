"""PGD adversarial training.

Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models Resistant to
Adversarial Attacks" (ICLR 2018), Eq. (2.1): min_θ E_(x,y) [ max_{δ ∈ S} L(θ, x + δ, y) ],
the inner maximisation approximated by PGD (Sec. 2.1) from a uniformly random start in the
ε-ball, the outer minimisation by SGD on the loss at the PGD point (Danskin's theorem,
Sec. 2.3). The batch is replaced by its adversarial examples (no clean term).

The threat model of the examples is the run's ``robust:`` section (CIFAR convention: L∞
8/255, 10 steps of 2/255, Rice et al., ICML 2020; Madry et al. used 7 steps of 2/255). The
examples are crafted with the model in train mode (``attack_mode``), as Madry et al.'s and
Rice et al.'s code do; batch-norm running statistics are not moved by the attack's forward
passes.
"""

from __future__ import annotations

import torch
from torch import nn

from hundred.engine.losses import cross_entropy
from hundred.registry import register
from hundred.tracks.robust.method import AdversarialTraining


@register("robust", "at")
class AT(AdversarialTraining):
    """Cross-entropy on the PGD examples of the batch (Eq. 2.1)."""

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        adversarial = self.adversarial_examples(images, labels)
        return cross_entropy(model(adversarial), labels, self.config.train.label_smoothing)
