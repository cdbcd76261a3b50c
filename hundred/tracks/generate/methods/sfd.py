"""SFD — Semantic-First Diffusion: asynchronous denoising of a semantic and a texture latent.

Pan, Feng, Dai, Wang, Lin, Guo, Luo, Zheng, "Semantics Lead the Way: Harmonizing Semantic and
Texture Modeling with Asynchronous Latent Diffusion" (arXiv 2512.04926). The denoiser models
composite latents ``[texture | semantic]``: the texture latent (pixels in [-1, 1], or the
VAE's latent with ``generate.latent``) and a compact semantic latent of a frozen, pre-trained
visual encoder — here a network the project trained itself (``method_params.encoder``: an
ssl or classify run), its last-stage feature map reduced to ``semantic_channels`` principal
components and resized to the texture's grid (the paper trains a Semantic VAE on DINOv2
features instead). Both parts follow the straight flow path, each at its own time::

    t_sem = min(t (1 + Δ), 1),   t_tex = max(t (1 + Δ) - Δ, 0),   x_t = t x1 + (1 - t) x0

so the semantics lead the texture by Δ (``offset``; the paper's 0.3): stage I only the
semantics denoise, stage II both, stage III only the texture. Training regresses the
velocity ``x1 - x0`` of both parts (semantic channels weighted by ``semantic_weight``);
sampling integrates the global time with Euler steps, each part by its own time increment,
and keeps only the texture (the generated semantic latent is discarded, as in the paper).
Δ = 0 is synchronous denoising of the same composite: SFD's ablation baseline.

The denoiser sees the texture's time as its usual ``t`` and the semantic time as one extra,
constant input channel (:mod:`hundred.tracks.generate.sfd`), so its input has
``texture + semantic_channels + 1`` channels. Its objective is its own (``sfd``): a flow
run's denoiser does not fit, and an SFD run's denoiser only fits SFD (``generate.init``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hundred.engine.method import SetupContext
from hundred.errors import HundredError
from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.generate.diffusion import guided
from hundred.tracks.generate.method import GenerateMethod, SampleContext
from hundred.tracks.generate.sfd import (SemanticLatent, check_offset, sfd_euler, sfd_loss,
                                         with_time_map)


class SFDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    encoder: Optional[str] = Field(
        None, description="the frozen visual encoder of the semantic latent: a finished ssl or "
        "classify run directory (its backbone's last-stage features; the paper: DINOv2). "
        "Needed to train; not with generate.init (sampling only)")
    offset: float = Field(
        0.3, ge=0, lt=1, description="Δ: how far the semantic latent's time leads the "
        "texture's (the paper's 0.3; 0 = synchronous denoising)")
    semantic_channels: int = Field(
        4, ge=1, le=64, description="channels of the semantic latent: principal components "
        "of the encoder's features (the paper: 16 semantic next to 32 texture channels)")
    semantic_weight: float = Field(
        2.0, ge=0, description="weight of the semantic channels in the velocity loss (the "
        "official training config: 2)")
    mask_resting_texture: bool = Field(
        False, description="drop the texture loss of samples whose texture time is 0 (stage "
        "I, where the sampler never moves the texture); the official code keeps it")
    pca_images: int = Field(
        1024, ge=8, description="training images (evenly spaced over the train split) whose "
        "encoder features the principal components are fitted on")


@register("generate", "sfd")
class SFD(GenerateMethod):
    """Semantic-First Diffusion: composite latents, semantics Δ ahead, Euler sampling."""

    objective = "sfd"
    Params = SFDParams
    search_space = {"method_params.offset": Choice((0.0, 0.1, 0.2, 0.3, 0.5))}

    def __init__(self, params: dict[str, Any] | None = None, config: Any = None) -> None:
        super().__init__(params, config)
        check_offset(self.params.offset)
        self.encoder_run: Any = None
        generate = getattr(self.config, "generate", None)
        if generate is None or self.config.track != "generate":
            return
        if generate.init is not None:
            self._check_trained_offset(Path(generate.init))
        if self.params.encoder is None:
            if generate.init is None:
                raise HundredError(
                    "generate/sfd: give method_params.encoder=RUN_DIR, a finished ssl or "
                    "classify run whose backbone gives the semantic latent (SFD needs a "
                    "pre-trained visual encoder; nothing is downloaded)")
            return
        from hundred.engine.init import load_finished_run

        self.encoder_run = load_finished_run(Path(self.params.encoder), "SFD encoder")
        if self.encoder_run.config.track not in ("ssl", "classify"):
            raise HundredError(f"SFD encoder {self.params.encoder} is a "
                               f"{self.encoder_run.config.track} run; give an ssl or classify "
                               "run")

    # -- the denoiser's space ------------------------------------------------------------------
    def denoiser_shape(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """Texture + semantic channels + the semantic time map, on the texture's grid."""
        return (shape[0] + self.params.semantic_channels + 1, shape[1], shape[2])

    def to_model_space(self, images: torch.Tensor) -> torch.Tensor:
        """The composite latent ``[texture | semantic]`` of a loader batch."""
        pixels = self.to_pixels(images)
        texture = pixels if self.codec is None else self.codec.encode(pixels)
        if "semantic" not in self.frozen:
            raise RuntimeError("SFD's semantic latent is built in setup (before training)")
        with torch.autocast(pixels.device.type, enabled=False):
            semantic = self.frozen["semantic"](pixels, tuple(texture.shape[-2:]))
        return torch.cat([texture.float(), semantic], dim=1)

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        """The frozen encoder and its principal components, fitted on ``pca_images`` training
        images (the same every time: resume fits the same components)."""
        if "semantic" in self.frozen:
            return
        if self.encoder_run is None:
            raise HundredError("generate/sfd trains only with method_params.encoder=RUN_DIR")
        from hundred.engine.run import image_size, load_data
        from hundred.models import create
        from hundred.tracks.generate.scenario import real_images

        found = self.encoder_run
        dataset = load_data(self.config)
        size = image_size(self.config, dataset)
        encoder_size = found.config.data.image_size or size
        model_config = found.config.model
        classes = found.summary.get("classes")
        encoder = create(model_config.name, classes if isinstance(classes, int) else 1,
                         head=model_config.head, img_size=encoder_size, **model_config.options)
        backbone = {key[len("backbone."):]: value for key, value in found.weights.items()
                    if key.startswith("backbone.")}
        try:
            encoder.backbone.load_state_dict(backbone)
        except (RuntimeError, TypeError) as error:
            raise HundredError(f"SFD encoder {found.run_dir}: its backbone weights do not fit "
                               f"its model ({str(error).splitlines()[0][:300]})") from None
        semantic = SemanticLatent(encoder, self.params.semantic_channels,
                                  tuple(found.config.data.mean), tuple(found.config.data.std),
                                  encoder_size).to(ctx.device)
        images, _ = real_images(dataset, "train")
        chosen = torch.linspace(0, len(images) - 1, min(self.params.pca_images, len(images)))
        images = images[chosen.round().long()]
        if images.shape[-1] != size:
            images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear",
                                                     align_corners=False, antialias=True)
        semantic.fit([images[i:i + 256].to(ctx.device) for i in range(0, len(images), 256)])
        self.add_frozen("semantic", semantic)

    # -- training ------------------------------------------------------------------------------
    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x1 = self.to_model_space(images)
        net = getattr(model, "module", model)
        labels = self.drop_labels(labels, net.null_label)
        p = self.params
        return sfd_loss(model, x1, labels, p.semantic_channels, p.offset, p.semantic_weight,
                        p.mask_resting_texture)

    def after_training(self, model: nn.Module, ctx: Any) -> dict[str, Any]:
        """SFD's settings in the summary: the offset, the semantic latent and its encoder."""
        entries: dict[str, Any] = {"sfd_offset": self.params.offset,
                                   "semantic_channels": self.params.semantic_channels}
        if "semantic" in self.frozen:  # trained here (not reused with generate.init)
            entries.update(semantic_encoder=str(self.params.encoder),
                           semantic_explained_variance=round(
                               self.frozen["semantic"].explained_variance, 4))
        return entries

    def state_for_sampling(self) -> dict[str, torch.Tensor]:
        """The offset the denoiser was trained with (sampling with another one is refused)."""
        return {"sfd_offset": torch.tensor([self.params.offset], dtype=torch.float64)}

    def load_for_sampling(self, state: dict[str, torch.Tensor]) -> None:
        self._check_offset_of(state, "generate.init")

    def _check_trained_offset(self, run_dir: Path) -> None:
        """Before anything is written: an SFD run given as ``generate.init`` was trained with
        this offset (other runs are refused by the scenario: their objective differs)."""
        from safetensors.torch import load_file

        from hundred.tracks.generate.scenario import SAMPLING_STATE

        path = run_dir / SAMPLING_STATE
        if not (run_dir / "summary.json").is_file():
            return  # not a finished run: the scenario says so
        if not path.is_file():
            raise HundredError(f"generate.init {run_dir} has no {SAMPLING_STATE}: give a "
                               "finished sfd run (its denoiser is trained on SFD's composite "
                               "latents)")
        try:
            state = load_file(path)
        except Exception as error:  # a truncated or foreign file
            raise HundredError(f"generate.init {path} is unreadable "
                               f"({str(error).splitlines()[0][:200]})") from None
        self._check_offset_of(state, f"generate.init {run_dir}")

    def _check_offset_of(self, state: dict[str, torch.Tensor], where: str) -> None:
        trained = state.get("sfd_offset")
        if trained is None:
            raise HundredError(f"{where} is not an SFD run (its sampling state has no offset)")
        if abs(float(trained.item()) - self.params.offset) > 1e-9:
            raise HundredError(f"{where}: its SFD denoiser was trained with offset "
                               f"{float(trained.item()):g}; sample it with "
                               f"method_params.offset={float(trained.item()):g}")

    # -- sampling ------------------------------------------------------------------------------
    def sample(self, model: nn.Module, labels: torch.Tensor, ctx: SampleContext
               ) -> torch.Tensor:
        """Euler over ``generate.steps`` steps of the global time (NFE = steps, 2 per step
        with guidance w not in {0, 1}); returns the texture part."""
        composite = ctx.shape[0] - 1
        texture = composite - self.params.semantic_channels
        w = self.guidance()

        def velocity(x: torch.Tensor, t_tex: torch.Tensor, t_sem: torch.Tensor
                     ) -> torch.Tensor:
            return guided(model, with_time_map(x, t_sem), t_tex, labels, w, ctx)[:, :composite]

        x = ctx.noise(labels.shape[0])[:, :composite]
        x = sfd_euler(velocity, x, self.params.semantic_channels, self.params.offset,
                      ctx.settings.steps)
        return x[:, :texture]

