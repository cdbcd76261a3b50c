"""The networks of Plug & Play Generative Networks (:mod:`hundred.tracks.generate.methods.ppgn`)
at this project's scale, and the condition network they are steered by.

* :class:`PixelClassifier` — a classifier (a finished classify run, or timm with a local
  weights file) seen from [-1, 1] pixels: ``forward`` gives its logits (the condition network
  C), :meth:`PixelClassifier.features` its penultimate features (the image encoder E whose
  features are the latent code h: PPGN-h's fc6 of CaffeNet becomes the classifier's pooled
  features here);
* :class:`Generator` — G: h -> image in [-1, 1] (a linear layer to a 4x4 map, then
  upsampling convolutions; the paper's DGN is the deconvolutional generator of Dosovitskiy &
  Brox 2016 at 227 px);
* :class:`DenoisingPrior` — R: a denoising autoencoder on h, an MLP with a bottleneck (the
  paper's is 4096-2048-1024-500-1024-2048-4096 on fc6);
* :class:`PPGNNetworks` — G, R and E together with the statistics of the training codes that
  sampling needs (a bank of real codes to start chains from, their per-dimension mean/std and
  their range for clipping).

The architecture of a classifier travels with its weights as a small JSON spec (name, options,
head, classes, normalisation), so a finished PPGN run rebuilds its encoder without the classify
run it came from.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from hundred.errors import HundredError


class PixelClassifier(nn.Module):
    """``classifier`` fed [-1, 1] pixels: ``x -> classifier(((x + 1) / 2 - mean) / std)``,
    resized to ``image_size`` when the generator draws at another size."""

    def __init__(self, classifier: nn.Module, mean: Sequence[float], std: Sequence[float],
                 spec: dict[str, Any]) -> None:
        super().__init__()
        self.classifier = classifier
        self.spec = dict(spec)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32)
                             .view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32)
                             .view(1, -1, 1, 1), persistent=False)

    def _input(self, pixels: torch.Tensor) -> torch.Tensor:
        from hundred.tracks.generate.pixels import to_classifier

        return to_classifier(pixels, self.mean, self.std, self.spec.get("image_size") or None)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier(self._input(pixels))

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The penultimate features (the backbone's pooled output): PPGN-h's code h."""
        return self.classifier.features(self._input(pixels))

    @property
    def feature_dim(self) -> int:
        return int(self.classifier.feature_dim)


def build_classifier(spec: dict[str, Any]) -> PixelClassifier:
    """A :class:`PixelClassifier` of ``spec``'s architecture (weights not loaded)."""
    from hundred.models import create

    model = create(spec["name"], int(spec["classes"]), head=spec.get("head", "linear"),
                   img_size=spec.get("image_size"), **spec.get("options", {}))
    return PixelClassifier(model, spec["mean"], spec["std"], spec)


def load_condition(source: str, num_classes: int, data_name: str, image_size: int,
                   mean: Sequence[float], std: Sequence[float],
                   what: str = "method_params.condition") -> PixelClassifier:
    """The classifier ``source`` (a finished classify run directory, or ``timm:NAME:PATH``
    with a local weights file), frozen, in eval mode, fed [-1, 1] pixels. A run's images are
    normalised with that run's ``data.mean``/``data.std``; a timm model's with ``mean``/``std``
    (this run's). Every problem is a :class:`HundredError` naming ``what``, raised before
    anything is written."""
    from hundred.config import build_config
    from hundred.tracks.classify.teacher import TIMM_PREFIX, load_teacher

    try:
        model = load_teacher(source, num_classes, data_name, image_size)
        if source.startswith(TIMM_PREFIX):
            name = source[len(TIMM_PREFIX):].partition(":")[0]
            spec = {"name": name, "options": {}, "head": "linear"}
        else:
            run = build_config([Path(source) / "config.yaml"])
            mean, std = run.data.mean, run.data.std
            spec = {"name": run.model.name, "options": dict(run.model.options),
                    "head": run.model.head}
    except HundredError as error:
        raise HundredError(f"{what}: {str(error).replace('teacher ', '', 1)}") from None
    if not hasattr(model, "features"):
        raise HundredError(f"{what}: {source} has no feature extractor (a hundred Classifier "
                           "is needed)")
    spec.update(classes=num_classes, image_size=image_size, mean=list(mean), std=list(std),
                source=str(source))
    return PixelClassifier(model, mean, std, spec).eval().requires_grad_(False)


class Generator(nn.Module):
    """G: ``h [B, D] -> images [B, C, H, W]`` in [-1, 1]. A linear layer to a ``width``-channel
    4x4 map, then (nearest upsampling, 3x3 convolution, batch norm, ReLU) stages up to the
    image size (a last resize when the size is not 4 * 2^k), a 3x3 convolution and tanh."""

    def __init__(self, code_dim: int, channels: int, image_size: int, width: int = 64) -> None:
        super().__init__()
        self.code_dim, self.channels, self.image_size = code_dim, channels, image_size
        stages = max(0, math.ceil(math.log2(max(image_size, 4) / 4)))
        self.width = width
        self.project = nn.Sequential(nn.Linear(code_dim, width * 16), nn.ReLU())
        layers: list[nn.Module] = []
        for _ in range(stages):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.body(self.project(h).view(len(h), self.width, 4, 4))
        if x.shape[-1] != self.image_size:
            x = nn.functional.interpolate(x, size=(self.image_size, self.image_size),
                                          mode="bilinear", align_corners=False)
        return torch.tanh(self.out(x))


class DenoisingPrior(nn.Module):
    """R: a denoising autoencoder on the code, ``D -> H -> H/2 -> H -> D`` (ReLU between), fed
    and giving codes standardised with the training codes' per-dimension mean and std (so one
    noise level fits every encoder). Trained as ``R(h + sigma n) ~ h``, so ``R(h) - h`` points
    up the density of real codes (Alain & Bengio 2014): PPGN's prior term."""

    def __init__(self, code_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(code_dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden // 2), nn.ReLU(),
                                 nn.Linear(hidden // 2, hidden), nn.ReLU(),
                                 nn.Linear(hidden, code_dim))
        self.register_buffer("center", torch.zeros(code_dim))
        self.register_buffer("scale", torch.ones(code_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net((h - self.center) / self.scale) * self.scale + self.center


class PPGNNetworks(nn.Module):
    """What a trained PPGN samples with: G, R, the encoder E, and a bank of real codes
    (``bank``: E of training images, to start chains from) with their per-dimension mean and
    std and their overall range ``low``..``high`` (the chain's codes are kept in it, as the
    paper keeps fc6 codes in [0, 30])."""

    def __init__(self, encoder: PixelClassifier, generator: Generator, prior: DenoisingPrior,
                 bank: torch.Tensor) -> None:
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.generator, self.prior = generator, prior
        self.register_buffer("bank", bank.clone())
        for name in ("code_mean", "code_std", "low", "high"):
            self.register_buffer(name, torch.zeros(bank.shape[1:] if "code" in name else ()))
        self.set_statistics(bank)

    def set_statistics(self, codes: torch.Tensor) -> None:
        """The per-dimension mean and std and the overall range of the real ``codes``."""
        self.code_mean.copy_(codes.mean(0))
        self.code_std.copy_(codes.std(0).clamp_min(1e-6))
        self.low.copy_(codes.min())
        self.high.copy_(codes.max())

    def state(self) -> dict[str, torch.Tensor]:
        """Every tensor that rebuilds these networks (:meth:`from_state`), the encoder's and
        the generator's architecture included (as JSON bytes)."""
        shape = {"channels": self.generator.channels, "image_size": self.generator.image_size,
                 "width": self.generator.width, "code_dim": self.generator.code_dim,
                 "hidden": self.prior.net[0].out_features, "encoder": self.encoder.spec}
        state = {f"ppgn.{key}": value.detach().cpu() for key, value in
                 self.state_dict().items()}
        state["ppgn_spec"] = torch.tensor(list(json.dumps(shape).encode()), dtype=torch.uint8)
        return state

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> "PPGNNetworks":
        """The networks :meth:`state` saved; a clear error when they do not fit."""
        try:
            shape = json.loads(bytes(state["ppgn_spec"].tolist()).decode())
            encoder = build_classifier(shape["encoder"])
            generator = Generator(shape["code_dim"], shape["channels"], shape["image_size"],
                                  shape["width"])
            prior = DenoisingPrior(shape["code_dim"], shape["hidden"])
            bank = state["ppgn.bank"]
            networks = cls(encoder, generator, prior, torch.zeros_like(bank))
            networks.load_state_dict({key[len("ppgn."):]: value for key, value in state.items()
                                      if key.startswith("ppgn.")})
        except (KeyError, ValueError, RuntimeError, TypeError) as error:
            raise HundredError(f"ppgn: the saved networks do not load "
                               f"({str(error).splitlines()[0][:200]})") from None
        return networks.eval()
