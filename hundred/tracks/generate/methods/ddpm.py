"""DDPM: noise-prediction training and ancestral sampling.

Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models" (NeurIPS 2020): trained with the
simple loss (Eq. 14), sampled with Algorithm 2 over ``generate.steps`` steps (all T of them by
the paper; fewer skip timesteps). Guidance ``w`` applies when ``generate.guidance`` is set
(default 1: the conditional model). The baseline of "Enhancing Diffusion Models for
High-Quality Image Generation" (DDPM vs DDIM + CFG at equal steps).
"""

from __future__ import annotations

import torch
from torch import nn

from hundred.registry import register
from hundred.tracks.generate.diffusion import ddpm_sample
from hundred.tracks.generate.method import GenerateMethod, SampleContext


@register("generate", "ddpm")
class DDPM(GenerateMethod):
    """Noise prediction, ancestral sampling."""

    objective = "ddpm"

    def sample(self, model: nn.Module, labels: torch.Tensor, ctx: SampleContext
               ) -> torch.Tensor:
        return ddpm_sample(model, labels, ctx, guidance=self.guidance())
