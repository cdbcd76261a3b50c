"""PPGN: iterative, conditional sampling in the latent space of a generator, steered by a
replaceable condition network and kept on the data by a learned prior.

Nguyen, Clune, Bengio, Dosovitskiy, Yosinski, "Plug & Play Generative Networks: Conditional
Iterative Generation of Images in Latent Space" (CVPR 2017, arXiv:1612.00005), PPGN-h:

* E: an image encoder whose features are the code h (the paper: fc6 of CaffeNet, the same
  network that is the condition; here the penultimate, pooled features of the condition
  classifier of ``method_params.condition``, or of ``method_params.encoder``), frozen;
* G: a generator trained to invert E, ``G(E(x)) ~ x``: a pixel loss plus feature matching in
  E's space, ``||E(G(h)) - h||^2`` (the paper's DGN adds an adversarial loss and matches the
  features of a separate comparator network; both are omitted at this scale);
* R: a denoising autoencoder on h, trained as ``R(h + sigma n) ~ h`` on codes of real images;
  ``R(h) - h`` is proportional to ``d log p(h) / dh`` (Alain & Bengio 2014);
* C: the condition network, a classifier trained by the classify track (any finished classify
  run with the data's classes; swapping it needs no retraining, ``generate.init=RUN``).

Sampling (the paper's Eq. 11, the prior's ``1 / sigma^2`` folded into eps1), for
``generate.steps`` iterations from the code of a random real image (or from noise)::

    h <- h + eps1 (R(h) - h) + eps2 d log C_c(G(h)) / dh + N(0, eps3^2)

and the sample is ``G(h)``. One iteration evaluates G, C and R once each (reported as one NFE).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hundred.errors import HundredError
from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.generate.method import GenerateMethod, SampleContext, TrainContext
from hundred.tracks.generate.ppgn import (DenoisingPrior, Generator, PixelClassifier,
                                          PPGNNetworks, load_condition)


class PPGNParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    condition: Optional[str] = Field(
        None, description="the condition network C: a finished classify run directory with "
        "the data's classes (or timm:NAME:PATH, a local weights file); required. Swappable "
        "after training: a run with generate.init=RUN and another condition")
    encoder: Optional[str] = Field(
        None, description="the classifier whose penultimate features are the code h (the "
        "paper: fc6 of the condition network itself); None: the condition network. Used in "
        "training; its weights are saved with the run")
    eps1: float = Field(0.1, ge=0, description="weight of the prior term R(h) - h. The paper "
                        "(and its code) use 1e-5 with fc6 codes of scale ~10 and a step "
                        "normalised to a fixed size; that scale does not carry over, 0.1 is "
                        "chosen here")
    eps2: float = Field(1.0, ge=0, description="weight of the condition term d log "
                        "C_c(G(h))/dh (the paper: 1)")
    eps3: float = Field(0.0, ge=0, description="std of the Gaussian noise added each step "
                        "(the paper: 1e-17, i.e. practically none)")
    start: Literal["real", "noise"] = Field(
        "real", description="where a chain starts: the code of a random real training image "
        "(the paper's 'from a real image' option) or Gaussian noise with the codes' "
        "per-dimension mean and std (the paper's code starts from N(0, 1))")
    clip: bool = Field(True, description="keep codes within the range of real codes (the "
                       "paper's code clips fc6 codes to [0, 30])")
    generator_width: int = Field(64, ge=4, description="channels of G's convolutions")
    prior_hidden: int = Field(256, ge=4, description="R's hidden width (D-H-H/2-H-D; the "
                              "paper's DAE: 4096-2048-1024-500-1024-2048-4096)")
    prior_noise: float = Field(0.3, gt=0, description="sigma of the Gaussian noise R is "
                               "trained to remove, in units of each code dimension's std")
    feature_weight: float = Field(1.0, ge=0, description="weight of G's feature matching "
                                  "loss ||E(G(h)) - h||^2 (standardised codes) next to the "
                                  "pixel loss ||G(h) - x||^2")
    lr: float = Field(1e-3, gt=0, description="Adam's learning rate for G and R (trained for "
                      "train.epochs epochs over the train split)")
    bank_size: int = Field(1024, ge=1, description="codes of real training images kept with "
                           "the run to start chains from")


@register("generate", "ppgn")
class PPGN(GenerateMethod):
    """Plug & Play Generative Networks (PPGN-h): Langevin-like steps on a generator's code."""

    objective = "own"
    Params = PPGNParams
    shared_grid = False  # G and R are trained once; tuning searches the sampler's weights
    search_space = {"method_params.eps1": Choice((0.01, 0.1, 0.5)),
                    "method_params.eps2": Choice((0.3, 1.0, 3.0))}

    def __init__(self, params: dict[str, Any] | None = None, config: Any = None) -> None:
        super().__init__(params, config)
        self.condition: PixelClassifier | None = None
        self.encoder: PixelClassifier | None = None
        self.networks: PPGNNetworks | None = None
        self.training_losses: dict[str, float] = {}  # the last epoch's mean losses

    # -- before anything is written ---------------------------------------------------------
    def prepare(self, num_classes: int, data_name: str, image_size: int) -> None:
        """Load and check the condition network (and the encoder): a missing, unfinished or
        unfitting run is a clear error before the run directory exists."""
        condition = self.params.condition
        if condition is None:
            raise HundredError("generate/ppgn needs a condition network: --set "
                               "method_params.condition=RUN_DIR (a finished classify run "
                               "on the same classes)")
        data = self.config.data
        self.condition = load_condition(condition, num_classes, data_name, image_size,
                                        data.mean, data.std)
        encoder = self.params.encoder
        self.encoder = self.condition if encoder in (None, condition) else load_condition(
            encoder, num_classes, data_name, image_size, data.mean, data.std,
            what="method_params.encoder")

    # -- training: E frozen, G inverts E, R denoises codes -----------------------------------
    def train_own(self, ctx: TrainContext) -> nn.Module:
        if self.encoder is None:
            raise HundredError("generate/ppgn: prepare() was not called before training")
        device, params = ctx.device, self.params
        encoder = self.encoder.to(device)
        codes = self._codes(encoder, ctx)
        noise = torch.Generator(device=device).manual_seed(self.config.seed)
        kept = torch.randperm(len(codes), generator=noise, device=device)[:params.bank_size]
        generator = Generator(codes.shape[1], ctx.shape[0], ctx.shape[-1],
                              params.generator_width).to(device)
        prior = DenoisingPrior(codes.shape[1], params.prior_hidden).to(device)
        networks = PPGNNetworks(encoder, generator, prior, codes[kept]).to(device)
        networks.set_statistics(codes)  # of every training code, not only the kept ones
        prior.center.copy_(networks.code_mean)
        prior.scale.copy_(networks.code_std)
        scale = networks.code_std
        optimizer = torch.optim.Adam([*generator.parameters(), *prior.parameters()],
                                     lr=params.lr)
        generator.train()
        prior.train()
        totals: dict[str, float] = {}
        epochs = self.config.train.epochs
        for epoch in range(epochs):
            totals = {"pixel": 0.0, "feature": 0.0, "prior": 0.0}
            batches = 0
            for images, _labels in ctx.loader:
                x = ctx.to_model_space(images).float()
                with torch.no_grad():
                    h = encoder.features(x)
                drawn = generator(h)
                pixel = (drawn - x).pow(2).mean()
                feature = ((encoder.features(drawn) - h) / scale).pow(2).mean()
                corrupted = h + params.prior_noise * scale * torch.randn(
                    h.shape, generator=noise, device=device)
                denoise = ((prior(corrupted) - h) / scale).pow(2).mean()
                loss = pixel + params.feature_weight * feature + denoise
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                for key, value in (("pixel", pixel), ("feature", feature), ("prior", denoise)):
                    totals[key] += float(value.detach())
                batches += 1
            totals = {key: value / max(batches, 1) for key, value in totals.items()}
            ctx.console.print(f"ppgn epoch {epoch + 1:3d}/{epochs}  " + "  ".join(
                f"{key} {value:.4f}" for key, value in totals.items()))
        self.training_losses = totals
        self.networks = networks.eval()
        return self.networks

    @staticmethod
    def _codes(encoder: PixelClassifier, ctx: TrainContext) -> torch.Tensor:
        """E's codes of one pass over the training batches."""
        codes = []
        with torch.no_grad():
            for images, _labels in ctx.loader:
                codes.append(encoder.features(ctx.to_model_space(images).float()))
        if not codes:
            raise HundredError("generate/ppgn: the training split gave no batches")
        return torch.cat(codes)

    def after_training(self, model: nn.Module, ctx: TrainContext) -> dict[str, Any]:
        return {f"ppgn_{key}_loss": value for key, value in self.training_losses.items()}

    def state_for_sampling(self) -> dict[str, torch.Tensor]:
        return {} if self.networks is None else self.networks.state()

    def load_for_sampling(self, state: dict[str, torch.Tensor]) -> None:
        if "ppgn_spec" not in state:
            raise HundredError("generate/ppgn: the run holds no PPGN networks (was it a ppgn "
                               "run?)")
        self.networks = PPGNNetworks.from_state(state)

    # -- sampling: the paper's Eq. 11 ----------------------------------------------------------
    def sample(self, model: nn.Module, labels: torch.Tensor, ctx: SampleContext
               ) -> torch.Tensor:
        networks = model if isinstance(model, PPGNNetworks) else self.networks
        if networks is None or self.condition is None:
            raise HundredError("generate/ppgn: no trained networks or condition network")
        networks = networks.to(ctx.device).eval()
        condition = self.condition.to(ctx.device).eval()
        h = self.start_codes(networks, len(labels), ctx.generator)
        for _ in range(ctx.settings.steps):
            h = ppgn_step(h, labels, networks, condition, self.params.eps1, self.params.eps2,
                          self.params.eps3, ctx.generator, clip=self.params.clip)
            ctx.nfe += 1
        with torch.no_grad():
            return networks.generator(h)

    def start_codes(self, networks: PPGNNetworks, n: int, rng: torch.Generator
                    ) -> torch.Tensor:
        """Where the chains start: codes of random real images, or Gaussian codes with the
        real codes' per-dimension mean and std."""
        device = networks.bank.device
        if self.params.start == "real":
            picks = torch.randint(len(networks.bank), (n,), generator=rng, device=device)
            return networks.bank[picks].clone()
        z = torch.randn((n, networks.bank.shape[1]), generator=rng, device=device)
        return networks.code_mean + networks.code_std * z


def ppgn_step(h: torch.Tensor, labels: torch.Tensor, networks: PPGNNetworks,
              condition: nn.Module, eps1: float, eps2: float, eps3: float,
              rng: torch.Generator | None = None, clip: bool = False) -> torch.Tensor:
    """One step of the paper's Eq. 11: ``h + eps1 (R(h) - h) + eps2 d log C_c(G(h))/dh +
    N(0, eps3^2)``. Only ``h`` receives a gradient (C, G and R are left untouched)."""
    h = h.detach()
    step = torch.zeros_like(h)
    if eps1:
        with torch.no_grad():
            step += eps1 * (networks.prior(h) - h)
    if eps2:
        with torch.enable_grad():
            code = h.clone().requires_grad_(True)
            log_probs = torch.log_softmax(condition(networks.generator(code)).float(), dim=1)
            chosen = log_probs.gather(1, labels.view(-1, 1).to(log_probs.device)).sum()
            (gradient,) = torch.autograd.grad(chosen, code)
        step += eps2 * gradient
    if eps3:
        step += eps3 * torch.randn(h.shape, generator=rng, device=h.device)
    h = h + step
    return h.clamp(networks.low, networks.high) if clip else h


def class_log_prob(h: torch.Tensor, labels: torch.Tensor, networks: PPGNNetworks,
                   condition: nn.Module) -> torch.Tensor:
    """``log C_c(G(h))`` per code (what the condition term climbs)."""
    with torch.no_grad():
        log_probs = torch.log_softmax(condition(networks.generator(h)).float(), dim=1)
    return log_probs.gather(1, labels.view(-1, 1)).squeeze(1)
