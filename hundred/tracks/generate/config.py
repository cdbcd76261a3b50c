"""The ``generate:`` section of a run config: the denoiser, its training objective's schedule,
the sampler's settings and what the samples are measured with.

Nothing here imports torch (config validation runs before anything heavy).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field

from hundred.config import StrictModel


class GenerateConfig(StrictModel):
    """Settings of the generate track (:mod:`hundred.tracks.generate.scenario`)."""

    denoiser: Literal["unet", "dit"] = Field(
        "unet", description="the class-conditional network: a UNet with skip connections "
        "(diffusers UNet2DModel) or a DiT (diffusers DiTTransformer2DModel)")
    denoiser_options: dict[str, Any] = Field(
        default_factory=dict, description="keyword options of the denoiser (unet: "
        "block_out_channels, layers_per_block, attention; dit: num_layers, "
        "attention_head_dim, num_attention_heads, patch_size)")
    timesteps: int = Field(1000, ge=2, description="T: the discrete steps of the DDPM "
                           "forward process (Ho et al. 2020: 1000)")
    schedule: Literal["linear", "cosine"] = Field(
        "linear", description="the DDPM noise schedule: linear betas 1e-4..0.02 (Ho et al.) "
        "or cosine (Nichol & Dhariwal 2021)")
    label_dropout: float = Field(0.1, ge=0, le=1, description="share of training labels "
                                 "replaced by the null label, so the same network is also "
                                 "unconditional (classifier-free guidance; Ho & Salimans: 0.1-0.2)")
    latent: Optional[str] = Field(
        None, description="latent diffusion: a VAE directory written by `hundred generate "
        "vae` (or a diffusers AutoencoderKL folder with local weights); the denoiser then works "
        "on its latents. None: pixel space")
    init: Optional[str] = Field(
        None, description="a finished generate run (RUN_DIR) whose trained networks are "
        "reused: no training, only sampling and measuring (tune sampler settings this way)")
    steps: int = Field(50, ge=1, description="sampling steps (network evaluations per "
                       "sample are reported as nfe)")
    guidance: Optional[float] = Field(
        None, ge=0, description="classifier-free guidance scale w: eps = eps(null) + w "
        "(eps(c) - eps(null)); 1 = conditional, 0 = unconditional; None = the method's default "
        "(1, ddim_cfg: 2)")
    eta: float = Field(0.0, ge=0, le=1, description="DDIM's eta: 0 deterministic, 1 "
                       "DDPM-like ancestral noise")
    clip_sample: bool = Field(True, description="clip DDIM's / DDPM's prediction of x_0 to "
                              "[-1, 1] at every step (Ho et al.'s and Song et al.'s code do; "
                              "off: the exact DDIM ODE, whose inversion recovers the noise)")
    samples_per_class: int = Field(32, ge=1, description="samples drawn per class and "
                                   "measured against the val split")
    sample_batch: int = Field(256, ge=1, description="samples generated per batch")
    grid_per_class: int = Field(8, ge=1, description="samples per class in samples.png")
    evaluator: Optional[str] = Field(
        None, description="a finished classify run whose classifier gives the features of "
        "the feature Fréchet distance and the accuracy on samples; None: one is trained once "
        "per dataset (classify erm, fixed settings) and cached under <root>/generate/evaluators")
    inception_weights: Optional[str] = Field(
        None, description="a local Inception-v3 weights file (torch-fidelity's pt_inception "
        "format): FID and Inception Score are reported as well; never downloaded")
    evaluator_epochs: int = Field(15, ge=1, description="epochs of the cached evaluator "
                                  "(a ResNet-20 trained by classify erm) when none is given")
