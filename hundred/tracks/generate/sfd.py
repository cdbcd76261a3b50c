"""Semantic-First Diffusion's pieces (Pan et al., "Semantics Lead the Way: Harmonizing Semantic
and Texture Modeling with Asynchronous Latent Diffusion", arXiv 2512.04926): composite latents,
the two parts' flow times, the training loss and the asynchronous sampler. The method
(:mod:`hundred.tracks.generate.methods.sfd`) wires them into the track.

Flow convention (the track's, FlowTurbo's): ``x_t = t x1 + (1 - t) x0`` with noise ``x0`` at
t = 0 and data ``x1`` at t = 1; the velocity target is ``x1 - x0``.

* **Composite latent** ``[texture | semantic]`` along channels: the texture latent (pixels in
  [-1, 1], or the VAE latent) first, ``semantic_channels`` channels of the semantic latent
  last (the official code's order).
* **Separate schedules**: one global time ``t`` in [0, 1] drives both
  parts, the semantics ahead by the offset Δ::

      t_sem = min(t (1 + Δ), 1)        t_tex = max(t (1 + Δ) - Δ, 0)

  Stage I (t (1+Δ) < Δ): only the semantics move, the texture is still pure noise; stage II:
  both move, the semantics Δ ahead; stage III (t (1+Δ) > 1): the semantics are data, only the
  texture moves. Δ = 0 is synchronous denoising.
* **Both times reach the denoiser** through the track's ``model(x, t, labels)`` call unchanged:
  ``t`` is the texture's time and one extra input channel holds the semantic time as a
  constant map (the official DiT embeds the two times separately, half the embedding each;
  a time-map channel needs nothing of the denoiser but one more input channel, and makes
  Δ = 0 exactly the synchronous model). The denoiser's output for that channel is unused.
* **Loss**: the velocity MSE over the composite, the semantic channels weighted by
  ``semantic_weight`` (the official setting: 2), normalised by the composite's size; the
  texture term is dropped for samples whose texture time is 0 when ``mask_resting_texture``
  (the sampler never moves the texture there).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hundred.errors import HundredError

# velocity(x, t_tex, t_sem) -> composite velocity, for the sampler
Velocity = Callable[[Tensor, Tensor, Tensor], Tensor]


def check_offset(delta: float) -> float:
    """Δ itself, checked: 0 (synchronous) <= Δ < 1 (the official code's range)."""
    if not 0.0 <= float(delta) < 1.0:
        raise HundredError(f"SFD's offset must be in [0, 1) (0: synchronous; the paper's 0.3), "
                           f"got {delta}")
    return float(delta)


def part_times(t: Tensor | float, delta: float) -> tuple[Tensor | float, Tensor | float]:
    """``(t_sem, t_tex)`` at the global time ``t`` (a tensor or a number): min(t (1+Δ), 1)
    and max(t (1+Δ) - Δ, 0). With Δ = 0 both are ``t`` itself, bit for bit."""
    if delta == 0:
        return t, t
    # t (1+Δ) - Δ written as 1 - (1-t)(1+Δ): exactly 1 at t = 1, as t_sem is exactly 0 at 0
    semantic, texture = t * (1.0 + delta), 1.0 - (1.0 - t) * (1.0 + delta)
    if isinstance(t, Tensor):
        return semantic.clamp(max=1.0), texture.clamp(min=0.0)
    return min(semantic, 1.0), max(texture, 0.0)


def with_time_map(x: Tensor, t_sem: Tensor) -> Tensor:
    """``x`` with one more channel: the semantic time of each sample as a constant map."""
    b, _, h, w = x.shape
    return torch.cat([x, t_sem.to(x.dtype).view(b, 1, 1, 1).expand(b, 1, h, w)], dim=1)


def dual_velocity(model: Callable[..., Tensor], x: Tensor, t_tex: Tensor, t_sem: Tensor,
                  labels: Tensor) -> Tensor:
    """The composite velocity at ``x`` (``[B, C, H, W]``) from a denoiser of ``C + 1`` input
    channels: ``model(x | t_sem map, t_tex, labels)`` without its time-map output channel."""
    return model(with_time_map(x, t_sem), t_tex, labels)[:, :x.shape[1]]


def sfd_loss(model: Callable[..., Tensor], x1: Tensor, labels: Tensor, semantic_channels: int,
             delta: float, semantic_weight: float = 1.0, mask_resting_texture: bool = False,
             generator: torch.Generator | None = None) -> Tensor:
    """SFD's flow-matching loss on the composite latents ``x1`` (data, ``[B, C, H, W]``, the
    last ``semantic_channels`` channels semantic): a global time ``t ~ U(0, 1)``, then noise
    ``x0`` (drawn in :func:`~hundred.tracks.generate.flow.flow_loss`'s order, from
    ``generator``), each part on the straight path at its own time, the velocity target
    ``x1 - x0``. With Δ = 0, ``semantic_weight`` 1 and no label dropout it is ``flow_loss`` of
    the same draws on the composite."""
    from hundred.tracks.generate.flow import interpolate, sample_times, target_velocity

    if not 0 < semantic_channels < x1.shape[1]:
        raise HundredError(f"{semantic_channels} semantic channels do not fit a composite of "
                           f"{x1.shape[1]} channels")
    b, texture = x1.shape[0], x1.shape[1] - semantic_channels
    t = sample_times(b, x1.device, generator)
    x0 = torch.randn(x1.shape, device=x1.device, generator=generator, dtype=x1.dtype)
    t_sem, t_tex = part_times(t.to(x1.dtype), delta)
    xt = torch.cat([interpolate(x0[:, :texture], x1[:, :texture], t_tex),
                    interpolate(x0[:, texture:], x1[:, texture:], t_sem)], dim=1)
    prediction = dual_velocity(model, xt, t_tex, t_sem, labels)
    error = (prediction.float() - target_velocity(x0, x1).float()) ** 2
    if semantic_weight == 1.0 and not (mask_resting_texture and delta > 0):
        return torch.mean(error)
    weights = torch.ones(b, x1.shape[1], 1, 1, device=x1.device)
    weights[:, texture:] = semantic_weight
    if mask_resting_texture and delta > 0:
        weights[:, :texture] = (t_tex > 0).float().view(b, 1, 1, 1)
    return torch.mean(error * weights)


@torch.no_grad()
def sfd_euler(velocity: Velocity, x: Tensor, semantic_channels: int, delta: float, steps: int,
              on_step: Callable[[Tensor, float, float], None] | None = None) -> Tensor:
    """Integrate the composite ``x`` (noise at t = 0) to data with ``steps`` Euler steps on
    FlowTurbo's even grid of the global time: each part moves by its own time increment, so
    the texture stays put in stage I and the semantics in stage III, and each part ends
    exactly at time 1. With Δ = 0 this is :func:`~hundred.tracks.generate.flow.euler_step`
    on the composite, bit for bit. ``on_step(x, t_tex, t_sem)`` sees each state before its
    step (tests)."""
    from hundred.tracks.generate.flow import uniform_times

    grid = [float(t) for t in uniform_times(steps)]
    texture = x.shape[1] - semantic_channels
    for t, t_next in zip(grid[:-1], grid[1:]):
        sem, tex = part_times(t, delta)
        sem_next, tex_next = part_times(t_next, delta)
        if on_step is not None:
            on_step(x, tex, sem)
        v = velocity(x, _batch_time(x, tex), _batch_time(x, sem))
        x = torch.cat([x[:, :texture] + (tex_next - tex) * v[:, :texture],
                       x[:, texture:] + (sem_next - sem) * v[:, texture:]], dim=1)
    return x


def _batch_time(x: Tensor, t: float) -> Tensor:
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)


class SemanticLatent(nn.Module):
    """The compact semantic latent of images: a frozen encoder's last-stage feature map (the
    features its head pools; a ViT's patch tokens laid out on their grid), projected on its
    first ``channels`` principal components, each scaled to unit variance, and resized
    (bilinear) to the texture latent's spatial size. The paper compresses DINOv2 patch
    features with a trained Semantic VAE; PCA is its training-free stand-in (the paper
    reports a VAE beats PCA at ImageNet scale).

    ``encoder`` is a :class:`hundred.models.Classifier` (eval mode, no gradients); images come
    in [-1, 1] and are normalised with the encoder's own ``mean``/``std`` at ``input_size``.
    """

    def __init__(self, encoder: nn.Module, channels: int, mean: tuple[float, ...],
                 std: tuple[float, ...], input_size: int) -> None:
        super().__init__()
        from hundred.models.taps import stage_modules

        self.encoder = encoder.eval().requires_grad_(False)
        self.channels = channels
        self.input_size = input_size
        self.last_stage = stage_modules(encoder)[-1]
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.register_buffer("center", torch.zeros(0))
        self.register_buffer("components", torch.zeros(0))  # [channels, D], unit-variance rows
        self.explained_variance = 0.0  # share of the features' variance the channels keep

    @property
    def fitted(self) -> bool:
        return self.components.numel() > 0

    def features(self, images: Tensor) -> Tensor:
        """The encoder's last-stage map ``[B, D, h, w]`` of images in [-1, 1]."""
        from hundred.models.taps import capture_stages

        from hundred.tracks.generate.pixels import to_classifier

        x = to_classifier(images, self.mean, self.std, self.input_size)
        with torch.no_grad(), capture_stages(self.encoder, [self.last_stage]) as outputs:
            self.encoder(x)
        return _as_map(outputs[0])

    @torch.no_grad()
    def fit(self, batches: list[Tensor] | tuple[Tensor, ...], max_rows: int = 50_000) -> None:
        """Principal components of the feature vectors at every position of ``batches``
        (images in [-1, 1]); at most ``max_rows`` vectors, evenly spaced."""
        rows = torch.cat([self.features(images).permute(0, 2, 3, 1).flatten(0, 2)
                          for images in batches]).double()
        if len(rows) > max_rows:
            rows = rows[torch.linspace(0, len(rows) - 1, max_rows).long()]
        if rows.shape[1] < self.channels:
            raise HundredError(f"the encoder's features have {rows.shape[1]} dimensions, fewer "
                               f"than the {self.channels} semantic channels asked for")
        if len(rows) < self.channels + 1:
            raise HundredError(f"{len(rows)} feature vectors are too few for "
                               f"{self.channels} principal components")
        center = rows.mean(0)
        _, singular, vh = torch.linalg.svd(rows - center, full_matrices=False)
        std = singular[:self.channels] / (len(rows) - 1) ** 0.5
        basis = vh[:self.channels]
        # a sign convention, so that the same features give the same latent on any device
        signs = torch.sign(basis[torch.arange(self.channels), basis.abs().argmax(1)])
        basis = basis * signs[:, None]
        self.explained_variance = float((singular[:self.channels] ** 2).sum()
                                        / (singular ** 2).sum().clamp_min(1e-12))
        self.center = center.float().to(self.mean.device)
        self.components = (basis / std.clamp_min(1e-8)[:, None]).float().to(self.mean.device)

    def forward(self, images: Tensor, size: tuple[int, int]) -> Tensor:
        """The semantic latent ``[B, channels, *size]`` of images in [-1, 1]."""
        if not self.fitted:
            raise RuntimeError("SemanticLatent.fit must run before the latent is used")
        maps = self.features(images)
        latent = torch.einsum("bdhw,kd->bkhw", maps - self.center.view(1, -1, 1, 1),
                              self.components)
        if tuple(latent.shape[-2:]) != tuple(size):
            latent = F.interpolate(latent, size=size, mode="bilinear", align_corners=False)
        return latent


def _as_map(features: Tensor) -> Tensor:
    """A stage output as ``[B, D, h, w]``: a feature map as it is, a token sequence ``[B, N,
    D]`` on its square grid (class and register tokens, those before the last h*w, dropped)."""
    if features.dim() == 4:
        return features.float()
    if features.dim() == 3:
        b, n, d = features.shape
        side = math.isqrt(n)
        if side == 0 or n - side * side > 8:  # at most a few class / register tokens
            raise HundredError(f"cannot lay {n} tokens out on a square grid")
        grid = features[:, n - side * side:].float()
        return grid.transpose(1, 2).reshape(b, d, side, side)
    raise HundredError(f"an encoder stage output of shape {tuple(features.shape)} is neither a "
                       "feature map nor a token sequence")
