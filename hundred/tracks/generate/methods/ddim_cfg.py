"""DDIM with classifier-free guidance: the sampler of "Enhancing Diffusion Models for
High-Quality Image Generation" (arXiv 2412.14422), which combines DDPM training, DDIM sampling
and classifier-free guidance (Ho & Salimans 2022, Eq. 6: ``eps~ = eps(x, null) + w (eps(x, c)
- eps(x, null))``, one network trained with label dropout ``generate.label_dropout``).

``w`` is ``generate.guidance`` (default 2 here: guidance above 1 trades diversity for
fidelity; ``hundred check`` tunes it with ``eta``). Each guided step evaluates the network on
the conditional and the null label in one doubled batch: 2 NFE per step.
"""

from __future__ import annotations

import torch
from torch import nn

from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.generate.diffusion import ddim_sample
from hundred.tracks.generate.method import GenerateMethod, SampleContext


@register("generate", "ddim_cfg")
class DDIMCFG(GenerateMethod):
    """DDIM + classifier-free guidance."""

    objective = "ddpm"
    default_guidance = 2.0
    search_space = {"generate.guidance": Choice((1.0, 1.5, 2.0, 3.0, 5.0)),
                    "generate.eta": Choice((0.0, 0.5))}

    def sample(self, model: nn.Module, labels: torch.Tensor, ctx: SampleContext
               ) -> torch.Tensor:
        return ddim_sample(model, labels, ctx, guidance=self.guidance())
