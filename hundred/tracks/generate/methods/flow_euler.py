"""Flow matching sampled with Euler steps: the first-order baseline of FlowTurbo's comparison.

The denoiser is trained on the flow-matching / rectified-flow objective (Lipman et al., "Flow
Matching for Generative Modeling", ICLR 2023; Liu et al., "Flow Straight and Fast", ICLR 2023):
``x_t = t x1 + (1 - t) x0``, target velocity ``x1 - x0`` (:func:`flow.flow_loss`). Sampling
integrates ``dx/dt = v(x, t, y)`` from noise (``t = 0``) to data (``t = 1``) with
``generate.steps`` evenly spaced Euler steps ``x <- x + dt v(x, t)``: ``steps`` network
evaluations per sample, twice that under classifier-free guidance with ``generate.guidance``
``w`` not in {0, 1} (``v = v(null) + w (v(c) - v(null))``).
"""

from __future__ import annotations

import torch
from torch import nn

from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.generate.flow import sample_flow
from hundred.tracks.generate.method import GenerateMethod, SampleContext


@register("generate", "flow_euler")
class FlowEuler(GenerateMethod):
    """Euler steps on a velocity network."""

    objective = "flow"
    search_space = {"generate.guidance": Choice((1.0, 1.5, 2.0, 3.0))}

    def sample(self, model: nn.Module, labels: torch.Tensor, ctx: SampleContext
               ) -> torch.Tensor:
        return sample_flow(model, labels, ctx, "euler", self.guidance())
