"""What a self-supervised method plugs into: :class:`SSLMethod`.

Pre-training reads images only. A method defines :meth:`SSLMethod.ssl_loss` on the list of
augmented views; the labels reach nothing but the *online probe*, the model's own linear
head trained on the detached features of the first view (solo-learn's online linear
evaluation): its accuracy is what the trainer's per-epoch evaluation reports, and no
gradient of it reaches the backbone, so shuffling the labels leaves the pre-trained backbone
bit-identical (tested).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar, Sequence

import torch
from torch import nn

from hundred.engine.losses import cross_entropy
from hundred.engine.method import Images, Method
from hundred.errors import HundredError
from hundred.models.taps import unwrap


class SSLMethod(Method):
    """Base class of the self-supervised track's methods: ``views`` augmented views per image
    (two by default), a label-free :meth:`ssl_loss`, and the detached online probe."""

    views: ClassVar[int] = 2

    def loss(self, model: nn.Module, images: Images, labels: torch.Tensor) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            raise HundredError(f"{self.track}/{self.name} needs {self.views} views per image")
        objective, features = self.ssl_loss(model, list(images))
        return objective + self.probe_loss(model, features, labels)

    @abstractmethod
    def ssl_loss(self, model: nn.Module, views: Sequence[torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """The self-supervised loss of a batch of views, and the backbone features of the
        first view (``(B, D)``, from calling ``model``) for the online probe. Labels are not
        available here by design."""

    @staticmethod
    def encode(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The backbone's features of ``images`` through the (possibly DDP-wrapped) model, so
        that DDP sees the forward pass; the head's logits are dropped."""
        return model(images, return_features=True)[1]

    @staticmethod
    def probe_loss(model: nn.Module, features: torch.Tensor, labels: torch.Tensor
                   ) -> torch.Tensor:
        """Cross-entropy of the model's head (the online probe) on detached features."""
        return cross_entropy(unwrap(model).head(features.detach()), labels)
