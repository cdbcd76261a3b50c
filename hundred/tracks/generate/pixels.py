"""The two pixel conventions the generate track converts between: the loader's normalised
batches (``(x - mean) / std`` of [0, 1] images, :mod:`hundred.data.loader`) and the track's
[-1, 1] pixels, which go into a classifier (the evaluator, PPGN's condition network, SFD's
encoder) normalised with that classifier's own run's mean and std."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def _per_channel(values: Sequence[float] | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    values = torch.as_tensor(values, dtype=torch.float32, device=like.device)
    return values.view(1, -1, 1, 1)


def from_loader(images: torch.Tensor, mean: Sequence[float] | torch.Tensor,
                std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """A loader batch normalised with ``mean``/``std`` -> float pixels in [-1, 1]."""
    return (images.float() * _per_channel(std, images) + _per_channel(mean, images)) * 2 - 1


def to_classifier(pixels: torch.Tensor, mean: Sequence[float] | torch.Tensor,
                  std: Sequence[float] | torch.Tensor, size: int | None = None,
                  clamp: bool = False) -> torch.Tensor:
    """[-1, 1] pixels -> the input of a classifier trained on ``mean``/``std``-normalised
    images, resized (bilinear, antialiased) to ``size`` when given and different; ``clamp``
    first clips samples to [-1, 1]."""
    x = pixels.float()
    if clamp:
        x = x.clamp(-1, 1)
    if size is not None and x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)
    return ((x + 1) / 2 - _per_channel(mean, x)) / _per_channel(std, x)


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """[-1, 1] pixels (clipped) -> uint8 in [0, 255], the same layout."""
    return ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 in [0, 255] -> float pixels in [-1, 1]."""
    return images.float() / 127.5 - 1
