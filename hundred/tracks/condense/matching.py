"""Shared pieces of the distribution-matching methods (DM, DataDAM): a freshly initialised
frozen network per iteration, the per-class loop that pairs a real batch with the class's
(FYI-matched) synthetic images under one Siamese augmentation and describes both with the
network, the backbone embedding, and the discrepancy of two batch means.

The loop is the one of Zhao & Bilen ("Dataset Condensation with Distribution Matching",
WACV 2023, Algorithm 1), which DataDAM (Sajedi et al., ICCV 2023) inherits: for each class
``c``, sample a real batch, take the synthetic images of ``c``, apply the same sampled DSA
transformation to both, and embed them with the random network. Real descriptions carry no
graph (the network is frozen and real images are data); the synthetic ones backpropagate to
the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from hundred.models import Classifier
from hundred.tracks.condense.method import CondenseContext, CondenseMethod
from hundred.tracks.condense.synthetic import SyntheticSet

__all__ = ["ClassMatch", "Describe", "class_matches", "embed", "frozen_network",
           "mean_discrepancy"]

# What a method reads from the network for one batch: a list of per-image tensors (N, ...),
# e.g. [embedding] for DM, [attention map per layer..., embedding] for DataDAM.
Describe = Callable[[torch.Tensor], list[torch.Tensor]]


def frozen_network(ctx: CondenseContext) -> Classifier:
    """A freshly initialised network (``ctx.new_network()``, global torch RNG) with its
    weights frozen, in train mode as the official codes use it (only batch norm cares)."""
    network = ctx.new_network()
    network.train()
    return network.requires_grad_(False)


def embed(network: Classifier, images: torch.Tensor) -> torch.Tensor:
    """The backbone's features of ``images`` (the embedding DM matches), one row per image."""
    return network(images, return_features=True)[1]


def mean_discrepancy(real: torch.Tensor, synthetic: torch.Tensor) -> torch.Tensor:
    """``||mean(real) - mean(synthetic)||^2``: the squared distance of the two batch means of
    the per-image vectors (each image's tensor flattened)."""
    difference = real.flatten(1).mean(dim=0) - synthetic.flatten(1).mean(dim=0)
    return difference.pow(2).sum()


@dataclass
class ClassMatch:
    """One class's real and synthetic descriptions (same order as ``describe`` returns)."""

    label: int
    real: list[torch.Tensor]
    synthetic: list[torch.Tensor]


def class_matches(method: CondenseMethod, synthetic: SyntheticSet, ctx: CondenseContext,
                  describe: Describe) -> Iterator[ClassMatch]:
    """For each class in order: ``condense.real_batch`` real images of it (global torch
    RNG), the class's synthetic images through ``method.matched`` (FYI doubling), the same
    DSA transformation on both (``ctx.siamese``; identity when off), then ``describe`` of
    each batch. The real side is computed without a graph."""
    real_batch = ctx.config.condense.real_batch
    for label in range(ctx.num_classes):
        real = ctx.real.sample(label, real_batch)
        matched = method.matched(synthetic.class_images(label))
        real, matched = ctx.siamese(real, matched)
        with torch.no_grad():
            real_description = [tensor.detach() for tensor in describe(real)]
        yield ClassMatch(label, real_description, describe(matched))
