"""Differentiable Siamese Augmentation (DSA) — Zhao & Bilen, "Dataset Condensation with
Differentiable Siamese Augmentation", ICML 2021 (arXiv 2102.08259).

DSA matches the real and the synthetic batch *after* the same random transformation
``A_omega``: the objective is DC's gradient matching ``D(grad L(A_omega(S)), grad L(A_omega(T)))``
with one sampled ``omega`` on both sides, and every transformation is differentiable with
respect to the pixels, so the matching gradient flows back through ``A_omega`` into the
synthetic images. The same augmentation is reused by DM, MTT, TESLA and the evaluation of a
learned set.

Transformation families (named in the strategy string, underscore separated; defaults are
the paper's and the official code's ``ParamDiffAug``):

* ``color``: brightness ``x + (u - 0.5) * 1.0``, then saturation ``(x - mean_c x) * 2u + mean_c
  x`` (``mean_c`` over the colour channels of each pixel), then contrast ``(x - mean x) * (u +
  0.5) + mean x`` (``mean`` over the whole image); each ``u ~ U[0, 1)``.
* ``crop``: a random translation by an integer number of pixels in ``[-s, s]`` per axis, ``s =
  round(0.125 * side)``, the uncovered border filled with zeros.
* ``cutout``: a ``round(0.5 * side)`` square at a random centre set to zero (clipped at the
  border).
* ``flip``: horizontal flip with probability 0.5.
* ``scale``: independent ``x``/``y`` scales of the sampling grid in ``[1/1.2, 1.2]`` (``> 1``
  shows more of the plane: the content shrinks), zeros outside the image.
* ``rotate``: rotation about the centre by an angle in ``[-15, 15]`` degrees.

As in the official code's default mode ``'S'``, ONE family is drawn per call (uniformly over
the strategy's entries) and applied; its parameters are drawn per image. Pixels are in
normalised units and are never clamped.

Siamese sharing. In the official code (``DiffAugment(x, seed=s)`` called on the real batch and
on the synthetic batch with the same seed) the Siamese mode overwrites every image's parameters
with those of the first, so ONE transformation is applied to every image of both batches. That
is :meth:`DSA.siamese`'s default here. ``DSA(siamese_per_sample=True)`` instead draws one
transformation per index, image ``i`` of the real batch and image ``i`` of the synthetic batch
sharing it. A plain call (:meth:`DSA.__call__`, the official code without a seed: evaluation
training, MTT's student steps) draws per-image parameters.

Randomness: everything is drawn with the *global* torch RNG on the CPU and then moved to the
device, so a run that checkpoints ``torch.get_rng_state()`` redraws exactly on resume, whatever
the device. :meth:`DSA.sample` and :meth:`DSA.apply` are separate so that a method can replay
the same augmentation in a second pass (TESLA's reverse pass).

Reuse: ``flip`` and ``crop`` are the batched, per-sample index ops of
:mod:`hundred.data.augment` (``RandomFlip.apply`` and ``RandomCrop.apply`` with zero padding:
a translation by ``t`` is the window at offset ``t + s`` of the ``s``-padded image), which are
differentiable with respect to float pixels. Their ``Op.sample`` cannot be reused: it needs the
batch (DSA draws before it knows the images, and from the global CPU RNG) and draws on the
images' device. ``color`` and ``cutout`` are hand-written: ``augment.ColorJitter`` (kornia's
``enhance`` functions) uses luma-weighted grey and multiplicative brightness and clips to ``[0,
1]``, which is neither DSA's transformation nor valid for normalised pixels; there is no cutout
there. ``scale`` and ``rotate`` build the normalised affine matrix and run one ``affine_grid`` +
``grid_sample`` (kornia's ``rotate``/``scale`` take pixel-coordinate matrices, ``align_corners=
True`` and a matrix inverse per call: not the official transformation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from hundred.data.augment import RandomCrop, RandomFlip
from hundred.errors import HundredError

#: the transformation families DSA knows, in the official code's order
FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")
DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"


@dataclass(frozen=True)
class DSAParams:
    """One drawn augmentation: the ``family`` applied and its per-image parameters.

    ``values`` maps a parameter name to a tensor with one row per image (all the same length):

    * ``color``: ``brightness`` (added shift), ``saturation`` and ``contrast`` (factors);
    * ``crop``: ``shift_y``, ``shift_x`` — uniforms in ``[0, 1)``, mapped at apply time to an
      integer translation in ``[-s, s]`` (``s`` from the image side: the draw needs no size);
    * ``cutout``: ``centre_y``, ``centre_x`` — uniforms in ``[0, 1)``, mapped likewise;
    * ``flip``: ``flip`` (bool);
    * ``scale``: ``scale_x``, ``scale_y`` (sampling-grid factors; 1 is the identity);
    * ``rotate``: ``angle`` (radians; 0 is the identity).
    """

    family: str
    values: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.values.values()))) if self.values else 0

    def to(self, device: torch.device | str) -> "DSAParams":
        """The same parameters on ``device``."""
        return DSAParams(self.family, {k: v.to(device) for k, v in self.values.items()})

    def first(self, count: int) -> "DSAParams":
        """The parameters of the first ``count`` images."""
        if count > len(self):
            raise ValueError(f"DSA parameters were drawn for {len(self)} images, "
                             f"asked to augment {count}")
        return DSAParams(self.family, {k: v[:count] for k, v in self.values.items()})


@dataclass
class DSA:
    """Differentiable Siamese Augmentation with the official defaults (see the module doc).

    ``strategy``: underscore-separated families (a family named twice is drawn twice as
    often, as in the official code). ``siamese_per_sample``: False (the official behaviour)
    applies one transformation to every image of both batches in :meth:`siamese`; True draws
    one per index.
    """

    strategy: str = DEFAULT_STRATEGY
    flip_p: float = 0.5
    scale_ratio: float = 1.2
    rotate_degrees: float = 15.0
    crop_ratio: float = 0.125
    cutout_ratio: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    siamese_per_sample: bool = False
    families: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        names = tuple(self.strategy.split("_")) if self.strategy else ()
        unknown = [name for name in names if name not in FAMILIES]
        if not names or unknown:
            raise HundredError(
                f"DSA strategy {self.strategy!r}: unknown transformation famil"
                f"{'ies' if len(unknown) > 1 else 'y'} {', '.join(map(repr, unknown)) or '(none)'};"
                f" use underscore-separated names from: {', '.join(FAMILIES)} (e.g. "
                f"{DEFAULT_STRATEGY!r}); switch DSA off with condense.dsa: false")
        if not 0.0 <= self.flip_p <= 1.0:
            raise HundredError(f"DSA flip_p must be in [0, 1], got {self.flip_p}")
        if self.scale_ratio < 1.0:
            raise HundredError(f"DSA scale_ratio must be >= 1, got {self.scale_ratio}")
        if not 0.0 <= self.crop_ratio < 0.5 or not 0.0 <= self.cutout_ratio <= 1.0:
            raise HundredError(f"DSA crop_ratio must be in [0, 0.5) and cutout_ratio in [0, 1], "
                               f"got {self.crop_ratio} / {self.cutout_ratio}")
        self.families = names

    # -- drawing --------------------------------------------------------------------------
    def sample(self, count: int, device: torch.device | str = "cpu", *,
               shared: bool = False) -> DSAParams:
        """Draw one family and its parameters for ``count`` images with the global torch RNG
        (on the CPU), returned on ``device``. ``shared``: one transformation for all images
        (drawn once, repeated ``count`` times)."""
        index = int(torch.randint(len(self.families), (1,), device="cpu"))
        family = self.families[index]
        rows = 1 if shared else count
        values = getattr(self, f"_draw_{family}")(rows)
        if shared:
            values = {key: value.expand(count) for key, value in values.items()}
        return DSAParams(family, values).to(device)

    @staticmethod
    def _uniform(rows: int, low: float, high: float) -> torch.Tensor:
        return torch.rand(rows, device="cpu") * (high - low) + low

    def _draw_color(self, rows: int) -> dict[str, torch.Tensor]:
        return {"brightness": self._uniform(rows, -0.5 * self.brightness, 0.5 * self.brightness),
                "saturation": self._uniform(rows, 0.0, self.saturation),
                "contrast": self._uniform(rows, self.contrast, self.contrast + 1.0)}

    def _draw_crop(self, rows: int) -> dict[str, torch.Tensor]:
        return {"shift_y": torch.rand(rows, device="cpu"),
                "shift_x": torch.rand(rows, device="cpu")}

    def _draw_cutout(self, rows: int) -> dict[str, torch.Tensor]:
        return {"centre_y": torch.rand(rows, device="cpu"),
                "centre_x": torch.rand(rows, device="cpu")}

    def _draw_flip(self, rows: int) -> dict[str, torch.Tensor]:
        return {"flip": torch.rand(rows, device="cpu") < self.flip_p}

    def _draw_scale(self, rows: int) -> dict[str, torch.Tensor]:
        low, high = 1.0 / self.scale_ratio, self.scale_ratio
        return {"scale_x": self._uniform(rows, low, high),
                "scale_y": self._uniform(rows, low, high)}

    def _draw_rotate(self, rows: int) -> dict[str, torch.Tensor]:
        limit = math.radians(self.rotate_degrees)
        return {"angle": self._uniform(rows, -limit, limit)}

    # -- applying -------------------------------------------------------------------------
    def apply(self, images: torch.Tensor, params: DSAParams) -> torch.Tensor:
        """``images`` ``(B, C, H, W)`` (float, normalised) transformed with the first ``B``
        entries of ``params``; differentiable with respect to ``images``."""
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(f"DSA needs a float batch (B, C, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        if params.family not in FAMILIES:
            raise HundredError(f"unknown DSA family {params.family!r}; families: "
                               f"{', '.join(FAMILIES)}")
        values = params.first(len(images)).to(images.device).values
        out = getattr(self, f"_apply_{params.family}")(images, values)
        return out.contiguous()

    def _apply_color(self, images: torch.Tensor, values: dict[str, torch.Tensor]) -> torch.Tensor:
        def per_image(name: str) -> torch.Tensor:
            return values[name].to(images.dtype)[:, None, None, None]

        images = images + per_image("brightness")
        grey = images.mean(dim=1, keepdim=True)
        images = (images - grey) * per_image("saturation") + grey
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        return (images - mean) * per_image("contrast") + mean

    def _apply_crop(self, images: torch.Tensor, values: dict[str, torch.Tensor]) -> torch.Tensor:
        height, width = images.shape[-2:]
        shift_h, shift_w = int(height * self.crop_ratio + 0.5), int(width * self.crop_ratio + 0.5)
        padding = max(shift_h, shift_w)
        if padding == 0:
            return images
        # window offset in the padded image = translation + padding
        shift_y = _integer(values["shift_y"], 2 * shift_h + 1) - shift_h
        shift_x = _integer(values["shift_x"], 2 * shift_w + 1) - shift_w
        window = {"dy": shift_y + padding, "dx": shift_x + padding}
        return RandomCrop(size=None, padding=padding, pad_mode="zeros").apply(images, window)

    def _apply_cutout(self, images: torch.Tensor, values: dict[str, torch.Tensor]) -> torch.Tensor:
        height, width = images.shape[-2:]
        keep_rows = _outside_band(values["centre_y"], height, int(height * self.cutout_ratio + 0.5))
        keep_cols = _outside_band(values["centre_x"], width, int(width * self.cutout_ratio + 0.5))
        keep = keep_rows[:, :, None] | keep_cols[:, None, :]  # (B, H, W): outside the square
        return images * keep[:, None].to(images.dtype)

    def _apply_flip(self, images: torch.Tensor, values: dict[str, torch.Tensor]) -> torch.Tensor:
        return RandomFlip(self.flip_p).apply(images, {"flip": values["flip"]})

    def _apply_scale(self, images: torch.Tensor, values: dict[str, torch.Tensor]) -> torch.Tensor:
        scale_x, scale_y = values["scale_x"], values["scale_y"]
        zero = torch.zeros_like(scale_x)
        theta = torch.stack([torch.stack([scale_x, zero, zero], 1),
                             torch.stack([zero, scale_y, zero], 1)], 1)
        return _warp(images, theta)

    def _apply_rotate(self, images: torch.Tensor, values: dict[str, torch.Tensor]) -> torch.Tensor:
        angle = values["angle"]
        cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1),
                             torch.stack([sin, cos, zero], 1)], 1)
        return _warp(images, theta)

    # -- the two uses -----------------------------------------------------------------------
    def siamese(self, real: torch.Tensor, synthetic: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The real and the synthetic batch under the same drawn transformation: one draw for
        ``max(len(real), len(synthetic))`` images, applied to both (shared by every image
        unless ``siamese_per_sample``, in which case image ``i`` of each batch shares row
        ``i``)."""
        count = max(len(real), len(synthetic))
        params = self.sample(count, real.device, shared=not self.siamese_per_sample)
        return self.apply(real, params), self.apply(synthetic, params)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """One batch with a freshly drawn family and per-image parameters."""
        return self.apply(images, self.sample(len(images), images.device))


def _integer(unit: torch.Tensor, levels: int) -> torch.Tensor:
    """Uniforms in ``[0, 1)`` -> integers uniform in ``[0, levels)``."""
    return (unit * levels).long().clamp_(0, levels - 1)


def _outside_band(unit_centre: torch.Tensor, side: int, size: int) -> torch.Tensor:
    """``(B, side)`` bool: positions outside each image's cut band of ``size`` pixels.

    The official code draws the centre from ``[0, side)`` for an odd ``size`` and ``[0, side]``
    for an even one, and the band is ``[centre - size // 2, centre - size // 2 + size)``,
    clipped to the image."""
    centre = _integer(unit_centre, side + (1 - size % 2))
    start = (centre - size // 2)[:, None]
    position = torch.arange(side, device=unit_centre.device)[None, :]
    return (position < start) | (position >= start + size)


def _warp(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample each image through its ``(2, 3)`` affine matrix in normalised coordinates
    (output -> input, as ``affine_grid``), bilinear, zeros outside."""
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


__all__ = ["DEFAULT_STRATEGY", "DSA", "DSAParams", "FAMILIES"]
