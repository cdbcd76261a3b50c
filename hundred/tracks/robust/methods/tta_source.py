"""The source model without adaptation: the baseline every test-time adaptation method is
measured against (the "Source" row of TENT's and ReservoirTTA's tables).

The finished ``robust.init`` classifier predicts every test batch in eval mode (batch-norm
with its training running statistics); nothing changes along the stream, so its accuracy per
domain is the same in every cycle.
"""

from __future__ import annotations

import torch
from torch import nn

from hundred.registry import register
from hundred.tracks.robust.tta import Learner, TestTimeAdaptation, TTAContext


class FrozenLearner(Learner):
    """Predicts with the model as it is (eval mode), never updates it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model.eval().requires_grad_(False))

    @torch.no_grad()
    def step(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


@register("robust", "tta_source")
class TTASource(TestTimeAdaptation):
    """No adaptation: the source model's predictions on the stream."""

    def make_learner(self, model: nn.Module, ctx: TTAContext) -> Learner:
        return FrozenLearner(model)
