"""``synth100-events``: binary event frames made from synth100 images, a small built-in
stand-in for DVS recordings (CIFAR10-DVS, N-MNIST) that needs no files.

How it is made. A dynamic vision sensor reports, per pixel, when its log brightness changed
by more than a contrast threshold since its last event: ON events for increases, OFF for
decreases. N-MNIST and CIFAR10-DVS were recorded by moving a sensor (or the picture) in
small saccades in front of still images; this source does the same in software. Each
synth100 image is seen from ``frames + 1`` positions of a camera that moves ``step`` pixels
per frame around a small square (right, down, left, up, ...; edge pixels repeat at the
border); frame ``f`` holds the ON and OFF events between positions ``f`` and ``f + 1``:
``log(Y_(f+1) + 1/255) - log(Y_f + 1/255)`` above ``contrast`` (ON) or below ``-contrast``
(OFF), with Y the luminance in [0, 1]. Labels are synth100's. Like the aggregated
"binary dynamic images" of the SNN-attack literature (Lun et al., CVPR 2025), each frame is
binary per polarity.

Storage. The packed arrays stay ordinary uint8 ``(N, H, W, 3)`` images (so packing, loading
and the batch loader need nothing new): bit ``f`` of channel 0 is the ON event of frame
``f``, bit ``f`` of channel 1 its OFF event, channel 2 is zero; hence at most 8 frames.
:func:`unpack_events` turns a batch of such images, as the loader hands them out in [0, 1]
(train with ``data.mean=[0, 0, 0]``, ``data.std=[1, 1, 1]`` and ``data.augment=none``, so
the values reach the model untouched), into frames ``(B, F, 2, H, W)`` in {0, 1};
:func:`pack_events` is its inverse. The spiking model (``spiking_vgg`` with ``events=F``)
unpacks its input itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from hundred.data.dataset import ArraySplit, Dataset
from hundred.errors import HundredError

if TYPE_CHECKING:
    import torch

GENERATOR_VERSION = "synth100-events-v1"
MAX_FRAMES = 8  # one bit per frame in a uint8 channel
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_MOVES = ((0, 1), (1, 0), (0, -1), (-1, 0))  # (dy, dx) per frame: a small square saccade


def open_synth100_events(
    argument: str | None,
    *,
    classes: int = 100,
    train_per_class: int = 500,
    val_per_class: int = 100,
    res: int = 32,
    seed: int = 0,
    frames: int = 8,
    step: int = 1,
    contrast: float = 0.15,
) -> Dataset:
    """synth100 (same options) seen by a moving event camera: ``frames`` binary ON/OFF
    frames per image, packed into the bits of a uint8 image (see the module docstring)."""
    from hundred.data.sources.synth import open_synth100

    if argument is not None:
        raise HundredError(f"synth100-events takes no argument (got {argument!r})")
    if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= MAX_FRAMES:
        raise HundredError(f"synth100-events option frames={frames!r}: expected 1..{MAX_FRAMES}")
    if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= res // 4:
        raise HundredError(f"synth100-events option step={step!r}: expected 1..{res // 4} px")
    if not 0.0 < float(contrast) < 5.0:
        raise HundredError(f"synth100-events option contrast={contrast!r}: expected a log "
                           "brightness change in (0, 5), e.g. 0.15")
    images = open_synth100(None, classes=classes, train_per_class=train_per_class,
                           val_per_class=val_per_class, res=res, seed=seed)
    splits = {name: ArraySplit(events_from_images(split.images, frames, step, float(contrast)),
                               split.labels)
              for name, split in images.splits.items()}  # type: ignore[union-attr]
    return Dataset(
        name="synth100-events", class_ids=images.class_ids, class_names=images.class_names,
        splits=splits,
        info={**images.info, "generator": GENERATOR_VERSION, "frames": frames, "step": step,
              "contrast": float(contrast),
              "encoding": "bit f of channel 0 / 1 = ON / OFF event in frame f; channel 2 = 0"})


def events_from_images(images: np.ndarray, frames: int, step: int, contrast: float
                       ) -> np.ndarray:
    """Packed event frames ``(N, H, W, 3)`` uint8 of uint8 RGB ``images`` ``(N, H, W, 3)``
    seen from a camera moving ``step`` px per frame (see the module docstring)."""
    n, height, width, _ = images.shape
    luminance = (images.astype(np.float32) / 255.0) @ _LUMA
    log = np.log(luminance + 1.0 / 255.0)
    pad = step * 2
    padded = np.pad(log, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    y = x = 0
    views = []
    for index in range(frames + 1):
        views.append(padded[:, pad + y: pad + y + height, pad + x: pad + x + width])
        dy, dx = _MOVES[index % len(_MOVES)]
        y, x = y + dy * step, x + dx * step
    packed = np.zeros((n, height, width, 3), dtype=np.uint8)
    for frame in range(frames):
        change = views[frame + 1] - views[frame]
        packed[..., 0] |= ((change > contrast).astype(np.uint8) << frame)
        packed[..., 1] |= ((change < -contrast).astype(np.uint8) << frame)
    return packed


def unpack_events(pixels: "torch.Tensor", frames: int) -> "torch.Tensor":
    """Binary frames ``(B, frames, 2, H, W)`` (float, in {0, 1}) of packed images ``pixels``
    ``(B, 3, H, W)`` in [0, 1] (byte value / 255)."""
    import torch

    codes = torch.round(pixels[:, :2].clamp(0.0, 1.0) * 255.0).to(torch.int32)
    bits = torch.arange(frames, device=pixels.device, dtype=torch.int32).view(1, -1, 1, 1, 1)
    return ((codes.unsqueeze(1) >> bits) & 1).to(pixels.dtype)


def pack_events(events: "torch.Tensor") -> "torch.Tensor":
    """Packed images ``(B, 3, H, W)`` in [0, 1] of binary frames ``(B, F, 2, H, W)``: the
    inverse of :func:`unpack_events`."""
    import torch

    batch, frames, _, height, width = events.shape
    weights = (2 ** torch.arange(frames, device=events.device, dtype=torch.float32)).view(
        1, -1, 1, 1, 1)
    codes = (events.float().round() * weights).sum(dim=1)  # (B, 2, H, W)
    blank = torch.zeros(batch, 1, height, width, device=events.device)
    return torch.cat([codes, blank], dim=1) / 255.0
