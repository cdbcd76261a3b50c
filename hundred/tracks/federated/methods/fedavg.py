"""FedAvg: every sampled client trains the whole network (backbone + linear classifier) with
cross-entropy on its own data; the server averages the weights, each client weighted by its
number of training samples, ``w = sum_i (n_i / n) w_i`` (McMahan et al., "Communication-
Efficient Learning of Deep Networks from Decentralized Data", AISTATS 2017, Algorithm 1).
The averaging is Flower's FedAvg strategy; personalised accuracy is the global model's.
"""

from __future__ import annotations

import torch
from torch import nn

from hundred.engine.losses import cross_entropy
from hundred.registry import register
from hundred.tracks.federated.method import FederatedMethod


@register("federated", "fedavg")
class FedAvg(FederatedMethod):
    """Local cross-entropy training of the whole model; everything is averaged."""

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cross_entropy(model(images), labels, self.config.train.label_smoothing)
