"""The learned set and the real data it is matched against.

:class:`SyntheticSet` holds the synthetic images as one float parameter in normalised pixel
units (``(N, 3, H, W)``, ``ipc`` per class, sorted by class), their hard labels, and, where a
method learns them, soft labels (logits) and a learning rate. :class:`RealImages` keeps the
real training split on the device as uint8 and hands out normalised per-class batches drawn
with the (checkpointed) torch RNG, so a resumed run draws what the uninterrupted one would.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hundred.data import ArraySplit, Dataset
from hundred.errors import HundredError
from hundred.report.grid import save_grid  # noqa: F401  (re-exported: moved to the core)


def normaliser(mean: Sequence[float], std: Sequence[float], device: torch.device
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean`` and ``std`` as ``(1, 3, 1, 1)`` tensors in [0, 1] pixel units."""
    shape = (1, 3, 1, 1)
    return (torch.tensor(mean, device=device).view(shape),
            torch.tensor(std, device=device).view(shape))


class RealImages:
    """A real split (the training split, unless a test split) on ``device``: uint8 NCHW at
    ``size`` pixels, with the indices of each class, normalised per batch. ``every_class``:
    refuse a split with no image of some class (nothing to condense it from)."""

    def __init__(self, split: ArraySplit, num_classes: int, size: int, device: torch.device,
                 mean: Sequence[float], std: Sequence[float], every_class: bool = True
                 ) -> None:
        images = torch.from_numpy(np.ascontiguousarray(split.images)).to(device)
        images = images.permute(0, 3, 1, 2)
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images.float(), size=(size, size), mode="bilinear",
                                   antialias=True, align_corners=False)
            images = images.round().clamp(0, 255).to(torch.uint8)
        self.images = images.contiguous()
        self.labels = torch.from_numpy(np.asarray(split.labels, dtype=np.int64)).to(device)
        self.num_classes = num_classes
        self.size = size
        self.device = device
        self.mean, self.std = normaliser(mean, std, device)
        self.class_indices = [torch.nonzero(self.labels == c).flatten()
                              for c in range(num_classes)]
        empty = [c for c, idx in enumerate(self.class_indices) if len(idx) == 0]
        if empty and every_class:
            raise HundredError(f"the training split has no images of class(es) "
                               f"{empty[:8]}{' ...' if len(empty) > 8 else ''}: every class "
                               f"needs real images to be condensed")

    def __len__(self) -> int:
        return len(self.labels)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW -> float, normalised."""
        return (images.float() / 255 - self.mean) / self.std

    def class_count(self, label: int) -> int:
        return len(self.class_indices[label])

    def sample(self, label: int, count: int) -> torch.Tensor:
        """``count`` random images of class ``label`` (all of them when it has fewer),
        normalised; drawn with the global torch RNG (CPU), so checkpoints restore it."""
        indices = self.class_indices[label]
        order = torch.randperm(len(indices))[:count].to(indices.device)
        return self.normalise(self.images[indices[order]])

    def take(self, indices: torch.Tensor) -> torch.Tensor:
        """The training images at ``indices`` (into the split), normalised."""
        return self.normalise(self.images[indices.to(self.device)])

    def all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every training image (normalised) and its label."""
        return self.normalise(self.images), self.labels


def random_real_indices(real: RealImages, ipc: int) -> torch.Tensor:
    """``ipc`` random training images of each class (indices, class by class; a class with
    fewer images repeats them), drawn with the global torch RNG."""
    chosen = []
    for label in range(real.num_classes):
        available = real.class_indices[label]
        order = torch.randperm(len(available))
        order = order.repeat((ipc + len(order) - 1) // len(order))[:ipc]
        chosen.append(available[order.to(available.device)])
    return torch.cat(chosen)


class SyntheticSet(nn.Module):
    """The learned images (a parameter), their hard labels (``ipc`` per class, sorted by
    class), and optional learned soft labels (logits) and learning rate."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        super().__init__()
        if images.ndim != 4 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"images {tuple(images.shape)} and labels {tuple(labels.shape)} "
                             f"do not match")
        self.images = nn.Parameter(images.detach().clone().float())
        self.register_buffer("labels", labels.detach().clone().long())
        self.soft_labels: nn.Parameter | None
        self.lr: nn.Parameter | None
        self.register_parameter("soft_labels", None)
        self.register_parameter("lr", None)

    @classmethod
    def initialise(cls, real: RealImages, ipc: int, init: str,
                   indices: torch.Tensor | None = None) -> "SyntheticSet":
        """``ipc`` images per class: the real images at ``indices`` (one block of ``ipc`` per
        class, in class order), else random real ones of each class (``init="real"``; a
        class with fewer than ``ipc`` repeats them), else Gaussian noise."""
        labels = torch.arange(real.num_classes, device=real.device).repeat_interleave(ipc)
        if indices is not None:
            return cls(real.take(indices), labels)
        if init == "noise":
            return cls(torch.randn(len(labels), 3, real.size, real.size).to(real.device),
                       labels)
        return cls(real.take(random_real_indices(real, ipc)), labels)

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1

    @property
    def ipc(self) -> int:
        return len(self.labels) // self.num_classes

    def class_images(self, label: int) -> torch.Tensor:
        """The images of class ``label`` (a slice of the parameter: gradients reach it)."""
        return self.images[label * self.ipc:(label + 1) * self.ipc]

    def add_soft_labels(self, logits: torch.Tensor, learnable: bool = True) -> nn.Parameter:
        """Soft labels as logits ``(N, C)``; ``learnable`` puts them in the optimiser."""
        self.soft_labels = nn.Parameter(logits.detach().clone().float(),
                                        requires_grad=learnable)
        return self.soft_labels

    def add_learned_lr(self, value: float) -> nn.Parameter:
        """A learned learning rate (MTT's synthetic step size), starting at ``value``."""
        self.lr = nn.Parameter(torch.tensor(float(value), device=self.images.device))
        return self.lr

    def targets(self, kind: str) -> torch.Tensor:
        """``hard``: the labels; ``soft``: the soft labels as probabilities."""
        if kind == "soft":
            if self.soft_labels is None:
                raise HundredError("this synthetic set has no soft labels")
            return self.soft_labels.detach().softmax(dim=1)
        return self.labels

    def to_uint8(self, mean: torch.Tensor, std: torch.Tensor) -> np.ndarray:
        """The images as packed data stores them: NHWC uint8 (clamped to [0, 255])."""
        pixels = (self.images.detach() * std + mean) * 255
        return pixels.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def as_dataset(synthetic: SyntheticSet, source: Dataset, mean: torch.Tensor, std: torch.Tensor,
               name: str) -> Dataset:
    """The learned set as a :class:`Dataset` (train: the synthetic images; val: the source's
    held-out split, so that a network trained on the set is tested on real images)."""
    labels = synthetic.labels.cpu().numpy().astype(np.int64)
    splits = {"train": ArraySplit(synthetic.to_uint8(mean, std), labels)}
    if "val" in source.splits:
        splits["val"] = source.arrays("val")
    return Dataset(name=name, class_ids=list(source.class_ids),
                   class_names=list(source.class_names), splits=splits,
                   info={"condensed_from": source.name, "ipc": synthetic.ipc})
