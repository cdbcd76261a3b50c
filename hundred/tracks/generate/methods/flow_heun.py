"""Flow matching sampled with Heun steps: the second-order baseline FlowTurbo starts from.

Same denoiser and objective as ``flow_euler`` (velocity on the straight path ``x_t = t x1 +
(1 - t) x0``). Each of the ``generate.steps`` evenly spaced steps is Heun's method, the explicit
trapezoidal rule (FlowTurbo, Zhao et al., NeurIPS 2024, Eq. 4; Karras et al., "Elucidating the
Design Space of Diffusion-Based Generative Models", NeurIPS 2022, Alg. 1):

    x~ = x + dt v(x, t);   x <- x + dt/2 (v(x, t) + v(x~, t + dt)).

Two network evaluations per step, the last one included: unlike EDM's last step to
``sigma = 0``, the flow velocity at ``t = 1`` is finite, so the correction is kept. Under
classifier-free guidance (``w`` not in {0, 1}) each evaluation is a doubled batch: 4 NFE/step.
"""

from __future__ import annotations

import torch
from torch import nn

from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.generate.flow import sample_flow
from hundred.tracks.generate.method import GenerateMethod, SampleContext


@register("generate", "flow_heun")
class FlowHeun(GenerateMethod):
    """Heun steps on a velocity network."""

    objective = "flow"
    search_space = {"generate.guidance": Choice((1.0, 1.5, 2.0, 3.0))}

    def sample(self, model: nn.Module, labels: torch.Tensor, ctx: SampleContext
               ) -> torch.Tensor:
        return sample_flow(model, labels, ctx, "heun", self.guidance())
