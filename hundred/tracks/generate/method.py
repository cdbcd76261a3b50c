"""What a generate method adds: its training objective and its sampler.

The scenario (:mod:`hundred.tracks.generate.scenario`) trains one class-conditional denoiser
``model(x, t, labels)`` with the shared trainer on :meth:`GenerateMethod.loss` (or reuses a
finished run's, ``generate.init``), lets the method train what it adds on top
(:meth:`GenerateMethod.after_training`, e.g. FlowTurbo's velocity refiner), then draws
samples with :meth:`GenerateMethod.sample` and measures them. Conventions every method
follows:

* images are in [-1, 1]; the denoiser works on :meth:`GenerateMethod.to_model_space` of the
  loader's batch: pixels, or the VAE's latents in latent diffusion (the scenario decodes);
* ``t`` is a float tensor ``[B]`` in [0, 1]: DDPM's step ``k`` is ``t = k / T``; in flow
  matching ``x_t = t x1 + (1 - t) x0`` with noise ``x0`` at 0 and data ``x1`` at 1;
* ``labels`` are long, ``[0, num_classes]``; ``num_classes`` is the null label of
  classifier-free guidance;
* a sampler calls the network through :meth:`SampleContext.evaluate`, which counts network
  evaluations per sample (NFE), and draws noise from ``ctx.generator`` only (a seeded
  sampling run is reproducible).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch
from torch import nn

from hundred.engine.method import Method
from hundred.errors import HundredError

if TYPE_CHECKING:
    from hundred.config import RunConfig
    from hundred.tracks.generate.config import GenerateConfig

@dataclass
class SampleContext:
    """What a sampler needs besides the network: the settings, the shape and number of
    classes, the device, the seeded generator and the NFE counter."""

    settings: "GenerateConfig"
    shape: tuple[int, int, int]
    num_classes: int
    device: torch.device
    generator: torch.Generator
    nfe: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def evaluate(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor,
                 labels: torch.Tensor, nfe: int = 1) -> torch.Tensor:
        """``model(x, t, labels)``, counted as ``nfe`` network evaluations per sample (2 for a
        doubled CFG batch)."""
        self.nfe += nfe
        return model(x, t, labels)

    def noise(self, n: int) -> torch.Tensor:
        """``[n, *shape]`` standard normal noise from the context's generator."""
        return torch.randn((n, *self.shape), generator=self.generator, device=self.device)

    def times(self, n: int, value: float | torch.Tensor) -> torch.Tensor:
        """``t`` as a float tensor ``[n]`` on the device."""
        return torch.full((n,), float(value), device=self.device)


@dataclass
class TrainContext:
    """What :meth:`GenerateMethod.after_training` and ``train_own`` get. ``loader`` (the
    run's training batches) is built on first use: a sampling-only run never needs it."""

    config: "RunConfig"
    device: torch.device
    make_loader: Callable[[], Any]
    run_dir: Path | None
    console: Any
    to_model_space: Callable[[torch.Tensor], torch.Tensor]
    shape: tuple[int, int, int]
    num_classes: int
    _loader: Any = None

    @property
    def loader(self) -> Any:
        if self._loader is None:
            self._loader = self.make_loader()
        return self._loader


class GenerateMethod(Method):
    """Base class of the generate track's methods (a sampler, and what it trains)."""

    # what the denoiser is trained on: "ddpm" (noise prediction), "flow" (velocity on the
    # straight path), a method's own loss on its own space ("sfd") or "own" (the method trains
    # its own networks: :meth:`train_own`); runs of one objective share trained networks
    objective: ClassVar[str] = "ddpm"
    # methods with the same objective can share one trained denoiser (``generate.init``)
    default_guidance: ClassVar[float] = 1.0  # w when generate.guidance is None
    # sampling methods are tuned over their own sampler settings only (hundred check trains
    # one denoiser per phase and objective and reuses it: generate.init)
    shared_grid: ClassVar[bool] = False

    def guidance(self) -> float:
        """The guidance scale: ``generate.guidance``, or the method's default."""
        value = self.config.generate.guidance
        return self.default_guidance if value is None else float(value)

    def __init__(self, params: dict[str, Any] | None = None, config: Any = None) -> None:
        super().__init__(params, config)
        self.codec: Any = None  # set by the scenario: pixels <-> the denoiser's space

    def prepare(self, num_classes: int, data_name: str, image_size: int) -> None:
        """Called once the data is loaded, before the run directory exists: load and check
        what the method needs beyond the config (PPGN's condition network), so bad input
        writes nothing. Nothing by default."""

    # -- training ------------------------------------------------------------------------------
    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """The loader's normalised batch -> [-1, 1] pixels."""
        from hundred.tracks.generate.pixels import from_loader

        return from_loader(images, self.config.data.mean, self.config.data.std)

    def to_model_space(self, images: torch.Tensor) -> torch.Tensor:
        """The loader's normalised batch -> [-1, 1] pixels -> the denoiser's space."""
        pixels = self.to_pixels(images)
        return pixels if self.codec is None else self.codec.encode(pixels)

    def denoiser_shape(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """The ``(C, H, W)`` the denoiser works in, given the data's (pixels or VAE latents):
        the same by default (SFD adds its semantic channels)."""
        return shape

    def drop_labels(self, labels: torch.Tensor, null_label: int) -> torch.Tensor:
        """Classifier-free guidance's label dropout: each label becomes the null label with
        probability ``generate.label_dropout``."""
        drop = torch.rand(labels.shape, device=labels.device) < self.config.generate.label_dropout
        return torch.where(drop, torch.full_like(labels, null_label), labels)

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The objective's loss on one batch (labels dropped for guidance)."""
        x1 = self.to_model_space(images)
        net = getattr(model, "module", model)
        labels = self.drop_labels(labels, net.null_label)
        if self.objective == "ddpm":
            from hundred.tracks.generate.diffusion import ddpm_loss, schedule_of

            return ddpm_loss(model, x1, labels, schedule_of(self.config.generate, x1.device))
        if self.objective == "flow":
            from hundred.tracks.generate.flow import flow_loss

            return flow_loss(model, x1, labels)
        raise HundredError(f"generate/{self.name}: objective {self.objective!r} has no "
                           "training loss here: the method trains its networks in train_own")

    def after_training(self, model: nn.Module, ctx: TrainContext) -> dict[str, Any]:
        """Train what the method adds on top of the trained denoiser (e.g. FlowTurbo's
        refiner); returns summary entries. Nothing by default. Also called on a denoiser
        loaded from ``generate.init``, after :meth:`load_for_sampling`: a method whose loaded
        state already holds what it trains skips training."""
        return {}

    def train_own(self, ctx: TrainContext) -> nn.Module:
        """Objective ``own``: train the method's networks; returns the module ``sample``
        gets as ``model``."""
        raise HundredError(f"generate/{self.name}: objective 'own' but no train_own: say how "
                           "the method trains its networks, or use objective ddpm / flow")

    def state_for_sampling(self) -> dict[str, torch.Tensor]:
        """Tensors beyond the denoiser that sampling needs (e.g. refiner weights), saved in
        the run so that ``generate.init=RUN`` reuses them. None by default."""
        return {}

    def load_for_sampling(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_for_sampling` saved."""

    # -- sampling ------------------------------------------------------------------------------
    @abstractmethod
    def sample(self, model: nn.Module, labels: torch.Tensor, ctx: SampleContext
               ) -> torch.Tensor:
        """Samples of class ``labels`` in the denoiser's space (the scenario decodes)."""
