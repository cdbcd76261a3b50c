"""Skip-Tuning: training-free scaling of a UNet's skip connections while sampling.

Ma, Xue, Hu, Wang, Liu, Li, Ma, Kawaguchi, "The Surprising Effectiveness of Skip-Tuning in
Diffusion Sampling" (ICML 2024, arXiv 2402.15170). A UNet decoder block concatenates the
skip feature ``h_i`` of its encoder twin; Skip-Tuning feeds it ``rho_i h_i`` instead, with
``rho_i`` linear in the skip's depth, from ``rho_bottom`` at the innermost skip to
``rho_top`` at the outermost (the paper keeps ``rho_top = 1``)::

    rho_i = rho_inner + (rho_outer - rho_inner) * i / (n - 1),   i = 0 (innermost) .. n - 1

The network's weights do not change: the scales are set on the denoiser (its
``skip_scales``, innermost first) for the sampling pass only and restored afterwards. The
paper's point is that the gain grows as the sampler takes fewer steps (the UNet then has to
act closer to a one-shot push-forward from noise to data, and the skips limit how complex
that map can be); the base sampler here is DDIM on a DDPM-trained UNet (the paper applies it
to EDM's Heun / UniPC samplers, LDM's DDIM and UViT), so a Skip-Tuning run reuses a ddpm /
ddim run's denoiser with ``generate.init=RUN_DIR`` and sweeps ``rho_inner`` against
``generate.steps`` (``experiments/skip_tuning_synth100.py``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hundred.errors import HundredError
from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.generate.diffusion import ddim_sample
from hundred.tracks.generate.method import GenerateMethod, SampleContext


def skip_scales(count: int, rho_inner: float, rho_outer: float) -> list[float]:
    """The ``count`` skip scales, innermost first, linear from ``rho_inner`` to
    ``rho_outer`` (one skip: ``rho_inner``)."""
    if count < 1:
        raise HundredError("Skip-Tuning needs a denoiser with skip connections")
    if count == 1:
        return [float(rho_inner)]
    step = (rho_outer - rho_inner) / (count - 1)
    return [float(rho_inner + step * i) for i in range(count)]


@contextmanager
def scaled_skips(model: nn.Module, rho_inner: float, rho_outer: float) -> Iterator[list[float]]:
    """Inside the block the denoiser (``model``, or the network under DDP / EMA wrappers) scales
    its skips by :func:`skip_scales`; its own scales are restored afterwards, also on error."""
    net = _skip_owner(model)
    saved = list(net.skip_scales)
    scales = skip_scales(len(saved), rho_inner, rho_outer)
    net.skip_scales = scales
    try:
        yield scales
    finally:
        net.skip_scales = saved


def _skip_owner(model: nn.Module) -> nn.Module:
    """The module that holds ``skip_scales`` (the UNet denoiser)."""
    for candidate in (model, getattr(model, "module", None), getattr(model, "_orig_mod", None)):
        if candidate is not None and hasattr(candidate, "skip_scales"):
            return candidate
    raise HundredError(f"Skip-Tuning scales a UNet's skip connections; the denoiser "
                       f"{type(model).__name__} has none (use generate.denoiser=unet)")


class SkipTuningParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rho_inner: float = Field(
        0.8, gt=0, description="rho of the innermost skip connection (the paper's rho_bottom; "
        "it tunes rho_bottom per model and number of steps, below 1: weaker inner skips). "
        "1 with rho_outer 1 is the untouched UNet")
    rho_outer: float = Field(
        1.0, gt=0, description="rho of the outermost skip connection (the paper's rho_top: 1)")


@register("generate", "skip_tuning")
class SkipTuning(GenerateMethod):
    """Skip-Tuning: DDIM with the UNet's skip connections scaled, rho_inner to rho_outer.

    DDIM's settings are ``generate.steps``, ``generate.eta`` and ``generate.guidance``; rho is
    linear from ``rho_inner`` (innermost skip) to ``rho_outer`` (outermost)."""

    objective = "ddpm"
    Params = SkipTuningParams
    search_space = {"method_params.rho_inner": Choice((0.6, 0.7, 0.8, 0.9, 1.0))}

    def __init__(self, params: dict | None = None, config: object = None) -> None:
        super().__init__(params, config)
        generate = getattr(self.config, "generate", None)
        if generate is not None and generate.denoiser != "unet":
            raise HundredError(f"skip_tuning scales a UNet's skip connections; "
                               f"generate.denoiser={generate.denoiser} has none (use unet)")

    def sample(self, model: nn.Module, labels: torch.Tensor, ctx: SampleContext
               ) -> torch.Tensor:
        with scaled_skips(model, self.params.rho_inner, self.params.rho_outer):
            return ddim_sample(model, labels, ctx, guidance=self.guidance())
