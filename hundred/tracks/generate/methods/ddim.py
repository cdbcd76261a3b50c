"""DDIM: deterministic (or eta-noisy) sampling of a DDPM-trained network in few steps.

Song, Meng, Ermon, "Denoising Diffusion Implicit Models" (ICLR 2021), Eq. 12 over
``generate.steps`` evenly spaced steps, ``generate.eta`` (0: deterministic, the ODE whose
inversion maps data back to its noise; 1: DDPM-like). Conditional (w = 1) unless
``generate.guidance`` is set; with guidance, see ``ddim_cfg``.
"""

from __future__ import annotations

import torch
from torch import nn

from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.generate.diffusion import ddim_sample
from hundred.tracks.generate.method import GenerateMethod, SampleContext


@register("generate", "ddim")
class DDIM(GenerateMethod):
    """DDIM steps on a noise-prediction network."""

    objective = "ddpm"
    search_space = {"generate.eta": Choice((0.0, 0.5, 1.0))}

    def sample(self, model: nn.Module, labels: torch.Tensor, ctx: SampleContext
               ) -> torch.Tensor:
        return ddim_sample(model, labels, ctx, guidance=self.guidance())
