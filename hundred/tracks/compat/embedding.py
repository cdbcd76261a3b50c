"""The embedding models of the compat track: any backbone of :mod:`hundred.models` followed
by a linear projection to the embedding dimension, L2-normalised (OCA's and FCT's
``norm_feature``), and a classification head on the embedding.

The embedding is the :class:`~hundred.models.Classifier`'s ``features``: the engine's trainer
and evaluation see an ordinary classifier, and retrieval reads ``model.features(images)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from hundred.config import ModelConfig
from hundred.errors import HundredError
from hundred.models import Classifier, create_backbone


class EmbeddingBackbone(nn.Module):
    """``normalize(W f(x) + b)``: the backbone's pooled features ``f(x)`` projected to
    ``dim`` coordinates and L2-normalised."""

    def __init__(self, network: nn.Module, dim: int) -> None:
        super().__init__()
        self.network = network
        self.projection = nn.Linear(int(network.feature_dim), dim)
        self.feature_dim = dim

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(self.network.forward_features(x)), dim=1)


def embedding_model(model: ModelConfig, image_size: int, dim: int, head: nn.Module
                    ) -> Classifier:
    """``model.name`` (with ``model.options``) + a ``dim``-d normalised projection + ``head``."""
    network = create_backbone(model.name, img_size=image_size, **model.options)
    return Classifier(EmbeddingBackbone(network, dim), head)


def linear_classifier(dim: int, num_classes: int) -> nn.Linear:
    """The classifier of the old and the new models: ``W h`` without bias on the normalised
    embedding (OCA's and FCT's ``fc``)."""
    return nn.Linear(dim, num_classes, bias=False)


@dataclass
class OldModel:
    """What a compatibility method may use of the old model (all frozen): the model itself
    (its head classifies the first ``num_old_classes`` labels), its embedding dimension, and
    ``prototypes``: the mean old embedding of each class's train images, for every class of
    the new training set (``num_classes x dim``; BCT's synthesised classifier of the classes
    the old model never saw, OCA's pseudo-classifier)."""

    model: Classifier
    dim: int
    num_old_classes: int
    prototypes: torch.Tensor


class Prototypes(nn.Module):
    """The old class prototypes as a module, so that they follow the run's device."""

    def __init__(self, prototypes: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", prototypes.detach().clone())


@torch.no_grad()
def class_prototypes(model: Classifier, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     num_classes: int) -> torch.Tensor:
    """The mean embedding of each class (``num_classes x dim``, on the CPU) over ``batches``
    (images and labels), computed in eval mode; a class without images gets zeros."""
    was_training = model.training
    model.eval()
    sums: torch.Tensor | None = None
    counts = torch.zeros(num_classes)
    for images, labels in batches:
        features = model.features(images).float().cpu()
        if sums is None:
            sums = torch.zeros(num_classes, features.shape[1])
        labels = labels.cpu()
        sums.index_add_(0, labels, features)
        counts.index_add_(0, labels, torch.ones(len(labels)))
    model.train(was_training)
    if sums is None:
        raise HundredError("the train split has no image to compute the old prototypes on")
    return sums / counts.clamp(min=1)[:, None]
