"""Batched augmentation on the device, with per-sample random parameters.

The loader hands over a uint8 batch exactly as packed, ``(B, H, W, 3)``, already on the
device; an :class:`Augment` turns it into a normalised float batch ``(B, 3, H', W')`` in a few
batched kernels. Every random choice is drawn from a ``torch.Generator`` the caller passes in,
so one seed gives one batch sequence, and resuming mid-epoch replays the same augmentation.

Each operation is split into ``sample`` (draw the per-sample parameters) and ``apply`` (use
them), so tests and methods that need the parameters (e.g. to apply the same crop to two
views, or to check the geometry) can get them.

Where the work is done, and why:

* ``kornia.augmentation`` draws its parameters from torch's *global* generators and takes no
  per-instance ``torch.Generator`` (kornia issue #4427), which breaks per-loader determinism
  and exact resume. So parameters are drawn here, from the caller's generator, and the
  per-sample pixel operations reuse kornia's functional ops where they fit: the colour jitter
  steps are ``kornia.enhance`` functions (measured as fast as a hand-written version).
* Random-resized-crop is hand-written with ``affine_grid`` + ``grid_sample``:
  ``kornia.geometry.transform.crop_and_resize`` solves a perspective transform per box and
  measured 2.8x slower on CPU (6.7 ms vs 2.4 ms for 256 crops of 36x36 -> 32x32).
* Pad-and-crop and flip are index operations kornia has no batched, generator-driven form
  of; they run on the uint8 batch (4x less memory traffic than float), the crop as one gather
  that reads the padded window without materialising the padded batch.

Self-supervised views (``grayscale``, ``blur``, ``solarize`` and the ``simclr*``/``byol*``
presets; :func:`view_specs` maps a recipe to its per-view presets for the loader's
``view_augments``) follow SimCLR (Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for
Contrastive Learning of Visual Representations", ICML 2020, Appendix A and B.9) and BYOL
(Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020, Appendix B, Table 6). Each draws a
per-sample "applied" flag with probability ``p`` and acts through ``torch.where`` or a
per-sample kernel, so every parameter has one row per image and there is no loop over samples.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
import random
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from kornia.enhance import (
    adjust_brightness_accumulative,
    adjust_contrast_with_mean_subtraction,
    adjust_hue,
    adjust_saturation_with_gray_subtraction,
)

from hundred.errors import HundredError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Size = tuple[int, int]
Params = dict[str, torch.Tensor]


def as_size(size: int | Sequence[int]) -> Size:
    """``32`` -> ``(32, 32)``; ``(h, w)`` stays."""
    if isinstance(size, int):
        return (size, size)
    height, width = (int(v) for v in size)
    return (height, width)


def to_nchw(images: torch.Tensor) -> torch.Tensor:
    """A ``(B, 3, H, W)`` view of a packed ``(B, H, W, 3)`` batch (no copy); NCHW passes through."""
    if images.ndim != 4:
        raise ValueError(f"expected a batch (B, H, W, 3) or (B, 3, H, W), got shape {tuple(images.shape)}")
    if images.shape[-1] == 3 and images.shape[1] != 3:
        return images.permute(0, 3, 1, 2)
    if images.shape[1] == 3:
        return images
    raise ValueError(f"expected 3 colour channels, got shape {tuple(images.shape)}")


def _device_of(generator: torch.Generator | None, images: torch.Tensor) -> torch.device:
    return generator.device if generator is not None else images.device


def _uniform(
    n: int, low: float, high: float, generator: torch.Generator | None, images: torch.Tensor
) -> torch.Tensor:
    """``n`` floats in ``[low, high)`` drawn on the generator's device, returned on the images' device."""
    draw = torch.rand(n, generator=generator, device=_device_of(generator, images))
    return (draw * (high - low) + low).to(images.device, non_blocking=True)


def _randint(n: int, high: int, generator: torch.Generator | None, images: torch.Tensor) -> torch.Tensor:
    """``n`` ints in ``[0, high)`` drawn on the generator's device, returned on the images' device."""
    draw = torch.rand(n, generator=generator, device=_device_of(generator, images))
    return (draw * high).long().clamp_max(high - 1).to(images.device, non_blocking=True)


def _host_random(generator: torch.Generator | None) -> random.Random:
    """A host-side RNG for per-batch choices (e.g. an order), derived from ``generator``.

    On CUDA, drawing a choice on the device and reading it back would stall the host until
    the GPU catches up; the Philox seed and offset of a CUDA generator are host state, so a
    choice derived from them is deterministic and free. A CPU generator draws directly.
    """
    if generator is None:
        return random.Random(int(torch.randint(0, 2**62, (1,)).item()))
    if generator.device.type == "cpu":
        return random.Random(int(torch.randint(0, 2**62, (1,), generator=generator).item()))
    # the offset has advanced past this call's earlier draws, so successive calls differ
    return random.Random(generator.initial_seed() * 1_000_003 + generator.get_offset())


class Op(ABC):
    """One augmentation step on a ``(B, C, H, W)`` batch (uint8 or float in ``[0, 1]``)."""

    #: whether the step must see float pixels (geometric index ops also work on uint8)
    needs_float: bool = False

    def sample(self, images: torch.Tensor, generator: torch.Generator | None) -> Params:
        """Draw this step's per-sample parameters for ``images``."""
        return {}

    @abstractmethod
    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        """Apply the step with the given parameters."""

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(images, self.sample(images, generator))


def _reflect(index: torch.Tensor, length: int) -> torch.Tensor:
    """Map indices in ``[-(length-1), 2*(length-1)]`` into ``[0, length)`` by mirror reflection
    without repeating the edge (the rule of ``F.pad(mode="reflect")``)."""
    last = length - 1
    index = index.abs()
    return torch.where(index > last, 2 * last - index, index)


@dataclass
class RandomCrop(Op):
    """Pad by ``padding`` pixels, then take a random ``size`` window (CIFAR: pad 4, crop 32).

    ``size=None`` keeps the input size. ``pad_mode`` is ``"reflect"`` or ``"zeros"``. The
    window is read with one gather straight from the unpadded batch (indices are reflected or
    masked), so the padded batch is never materialised. ``hflip`` mirrors each window with
    that probability by reversing its column indices: a flip at no cost (a separate
    :class:`RandomFlip` costs a full pass over the batch).
    """

    size: Size | None = None
    padding: int = 4
    pad_mode: str = "reflect"
    hflip: float = 0.0

    def __post_init__(self) -> None:
        if self.pad_mode not in ("reflect", "zeros"):
            raise HundredError(f"pad_mode must be 'reflect' or 'zeros', got {self.pad_mode!r}")
        if self.padding < 0:
            raise HundredError(f"padding must be >= 0, got {self.padding}")
        if self.size is not None:
            self.size = as_size(self.size)

    def _window(self, images: torch.Tensor) -> Size:
        height, width = images.shape[-2:]
        crop_h, crop_w = self.size or (height, width)
        if crop_h > height + 2 * self.padding or crop_w > width + 2 * self.padding:
            raise ValueError(
                f"crop {crop_h}x{crop_w} is larger than the padded input "
                f"{height + 2 * self.padding}x{width + 2 * self.padding}"
            )
        if self.pad_mode == "reflect" and self.padding >= min(height, width):
            raise ValueError(
                f"reflect padding {self.padding} needs inputs larger than it, got {height}x{width}"
            )
        return crop_h, crop_w

    def sample(self, images: torch.Tensor, generator: torch.Generator | None) -> Params:
        """Top-left corner ``(dy, dx)`` of each window, in padded coordinates (and ``flip``)."""
        batch, _, height, width = images.shape
        crop_h, crop_w = self._window(images)
        dy = _randint(batch, height + 2 * self.padding - crop_h + 1, generator, images)
        dx = _randint(batch, width + 2 * self.padding - crop_w + 1, generator, images)
        params = {"dy": dy, "dx": dx}
        if self.hflip > 0:
            params["flip"] = _uniform(batch, 0.0, 1.0, generator, images) < self.hflip
        return params

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        batch, _, height, width = images.shape
        crop_h, crop_w = self._window(images)
        device = images.device
        rows = params["dy"][:, None] + torch.arange(crop_h, device=device) - self.padding  # (B, h)
        cols = params["dx"][:, None] + torch.arange(crop_w, device=device) - self.padding  # (B, w)
        if self.pad_mode == "reflect":
            rows, cols = _reflect(rows, height), _reflect(cols, width)
        else:
            inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
            rows, cols = rows.clamp(0, height - 1), cols.clamp(0, width - 1)
        if "flip" in params:
            cols = torch.where(params["flip"][:, None], cols.flip(1), cols)
            if self.pad_mode == "zeros":
                inside = torch.where(params["flip"][:, None, None], inside.flip(2), inside)
        sample = torch.arange(batch, device=device)[:, None, None]
        # advanced indices around a slice put the indexed dims first: (B, h, w, C)
        window = images[sample, :, rows[:, :, None], cols[:, None, :]]
        if self.pad_mode == "zeros":
            window = window * inside[..., None].to(window.dtype)
        return window.permute(0, 3, 1, 2)


@dataclass
class RandomFlip(Op):
    """Horizontal flip of each sample with probability ``p``."""

    p: float = 0.5

    def sample(self, images: torch.Tensor, generator: torch.Generator | None) -> Params:
        return {"flip": _uniform(images.shape[0], 0.0, 1.0, generator, images) < self.p}

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        return torch.where(params["flip"][:, None, None, None], images.flip(-1), images)


@dataclass
class RandomResizedCrop(Op):
    """Inception-style crop: a random area fraction ``scale`` and aspect ``ratio``, resized to ``size``.

    Parameters follow torchvision's rule, vectorised over the batch: ``attempts`` candidate
    boxes per sample, the first that fits is taken, else a centre crop with the aspect clamped
    into ``ratio``. Resampling is bilinear through ``grid_sample`` without antialiasing; at the
    packed resolutions (crop sides near the output size) aliasing is negligible. ``hflip``
    mirrors each crop with that probability by negating its horizontal scale in the sampling
    grid: a flip at no cost.
    """

    size: Size = (224, 224)
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    attempts: int = 10
    hflip: float = 0.0
    needs_float = True

    def __post_init__(self) -> None:
        self.size = as_size(self.size)
        if not (0 < self.scale[0] <= self.scale[1]) or not (0 < self.ratio[0] <= self.ratio[1]):
            raise HundredError(f"need 0 < low <= high for scale {self.scale} and ratio {self.ratio}")

    def sample(self, images: torch.Tensor, generator: torch.Generator | None) -> Params:
        """Boxes ``x0, y0, w, h`` (integer pixels, as float tensors) per sample."""
        batch, _, height, width = images.shape
        shape = (batch, self.attempts)
        device = _device_of(generator, images)
        low, high = self.scale
        area = height * width * (torch.rand(shape, generator=generator, device=device) * (high - low) + low)
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(torch.rand(shape, generator=generator, device=device) * (log_hi - log_lo) + log_lo)
        crop_w = torch.sqrt(area * aspect).round()
        crop_h = torch.sqrt(area / aspect).round()
        fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
        first = fits.to(torch.int8).argmax(dim=1, keepdim=True)  # first fitting attempt (0 if none)
        crop_w, crop_h = crop_w.gather(1, first)[:, 0], crop_h.gather(1, first)[:, 0]
        # fallback: the whole image, aspect clamped into the ratio range, centred
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            fall_w, fall_h = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            fall_w, fall_h = round(height * self.ratio[1]), height
        else:
            fall_w, fall_h = width, height
        any_fit = fits.any(dim=1)
        crop_w = torch.where(any_fit, crop_w, torch.full_like(crop_w, fall_w))
        crop_h = torch.where(any_fit, crop_h, torch.full_like(crop_h, fall_h))
        offset = torch.rand((2, batch), generator=generator, device=device)
        x0 = torch.where(any_fit, (offset[0] * (width - crop_w + 1)).floor(), (width - crop_w) // 2)
        y0 = torch.where(any_fit, (offset[1] * (height - crop_h + 1)).floor(), (height - crop_h) // 2)
        params = {"x0": x0, "y0": y0, "w": crop_w, "h": crop_h}
        if self.hflip > 0:
            params["flip"] = torch.rand(batch, generator=generator, device=device) < self.hflip
        return {key: value.to(images.device, non_blocking=True) for key, value in params.items()}

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        return resized_crop(
            images, params["x0"], params["y0"], params["w"], params["h"], self.size, params.get("flip")
        )


def resized_crop(
    images: torch.Tensor,
    x0: torch.Tensor,
    y0: torch.Tensor,
    crop_w: torch.Tensor,
    crop_h: torch.Tensor,
    size: Size,
    flip: torch.Tensor | None = None,
) -> torch.Tensor:
    """Crop box ``[x0, x0+w) x [y0, y0+h)`` of each sample, resized bilinearly to ``size``,
    mirrored where ``flip`` is true.

    One ``affine_grid`` + ``grid_sample`` for the batch: with ``align_corners=False`` a box
    equal to the whole image and ``size`` equal to the input reproduces the input exactly.
    """
    batch, channels, height, width = images.shape
    theta = torch.zeros(batch, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = crop_w / width if flip is None else torch.where(flip, -crop_w, crop_w) / width
    theta[:, 0, 2] = (x0 + crop_w / 2) / width * 2 - 1
    theta[:, 1, 1] = crop_h / height
    theta[:, 1, 2] = (y0 + crop_h / 2) / height * 2 - 1
    grid = F.affine_grid(theta, [batch, channels, *size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


@dataclass
class ColorJitter(Op):
    """torchvision's colour jitter with per-sample factors, applied to each sample with probability ``p``.

    Factors: brightness, contrast, saturation in ``[max(0, 1-s), 1+s]``, hue shift in
    ``[-hue, hue]`` of a full turn. The order of the four steps is drawn per batch (torchvision
    draws it per image). A step with strength 0 is skipped, so all-zero strengths are the identity.
    """

    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    p: float = 1.0
    random_order: bool = True
    needs_float = True

    def __post_init__(self) -> None:
        if min(self.brightness, self.contrast, self.saturation, self.hue) < 0 or self.hue > 0.5:
            raise HundredError("colour jitter strengths must be >= 0 (hue <= 0.5)")

    def sample(self, images: torch.Tensor, generator: torch.Generator | None) -> Params:
        batch = images.shape[0]
        params: Params = {}
        applied = _uniform(batch, 0.0, 1.0, generator, images) < self.p
        for name, neutral in (("brightness", 1.0), ("contrast", 1.0), ("saturation", 1.0), ("hue", 0.0)):
            strength = getattr(self, name)
            if strength == 0:
                continue
            low, high = (-strength, strength) if name == "hue" else (max(0.0, 1 - strength), 1 + strength)
            factor = _uniform(batch, low, high, generator, images)
            params[name] = torch.where(applied, factor, torch.full_like(factor, neutral))
        steps = list(params)
        if self.random_order:
            _host_random(generator).shuffle(steps)
        params["order"] = torch.tensor([_JITTER_STEPS.index(step) for step in steps])
        return params

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        for step in params["order"].tolist():  # a CPU tensor: no device sync
            name = _JITTER_STEPS[step]
            images = _JITTER_FUNCTIONS[name](images, params[name])
        return images


_JITTER_STEPS = ("brightness", "contrast", "saturation", "hue")
_JITTER_FUNCTIONS = {
    "brightness": adjust_brightness_accumulative,
    "contrast": adjust_contrast_with_mean_subtraction,
    "saturation": adjust_saturation_with_gray_subtraction,
    "hue": lambda images, turns: adjust_hue(images, turns * 2 * math.pi),  # kornia takes radians
}


def _chosen(images: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """A bool per sample, true with probability ``p`` (drawn even for ``p`` of 0 or 1, so a
    pipeline consumes the same random numbers whatever its probabilities)."""
    return _uniform(images.shape[0], 0.0, 1.0, generator, images) < p


def _check_probability(p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise HundredError(f"probability p must be in [0, 1], got {p}")


#: ITU-R BT.601 luma weights (R, G, B), as torchvision's and kornia's ``rgb_to_grayscale``
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass
class RandomlyApplied(Op):
    """A float step applied to each sample with probability ``p``: ``sample`` draws the
    per-sample ``applied`` flags; subclasses define ``apply`` (and may draw more)."""

    p: float = 0.5
    needs_float = True

    def __post_init__(self) -> None:
        _check_probability(self.p)

    def sample(self, images: torch.Tensor, generator: torch.Generator | None) -> Params:
        return {"applied": _chosen(images, self.p, generator)}


@dataclass
class RandomGrayscale(RandomlyApplied):
    """Replace each sample, with probability ``p``, by its BT.601 luma ``0.299 R + 0.587 G +
    0.114 B`` copied to all three channels (SimCLR's and BYOL's grayscale, ``p = 0.2``)."""

    p: float = 0.2

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        red, green, blue = LUMA_WEIGHTS
        luma = images[:, 0:1] * red + images[:, 1:2] * green + images[:, 2:3] * blue
        return torch.where(params["applied"][:, None, None, None], luma, images)


@dataclass
class RandomSolarize(RandomlyApplied):
    """With probability ``p`` per sample, invert the pixels at or above ``threshold``:
    ``x -> 1 - x`` for ``x >= 0.5`` on ``[0, 1]`` pixels (BYOL, Grill et al. 2020, App. B)."""

    p: float = 0.2
    threshold: float = 0.5

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        invert = params["applied"][:, None, None, None] & (images >= self.threshold)
        return torch.where(invert, 1.0 - images, images)


def blur_kernel_size(side: int) -> int:
    """SimCLR's kernel for an image side: 10% of it, made odd (``radius = side // 10 // 2``),
    so 23 at 224 px (BYOL's 23x23), 9 at 96, 7 at 64, 3 at 32 and 1 (no blur) below 20."""
    return 2 * (side // 10 // 2) + 1


@dataclass
class RandomGaussianBlur(RandomlyApplied):
    """Gaussian blur of each sample, with probability ``p``, with its own ``sigma`` drawn
    uniformly from ``sigma`` (SimCLR/BYOL: ``[0.1, 2.0]`` pixels, SimCLR ``p = 0.5``).

    The square kernel has ``kernel_size`` taps; ``None`` applies SimCLR's rule to the shorter
    side of the step's input (:func:`blur_kernel_size`), so the blur is a no-op below 20 px.
    Borders are reflected (torchvision's and kornia's default; SimCLR's TensorFlow code pads
    with zeros, which darkens the edges).

    One batched separable convolution: the padded batch is viewed as ``B * 3`` channels and
    convolved with a grouped 1-D kernel per channel, once along each axis; a sample that is
    not blurred gets the unit impulse as its kernel, so it passes through exactly. kornia's
    ``gaussian_blur2d`` takes a per-sample sigma but needs every sigma > 0 (no per-sample
    identity, so an extra ``where`` pass) and checks that by reading sigma back from the
    device (a CUDA sync per batch); on CPU it measured no faster.
    """

    sigma: tuple[float, float] = (0.1, 2.0)
    kernel_size: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.sigma = (float(self.sigma[0]), float(self.sigma[1]))
        if not 0 < self.sigma[0] <= self.sigma[1]:
            raise HundredError(f"blur sigma range needs 0 < low <= high, got {self.sigma}")
        if self.kernel_size is not None and (self.kernel_size < 1 or self.kernel_size % 2 == 0):
            raise HundredError(f"blur kernel_size must be odd and >= 1, got {self.kernel_size}")

    def _kernel_size(self, images: torch.Tensor) -> int:
        size = self.kernel_size or blur_kernel_size(min(images.shape[-2:]))
        if size // 2 >= min(images.shape[-2:]):
            raise ValueError(f"blur kernel {size} needs inputs larger than {size // 2} px, "
                             f"got {tuple(images.shape[-2:])}")
        return size

    def sample(self, images: torch.Tensor, generator: torch.Generator | None) -> Params:
        """Per sample: ``applied`` and its ``sigma`` (drawn for every sample)."""
        applied = super().sample(images, generator)["applied"]
        sigma = _uniform(images.shape[0], *self.sigma, generator, images)
        return {"applied": applied, "sigma": sigma}

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        size = self._kernel_size(images)
        if size == 1 or self.p == 0:  # nothing to blur (no device sync to find out)
            return images
        kernels = gaussian_kernels(params["sigma"], size, images.dtype)
        impulse = (torch.arange(size, device=images.device) == size // 2).to(images.dtype)
        kernels = torch.where(params["applied"][:, None], kernels, impulse)
        return separable_filter(images, kernels)


def gaussian_kernels(
    sigma: torch.Tensor, size: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``(B, size)`` normalised 1-D Gaussian taps ``exp(-n^2 / (2 sigma^2))``, ``n`` the offset
    from the centre, one row per ``sigma``."""
    offset = torch.arange(size, device=sigma.device, dtype=dtype) - size // 2
    taps = torch.exp(-offset.square() / (2 * sigma.to(dtype)[:, None].square()))
    return taps / taps.sum(dim=1, keepdim=True)


def separable_filter(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Correlate each sample of ``(B, C, H, W)`` with its own odd 1-D kernel (``kernels`` is
    ``(B, k)``) along both axes, with reflected borders: two grouped convolutions."""
    batch, channels, height, width = images.shape
    radius = kernels.shape[1] // 2
    weights = kernels.to(images.dtype).repeat_interleave(channels, dim=0)  # (B * C, k)
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    flat = padded.reshape(1, batch * channels, *padded.shape[-2:])
    flat = F.conv2d(flat, weights[:, None, None, :], groups=batch * channels)  # along W
    flat = F.conv2d(flat, weights[:, None, :, None], groups=batch * channels)  # along H
    return flat.reshape(batch, channels, height, width)


@dataclass
class Resize(Op):
    """Deterministic bilinear resize (antialiased when shrinking) to ``size``."""

    size: Size = (224, 224)
    needs_float = True

    def __post_init__(self) -> None:
        self.size = as_size(self.size)

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        if tuple(images.shape[-2:]) == self.size:
            return images
        return F.interpolate(images, size=self.size, mode="bilinear", align_corners=False, antialias=True)


@dataclass
class CenterCrop(Op):
    """Deterministic centre crop to ``size`` (works on uint8)."""

    size: Size = (224, 224)

    def __post_init__(self) -> None:
        self.size = as_size(self.size)

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        height, width = images.shape[-2:]
        crop_h, crop_w = self.size
        if crop_h > height or crop_w > width:
            raise ValueError(f"centre crop {crop_h}x{crop_w} is larger than the input {height}x{width}")
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
        return images[..., top : top + crop_h, left : left + crop_w]


@dataclass
class EvalFit(Op):
    """Evaluation view: identity when the input already has ``size``; otherwise resize the shorter
    side to ``size / crop_fraction`` and take the centre ``size`` crop (the ImageNet recipe).

    The default ``crop_fraction`` 8/9 matches packing at ``R + R // 8`` for training at ``R``,
    so the common case is a pure centre crop with no resampling.
    """

    size: Size = (224, 224)
    crop_fraction: float = 8 / 9
    needs_float = True

    def __post_init__(self) -> None:
        self.size = as_size(self.size)
        if not 0 < self.crop_fraction <= 1:
            raise HundredError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        height, width = images.shape[-2:]
        if (height, width) == self.size:
            return images
        short = round(min(self.size) / self.crop_fraction)
        if min(height, width) != short:
            scale = short / min(height, width)
            target = (max(self.size[0], round(height * scale)), max(self.size[1], round(width * scale)))
            images = F.interpolate(images, size=target, mode="bilinear", align_corners=False, antialias=True)
        return CenterCrop(self.size).apply(images, {})


@dataclass
class Augment:
    """A pipeline: packed uint8 batch on the device -> normalised float ``(B, 3, H', W')``.

    Steps run in order; uint8 pixels become float in ``[0, 1]`` just before the first step that
    needs float (so crops and flips move bytes, not floats). If the result is not ``out_size``
    it is resized. ``mean``/``std`` are in ``[0, 1]`` pixel units. Pass the same generator state
    to get the same output.
    """

    ops: list[Op] = field(default_factory=list)
    out_size: Size = (224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channels_last: bool = False
    _stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self.out_size = as_size(self.out_size)
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise HundredError(f"mean and std need 3 values each (std > 0), got {self.mean} / {self.std}")

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        images = to_nchw(images)
        for op in self.ops:
            if op.needs_float:
                images = _to_unit_float(images)
            images = op(images, generator)
        if tuple(images.shape[-2:]) != self.out_size:
            images = Resize(self.out_size).apply(_to_unit_float(images), {})
        return self.normalize(images)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` per channel, in a fresh contiguous tensor.

        The work is done in place in the output buffer (no float temporaries), and a uint8
        batch is scaled by the same ``/ 255`` as :func:`_to_unit_float`, so a batch gives the
        same numbers whether or not an earlier step already made it float.
        """
        if images.device not in self._stats:  # built once per device: no host->device copy per batch
            inv_std = torch.tensor([1.0 / s for s in self.std]).view(1, 3, 1, 1)
            shift = torch.tensor([m / s for m, s in zip(self.mean, self.std)]).view(1, 3, 1, 1)
            self._stats[images.device] = (inv_std.to(images.device), shift.to(images.device))
        inv_std, shift = self._stats[images.device]
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        out = torch.empty(
            images.shape, dtype=torch.float32, device=images.device, memory_format=memory_format
        ).copy_(images)
        if images.dtype == torch.uint8:
            out.div_(255.0)
        return out.mul_(inv_std).sub_(shift)


def _to_unit_float(images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    return images if images.is_floating_point() else images.to(torch.float32)


# --------------------------------------------------------------------------- declarative specs

PRESETS: dict[str, list[dict[str, Any]]] = {
    "none": [],
    "flip": [{"op": "flip"}],
    # CIFAR standard: pad 4 (reflect) + random crop + horizontal flip (the flip folded into
    # the crop's gather: the same result as a separate "flip" step, ~15% faster on CPU)
    "crop-flip": [{"op": "crop", "padding": 4, "hflip": 0.5}],
    # ImageNet standard: random-resized-crop + flip (the flip folded into the sampling grid:
    # ~20-30% faster on CPU than a separate step)
    "rrc-flip": [{"op": "rrc", "hflip": 0.5}],
    # ... plus colour jitter with SimCLR's CIFAR-10 strengths (s = 0.5), with probability 0.8
    "rrc-flip-jitter": [
        {"op": "rrc", "hflip": 0.5},
        {"op": "jitter", "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1, "p": 0.8},
    ],
}


def _ssl_steps(
    jitter: tuple[float, float, float, float], blur: float = 0.0, solarize: float = 0.0
) -> list[dict[str, Any]]:
    """A self-supervised view: random-resized-crop (area 0.08-1, aspect 3/4-4/3) + flip 0.5,
    colour jitter (brightness, contrast, saturation, hue) with p 0.8, grayscale 0.2, then the
    Gaussian blur and solarisation steps with the given probabilities (omitted at 0)."""
    brightness, contrast, saturation, hue = jitter
    steps: list[dict[str, Any]] = [
        {"op": "rrc", "scale": (0.08, 1.0), "hflip": 0.5},
        {"op": "jitter", "brightness": brightness, "contrast": contrast,
         "saturation": saturation, "hue": hue, "p": 0.8},
        {"op": "grayscale", "p": 0.2},
    ]
    if blur > 0:
        steps.append({"op": "blur", "p": blur, "sigma": (0.1, 2.0)})
    if solarize > 0:
        steps.append({"op": "solarize", "p": solarize})
    return steps


# SimCLR colour strength s = 1 (ImageNet): jitter (0.8 s, 0.8 s, 0.8 s, 0.2 s); s = 0.5 for CIFAR
_SIMCLR_JITTER = (0.8, 0.8, 0.8, 0.2)
_SIMCLR_SMALL_JITTER = (0.4, 0.4, 0.4, 0.1)
# BYOL Table 6: brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1
_BYOL_JITTER = (0.4, 0.4, 0.2, 0.1)

PRESETS.update({
    # SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
    # Representations", ICML, App. A): crop + flip, colour distortion of strength s = 1
    # (jitter (0.8, 0.8, 0.8, 0.2) with p 0.8, grayscale p 0.2), Gaussian blur p 0.5 (sigma
    # 0.1-2.0 px, kernel 10% of the side). solo-learn's SimCLR recipes use the same numbers.
    "simclr": _ssl_steps(_SIMCLR_JITTER, blur=0.5),
    # SimCLR's CIFAR-10 recipe (App. B.9; the official repository's CIFAR-10 command:
    # colour strength 0.5, no blur): for images of 32 px and below
    "simclr-small": _ssl_steps(_SIMCLR_SMALL_JITTER),
    # BYOL (Grill et al. 2020, "Bootstrap Your Own Latent", NeurIPS, App. B, Table 6): two
    # asymmetric views, blur p 1.0 / 0.1 and solarisation p 0.0 / 0.2
    "byol-view1": _ssl_steps(_BYOL_JITTER, blur=1.0),
    "byol-view2": _ssl_steps(_BYOL_JITTER, blur=0.1, solarize=0.2),
    # BYOL for small images, as solo-learn's CIFAR recipe (asymmetric.yaml): no blur
    "byol-small-view1": _ssl_steps(_BYOL_JITTER),
    "byol-small-view2": _ssl_steps(_BYOL_JITTER, solarize=0.2),
})

#: self-supervised recipe -> the preset of each view (pass as the loader's ``view_augments``)
VIEW_RECIPES: dict[str, tuple[str, ...]] = {
    "simclr": ("simclr", "simclr"),
    "simclr-small": ("simclr-small", "simclr-small"),
    "byol": ("byol-view1", "byol-view2"),
    "byol-small": ("byol-small-view1", "byol-small-view2"),
}


def view_specs(recipe: str) -> tuple[str, ...]:
    """The per-view augmentation presets of a self-supervised ``recipe`` (see
    :data:`VIEW_RECIPES`), e.g. ``view_specs("byol") == ("byol-view1", "byol-view2")``; pass
    them as ``BatchLoader(..., view_augments=view_specs(recipe))``."""
    if recipe not in VIEW_RECIPES:
        raise HundredError(
            f"unknown self-supervised augmentation recipe {recipe!r}; "
            f"recipes: {', '.join(VIEW_RECIPES)}"
        )
    return VIEW_RECIPES[recipe]

_OPS: dict[str, type[Op]] = {
    "crop": RandomCrop,
    "flip": RandomFlip,
    "rrc": RandomResizedCrop,
    "jitter": ColorJitter,
    "resize": Resize,
    "center-crop": CenterCrop,
    "grayscale": RandomGrayscale,
    "blur": RandomGaussianBlur,
    "solarize": RandomSolarize,
}
_SIZED = (RandomCrop, RandomResizedCrop, Resize, CenterCrop)

AugmentSpec = str | Sequence[str | dict[str, Any]] | Augment


def build_augment(
    spec: AugmentSpec,
    out_size: int | Sequence[int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    train: bool = True,
    crop_fraction: float = 8 / 9,
    channels_last: bool = False,
) -> Augment:
    """An :class:`Augment` from a preset name, a list of steps, or an existing pipeline.

    ``spec`` is a preset (``none``, ``flip``, ``crop-flip``, ``rrc-flip``, ``rrc-flip-jitter``,
    and the self-supervised ``simclr``, ``simclr-small``, ``byol-view1``, ``byol-view2``,
    ``byol-small-view1``, ``byol-small-view2``) or a list whose items are step names or dicts
    ``{"op": name, **arguments}`` with names ``crop``, ``flip``, ``rrc``, ``jitter``,
    ``grayscale``, ``blur``, ``solarize``, ``resize``, ``center-crop``; sized steps default to
    ``out_size``. With ``train=False`` the spec is ignored and the evaluation view is built
    (see :class:`EvalFit`): the same model input size, no randomness.
    """
    if isinstance(spec, Augment):
        return spec
    size = as_size(out_size)
    stats = {"out_size": size, "mean": tuple(mean), "std": tuple(std), "channels_last": channels_last}
    if not train:
        return Augment([EvalFit(size, crop_fraction)], **stats)  # type: ignore[arg-type]
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise HundredError(f"unknown augmentation preset {spec!r}; presets: {', '.join(PRESETS)}")
        steps: Sequence[str | dict[str, Any]] = PRESETS[spec]
    else:
        steps = spec
    return Augment([_build_op(step, size) for step in steps], **stats)  # type: ignore[arg-type]


def _build_op(step: str | dict[str, Any], size: Size) -> Op:
    options = {"op": step} if isinstance(step, str) else dict(step)
    name = options.pop("op", None)
    if name not in _OPS:
        raise HundredError(f"unknown augmentation step {name!r}; steps: {', '.join(_OPS)}")
    cls = _OPS[name]
    if issubclass(cls, _SIZED):
        options.setdefault("size", size)
    for key in ("size", "scale", "ratio", "sigma"):  # YAML gives lists
        if isinstance(options.get(key), list):
            options[key] = tuple(options[key])
    try:
        return cls(**options)
    except TypeError as error:
        raise HundredError(f"bad arguments for augmentation step {name!r}: {error}") from None


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LUMA_WEIGHTS",
    "PRESETS",
    "VIEW_RECIPES",
    "Augment",
    "CenterCrop",
    "ColorJitter",
    "EvalFit",
    "Op",
    "RandomCrop",
    "RandomFlip",
    "RandomGaussianBlur",
    "RandomGrayscale",
    "RandomResizedCrop",
    "RandomSolarize",
    "Resize",
    "blur_kernel_size",
    "build_augment",
    "gaussian_kernels",
    "resized_crop",
    "separable_filter",
    "to_nchw",
    "view_specs",
]
