"""TENT — Wang, Shelhamer, Liu, Olshausen & Darrell, "Tent: Fully Test-time Adaptation by
Entropy Minimization" (ICLR 2021, arXiv 2006.10726).

For every test batch ``x`` the model predicts ``y_hat = f(x; theta)`` and takes a gradient
step on the mean Shannon entropy of its predictions (Eq. 2),

    L(x) = mean_i H(y_hat_i),   H(y_hat) = -sum_c p(y_hat_c) log p(y_hat_c),

updating only the affine scale and shift (gamma, beta) of the normalisation layers; batch
normalisation uses the test batch's mean and variance instead of the training running
estimates (Sec. 3, "modulation parameters"). Predictions come from the forward pass the
update is computed on (TENT's ``forward_and_adapt``). The optimiser and learning rate are
``robust.tta``'s (paper: SGD momentum 0.9, lr 0.00025 at batch 64 on ImageNet; Adam lr 1e-3
at batch 128 on CIFAR); ``robust.tta.steps`` steps per batch (paper: 1).
"""

from __future__ import annotations

import torch
from torch import nn

from hundred.registry import register
from hundred.tracks.robust.tta import (Learner, TestTimeAdaptation, TTAContext,
                                       configure_norm_adaptation, entropy, make_optimizer)


class TentLearner(Learner):
    """Entropy minimisation of one model's normalisation affine parameters."""

    def __init__(self, model: nn.Module, ctx: TTAContext) -> None:
        super().__init__(model)
        self.params = configure_norm_adaptation(model)
        self.optimizer = make_optimizer(self.params, ctx.config.robust.tta)
        self.steps = ctx.config.robust.tta.steps

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        """TENT's objective: the mean prediction entropy of the batch (Eq. 2)."""
        return entropy(logits).mean()

    def step(self, images: torch.Tensor) -> torch.Tensor:
        logits = images.new_empty(0)
        for _ in range(self.steps):
            with torch.enable_grad():
                logits = self.model(images)
                loss = self.loss(logits)
                if loss.requires_grad:
                    loss.backward()
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        return logits.detach()


@register("robust", "tent")
class Tent(TestTimeAdaptation):
    """Minimise the test batch's prediction entropy through the norm layers' affine
    parameters, normalising with test-batch statistics."""

    def make_learner(self, model: nn.Module, ctx: TTAContext) -> Learner:
        return TentLearner(model, ctx)
